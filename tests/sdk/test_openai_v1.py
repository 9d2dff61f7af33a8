#!/usr/bin/env python3
"""The current openai SDK (1.x API) against a running `kiln serve` (tiny demo model).
Usage: test_openai_v1.py BASE_URL API_KEY"""

import base64
import sys
import urllib.request

import openai
from openai import OpenAI

from common import Failures, check_b64_images, decode_image, png_bytes

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
f = Failures()
FAST = {"num_inference_steps": 2}


def generate():
    r = client.images.generate(prompt="a fox", n=2, size="64x64", response_format="b64_json",
                               extra_body={"seed": 5, "guidance_scale": 7.5, "negative_prompt": "blurry", **FAST})
    items = [d.model_dump() for d in r.data]
    check_b64_images(items, 2, (64, 64))
    assert [d["seed"] for d in items] == [5, 6], items
    assert r.created > 0


def generate_url_and_jpeg():
    r = client.images.generate(prompt="a fox", size="64x64", response_format="url", extra_body=FAST)
    with urllib.request.urlopen(r.data[0].url) as resp:
        assert decode_image(resp.read()).size == (64, 64)
    r = client.images.generate(prompt="a fox", size="64x64", output_format="jpeg", output_compression=80, extra_body=FAST)
    assert decode_image(base64.b64decode(r.data[0].b64_json), "JPEG").size == (64, 64)


def check_usage(usage, image_tokens):
    """usage as the SD demo model counts it: CLIP tokens in, one token per 8x8 latent position."""
    u = usage.model_dump() if hasattr(usage, "model_dump") else usage
    d = u["input_tokens_details"]
    assert d["text_tokens"] > 0 and d["image_tokens"] == image_tokens, u
    assert u["input_tokens"] == d["text_tokens"] + d["image_tokens"], u
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"], u


def generate_response_fields():
    r = client.images.generate(prompt="a fox", n=2, size="64x64", quality="low", extra_body=FAST)
    assert (r.background, r.output_format, r.quality, r.size) == ("opaque", "png", "low", "64x64"), r
    check_usage(r.usage, 0)
    assert r.usage.output_tokens == 2 * 8 * 8, r.usage  # n x (64/8)^2 latent positions
    try:
        client.images.generate(prompt="x", background="transparent", size="64x64")
    except openai.BadRequestError as e:
        assert e.body["param"] == "background", e.body
    else:
        raise AssertionError("background=transparent accepted")


def edit():
    r = client.images.edit(image=("in.png", png_bytes(64, 64), "image/png"),
                           mask=("m.png", png_bytes(64, 64, True), "image/png"), prompt="blue",
                           size="64x64", response_format="b64_json", extra_body={"guidance_scale": 7.5, **FAST})
    check_b64_images([d.model_dump() for d in r.data], 1, (64, 64))
    check_usage(r.usage, 8 * 8)


def edit_two_images_refused():
    image = [("a.png", png_bytes(64, 64), "image/png"), ("b.png", png_bytes(64, 64), "image/png")]
    try:
        client.images.edit(image=image, prompt="blue", size="64x64", extra_body=FAST)
    except openai.BadRequestError as e:
        assert e.body["param"] == "image" and "one" in e.body["message"], e.body
    else:
        raise AssertionError("two input images accepted (one would be dropped)")


def edit_stream():
    events = list(client.images.edit(image=("in.png", png_bytes(64, 64), "image/png"), prompt="blue",
                                     size="64x64", stream=True, partial_images=1, extra_body=FAST))
    types = [e.type for e in events]
    assert types and types[-1] == "image_edit.completed", types
    assert set(types) <= {"image_edit.partial_image", "image_edit.completed"}, types
    assert decode_image(base64.b64decode(events[-1].b64_json)).size == (64, 64)
    check_usage(events[-1].usage, 8 * 8)


def edit_json():
    url = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
    r = client.post("/images/edits", cast_to=openai.types.ImagesResponse,
                    body={"images": [{"image_url": url}], "prompt": "blue", "size": "64x64", **FAST})
    check_b64_images([d.model_dump() for d in r.data], 1, (64, 64))
    try:
        client.post("/images/edits", cast_to=openai.types.ImagesResponse,
                    body={"images": [{"image_url": "https://example.com/a.png"}], "prompt": "blue"})
    except openai.BadRequestError as e:
        assert e.body["param"] == "images[0].image_url", e.body
    else:
        raise AssertionError("an https image_url was accepted")


def variation():
    r = client.images.create_variation(image=("in.png", png_bytes(64, 64), "image/png"), n=2, size="64x64",
                                       response_format="b64_json", extra_body=FAST)
    check_b64_images([d.model_dump() for d in r.data], 2, (64, 64))
    check_usage(r.usage, 8 * 8)
    try:
        client.images.create_variation(image=("in.png", png_bytes(64, 64), "image/png"), model="dalle-mini-demo")
    except openai.BadRequestError as e:
        assert e.body["param"] == "model" and "variation" in e.body["message"], e.body
    else:
        raise AssertionError("a DALL-E variation was accepted")


def stream():
    events = list(client.images.generate(prompt="a fox", size="64x64", stream=True, partial_images=2, extra_body=FAST))
    types = [e.type for e in events]
    assert types and types[-1] == "image_generation.completed", types
    assert all(t in ("image_generation.partial_image", "image_generation.completed") for t in types), types
    assert decode_image(base64.b64decode(events[-1].b64_json)).size == (64, 64)


def models():
    ids = [m.id for m in client.models.list()]
    assert "sd15-demo" in ids, ids
    m = client.models.retrieve("sd15-demo")
    assert m.id == "sd15-demo" and m.model_dump().get("demo") is True


def errors():
    try:
        client.images.generate(prompt="x", n=0)
    except openai.BadRequestError as e:
        assert e.body["param"] == "n", e.body
        assert e.response.headers.get("x-should-retry") == "false"
    else:
        raise AssertionError("n=0 accepted")
    try:
        client.images.generate(prompt="x", extra_body={"num_inference_steps": "many"})
    except openai.BadRequestError as e:
        assert e.body["param"] == "num_inference_steps", e.body
    else:
        raise AssertionError("bad num_inference_steps accepted")
    try:
        client.images.generate(prompt="x", model="no-such-model")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("unknown model accepted")
    try:
        OpenAI(base_url=base, api_key="wrong-key", max_retries=0).images.generate(prompt="x")
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("wrong API key accepted")


print("openai %s -> %s" % (openai.__version__, base))
f.run("images.generate + extra_body", generate)
f.run("images.generate url / jpeg", generate_url_and_jpeg)
f.run("images.generate: background/quality/usage fields", generate_response_fields)
f.run("images.edit", edit)
f.run("images.edit with image[] x2 refused", edit_two_images_refused)
f.run("images.edit stream=True", edit_stream)
f.run("images/edits as JSON with a data: URL", edit_json)
f.run("images.create_variation", variation)
f.run("images.generate stream=True", stream)
f.run("models.list / retrieve", models)
f.run("errors", errors)
f.exit()
