#!/usr/bin/env python3
"""diffusers' own UNet step by op (torch.profiler), and PyTorch's time for the shapes kiln's
kernel bench times, so kiln's `unet-profile` and `cargo bench --bench kernels` have a
same-machine reference per op, not only per step.

    .venv-ref/bin/python benches/torch_profile.py                 # bf16, 2 threads
    .venv-ref/bin/python benches/torch_profile.py --dtype fp32 --threads 2

Uses the full-size random SD 1.5 UNet that `models/make_sd15_fixtures.py --full` writes to
.cache/sd15-random (the harness's). Batch 2 (guidance), 64x64 latents, 77-token context.
"""
import argparse
from pathlib import Path

import torch

from compare_refs import time_runs

ROOT = Path(__file__).resolve().parent.parent


def median_ms(f, runs=10):
    ts = sorted(time_runs(f, runs, 3))
    return ts[len(ts) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=ROOT / ".cache/sd15-random")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    from diffusers import UNet2DConditionModel
    from torch.profiler import ProfilerActivity, profile

    unet = UNet2DConditionModel.from_pretrained(args.model / "unet", torch_dtype=dt).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g).to(dt)
    ctx = torch.randn(2, 77, 768, generator=g).to(dt)
    with torch.no_grad():
        print(f"UNet step {args.dtype}: median of 3 {median_ms(lambda: unet(x, 500, ctx), 3):.0f} ms")
        with profile(activities=[ProfilerActivity.CPU]) as p:
            unet(x, 500, ctx)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        for c, hw in [(320, 64), (640, 32), (1280, 16), (1280, 8)]:
            xi = torch.randn(2, c, hw, hw).to(dt)
            w, b = torch.randn(c, c, 3, 3).to(dt), torch.randn(c).to(dt)
            ms = median_ms(lambda: torch.nn.functional.conv2d(xi, w, b, padding=1))
            print(f"conv3x3 {c}->{c} [2,{c},{hw},{hw}] {args.dtype}: median {ms:.2f} ms")
        q = torch.randn(2, 8, 4096, 40).to(dt)
        ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
        print(f"attention self [2,8,4096,40] {args.dtype}: median {ms:.2f} ms")


if __name__ == "__main__":
    main()
