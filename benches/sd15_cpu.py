#!/usr/bin/env python3
"""SD 1.5 CPU benchmark: kiln (Burn Flex) vs diffusers/PyTorch fp32, same machine, same run.

One command (from the repo root, or anywhere):

    python3 benches/sd15_cpu.py                  # all of clip, unet, vae
    python3 benches/sd15_cpu.py --only unet --rounds 2 --threads 2

What it does:
  1. makes the reference venv `.venv-ref` if absent (torch, diffusers, transformers, safetensors,
     accelerate from PyPI) and re-runs itself inside it;
  2. makes the full-size random-init SD 1.5 diffusers folder `.cache/sd15-random/` if absent
     (`models/make_sd15_fixtures.py --full`, ~8 GB, several minutes; never committed);
  3. builds `cargo build --release --example sd15_bench` (kiln's timing binary);
  4. per component, alternating kiln and diffusers *processes* for --rounds rounds, each process
     loading the same weights and doing warm-up + timed runs, under `/usr/bin/time -v` (peak RSS,
     CPU %):
       clip  CLIP text encode 1x77
       unet  one UNet forward at batch 2 (CFG), latent 64x64 (512x512 image), context 2x77x768
       vae   VAE decode 1x4x64x64 -> 1x3x512x512
       image the whole text-to-image pipeline, 512x512, CFG 7.5, DDIM, BENCH_IMAGE_STEPS steps
             (default 20): its peak RSS is the pipeline's (not in the default --only)
  5. prints a table of medians (over every timed run of every round), ratio kiln/diffusers, peak
     RSS and CPU% of each process, and writes `.cache/bench/sd15_cpu.json`.
Inputs are random tensors of the right shapes (same shapes for both; values differ, which does
not change dense fp32 timings). torch runs with torch.set_num_threads(--threads); kiln's Flex
backend uses a rayon pool of all cores (RAYON_NUM_THREADS=--threads is set for it).
`--profile` adds a per-op-category profile of one kiln UNet step (examples/sd15_bench.rs).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-ref"
VPY = VENV / "bin" / "python"
MODEL = REPO / ".cache" / "sd15-random"
OUT = REPO / ".cache" / "bench" / "sd15_cpu.json"
KILN_BIN = REPO / "target" / "release" / "examples" / "sd15_bench"
COUNTS = {"clip": (5, 1), "unet": (2, 1), "vae": (2, 1), "image": (1, 0)}  # (timed, warm-up) per process
LABEL = {"clip": "CLIP encode 1x77", "unet": "UNet step b2 64x64", "vae": "VAE decode 512x512",
         "image": "whole image 512x512"}


# ---------------------------------------------------------------------------------------------
# diffusers worker (runs inside the venv, in its own process)

def worker(component: str, model: Path, timed: int, warmup: int, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if component == "clip":
            m = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval()
            ids = torch.randint(0, 49408, (1, 77), generator=g)
            fn = lambda: m(ids).last_hidden_state
        elif component == "unet":
            m = UNet2DConditionModel.from_pretrained(str(model / "unet")).eval()
            x = torch.randn(2, 4, 64, 64, generator=g)
            t = torch.tensor([981, 981])
            ctx = torch.randn(2, 77, 768, generator=g)
            fn = lambda: m(x, t, encoder_hidden_states=ctx).sample
        elif component == "image":
            from diffusers import DDIMScheduler, StableDiffusionPipeline
            steps = int(os.environ.get("BENCH_IMAGE_STEPS", "20"))
            pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None,
                                                           requires_safety_checker=False)
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            fn = lambda: pipe("a photograph of an astronaut riding a horse", num_inference_steps=steps,
                              guidance_scale=7.5, height=512, width=512, generator=g, output_type="np").images
        elif component == "vae":
            m = AutoencoderKL.from_pretrained(str(model / "vae")).eval()
            z = torch.randn(1, 4, 64, 64, generator=g)
            fn = lambda: m.decode(z).sample
        else:
            raise SystemExit(f"unknown component {component}")
        for _ in range(warmup):
            fn()
        load = time.perf_counter() - t0
        ts = []
        for _ in range(timed):
            s = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - s)
    print(json.dumps({"component": component, "impl": "diffusers", "load_plus_warmup_s": round(load, 3),
                      "times_s": [round(x, 4) for x in ts], "median_s": round(statistics.median(ts), 4),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


# ---------------------------------------------------------------------------------------------
# driver

def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)


def ensure_venv() -> None:
    if not VPY.exists():
        sh([sys.executable, "-m", "venv", str(VENV)])
        sh([str(VPY), "-m", "pip", "install", "torch", "diffusers", "transformers", "safetensors",
            "accelerate", "scipy", "numpy", "pillow"])
        sh([str(VPY), "-m", "pip", "install", "--no-deps", "open-clip-torch"])
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VPY), [str(VPY), *sys.argv])


def ensure_model(model: Path) -> None:
    need = [model / "unet/diffusion_pytorch_model.safetensors", model / "vae/diffusion_pytorch_model.safetensors",
            model / "text_encoder/model.safetensors"]
    if all(p.exists() for p in need):
        return
    if model != MODEL:
        raise SystemExit(f"{model} lacks {[str(p) for p in need if not p.exists()]}")
    sh([str(VPY), str(REPO / "models/make_sd15_fixtures.py"), "--full"], cwd=REPO)


def timed_process(cmd, env=None) -> dict:
    """Runs cmd under /usr/bin/time -v; returns its JSON stdout line + peak RSS (MiB) + CPU %."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-v", "-o", tf.name, *map(str, cmd)]
        print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
        p = subprocess.run(full, capture_output=True, text=True, env=env, cwd=REPO)
        tv = Path(tf.name).read_text()
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"failed ({p.returncode}): {cmd}")
    line = [l for l in p.stdout.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", tv)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", tv)
    r["peak_rss_mib"] = round(int(rss.group(1)) / 1024, 1) if rss else None
    r["cpu_percent"] = int(cpu.group(1)) if cpu else None
    r["process_wall"] = wall.group(1) if wall else None
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="clip,unet,vae")
    ap.add_argument("--rounds", type=int, default=1, help="kiln/diffusers process pairs per component")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--timed", type=int, default=0, help="override timed runs per process (0: per-component default)")
    ap.add_argument("--profile", action="store_true", help="also profile one kiln UNet step by op category")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--worker", nargs=4, metavar=("COMPONENT", "MODEL", "TIMED", "WARMUP"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        c, m, t, w = a.worker
        return worker(c, Path(m), int(t), int(w), a.threads)

    ensure_venv()
    ensure_model(a.model)
    if not a.no_build:
        sh(["cargo", "build", "--release", "--example", "sd15_bench"], cwd=REPO)
    kenv = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    comps = [c for c in a.only.split(",") if c]
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_before": os.getloadavg(), "threads": a.threads,
                       "model": str(a.model), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
           "components": {}}
    for c in comps:
        timed, warm = COUNTS[c]
        timed = a.timed or timed
        runs = {"kiln": [], "diffusers": []}
        for _ in range(a.rounds):
            la = os.getloadavg()[0]
            r = timed_process([KILN_BIN, a.model, c, timed, warm], env=kenv)
            r["loadavg_1m_before"] = la
            runs["kiln"].append(r)
            la = os.getloadavg()[0]
            r = timed_process([VPY, Path(__file__).resolve(), "--threads", a.threads, "--worker", c, a.model, timed, warm])
            r["loadavg_1m_before"] = la
            runs["diffusers"].append(r)
        summ = {}
        for impl, rs in runs.items():
            ts = [t for r in rs for t in r["times_s"]]
            summ[impl] = {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts),
                          "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in rs),
                          "cpu_percent": [r["cpu_percent"] for r in rs]}
        summ["ratio_kiln_over_ref"] = summ["kiln"]["median_s"] / summ["diffusers"]["median_s"]
        res["components"][c] = {"summary": summ, "runs": runs}
        print(f"{c}: kiln {summ['kiln']['median_s']:.3f}s  diffusers {summ['diffusers']['median_s']:.3f}s  "
              f"ratio {summ['ratio_kiln_over_ref']:.2f}", file=sys.stderr, flush=True)
    if a.profile:
        r = timed_process([KILN_BIN, a.model, "unet-profile", 1, 1], env=kenv)
        res["kiln_unet_profile"] = r
    res["machine"]["loadavg_after"] = os.getloadavg()

    print(f"\nSD 1.5, CPU fp32, {a.threads} threads, nproc={os.cpu_count()}, "
          f"loadavg before {res['machine']['loadavg_before'][0]:.2f} after {res['machine']['loadavg_after'][0]:.2f}")
    hdr = f"| {'component':<20} | {'kiln s':>8} | {'diffusers s':>11} | {'kiln/ref':>8} | {'kiln RSS MiB':>12} | {'ref RSS MiB':>11} | {'kiln CPU%':>9} | {'ref CPU%':>8} |"
    print(hdr)
    print("|" + "|".join("-" * (len(x)) for x in hdr.split("|")[1:-1]) + "|")
    for c, v in res["components"].items():
        s = v["summary"]
        k, d = s["kiln"], s["diffusers"]
        print(f"| {LABEL[c]:<20} | {k['median_s']:>8.3f} | {d['median_s']:>11.3f} | {s['ratio_kiln_over_ref']:>8.2f} | "
              f"{k['peak_rss_mib']:>12.0f} | {d['peak_rss_mib']:>11.0f} | {'/'.join(map(str, k['cpu_percent'])):>9} | "
              f"{'/'.join(map(str, d['cpu_percent'])):>8} |")
    print("(median of all timed runs; n timed per impl: "
          + ", ".join(f"{c}={v['summary']['kiln']['n']}" for c, v in res["components"].items())
          + "; CPU% and RSS are of the whole process incl. loading)")
    if a.profile:
        p = res["kiln_unet_profile"]
        print(f"\nkiln UNet step, per op category (1 profiled step: {p['median_s']:.2f}s):")
        for row in p.get("profile", []):
            print(f"  {row['op']:<28} {row['s_per_step']:8.3f} s  {100 * row['share']:5.1f}%  x{row['calls_per_step']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(f"\nwritten {a.out}")


if __name__ == "__main__":
    main()
