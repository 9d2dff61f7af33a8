"""Shared checks for the real-SDK tests (stdlib + Pillow)."""

import base64
import io
import sys

from PIL import Image


class Failures:
    def __init__(self):
        self.count = 0

    def run(self, label, fn):
        try:
            fn()
            print("ok   %s" % label)
        except Exception as exc:  # report every failing check, not just the first
            self.count += 1
            print("FAIL %s: %s: %s" % (label, type(exc).__name__, exc))

    def exit(self):
        print("%s: %d failure(s)" % ("PASS" if self.count == 0 else "FAIL", self.count))
        sys.exit(1 if self.count else 0)


def decode_image(data, fmt="PNG"):
    img = Image.open(io.BytesIO(data))
    img.load()  # full decode, not just the header
    if img.format != fmt:
        raise AssertionError("expected %s, got %s" % (fmt, img.format))
    return img


def check_b64_images(items, n, size, fmt="PNG"):
    """items: list of dicts with b64_json; every image decodes and has `size` (w, h)."""
    if len(items) != n:
        raise AssertionError("expected %d images, got %d" % (n, len(items)))
    for item in items:
        img = decode_image(base64.b64decode(item["b64_json"]), fmt)
        if img.size != size:
            raise AssertionError("image is %sx%s, expected %sx%s" % (img.size + size))


def png_bytes(w, h, rgba=False):
    out = io.BytesIO()
    if rgba:
        img = Image.new("RGBA", (w, h), (0, 0, 0, 255))
        for x in range(w // 4, 3 * w // 4):
            for y in range(h // 4, 3 * h // 4):
                img.putpixel((x, y), (0, 0, 0, 0))  # transparent = area to repaint
    else:
        img = Image.new("RGB", (w, h), (200, 120, 40))
    img.save(out, format="PNG")
    return out.getvalue()
