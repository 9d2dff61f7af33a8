#!/usr/bin/env python3
"""CPU benchmark: kiln (Burn Flex, fp32) against the reference implementations, same machine, same
run, alternating processes, identical weights, prompts and settings.

One command (from the repo root, or anywhere):

    python3 benches/compare.py                           # clip,unet,vae,dalle-step (~7 min on 2 cores)
    python3 benches/compare.py --only all                # every component (~1.5 h on 2 cores)
    python3 benches/compare.py --only sdcpp,mega-step --rounds 2 --threads 2

Components (kiln vs reference):
  clip         SD 1.5 CLIP text encode 1x77                                   vs diffusers
  unet         one UNet forward at batch 2 (CFG), 64x64 latent, 2x77x768 ctx  vs diffusers
  unet-bf16    the same kiln fp32 step                                         vs diffusers in bf16 (AMX)
  vae          VAE decode 1x4x64x64 -> 512x512                                vs diffusers
  image        whole SD pipeline 512x512, CFG 7.5, DDIM, BENCH_IMAGE_STEPS    vs diffusers
  sdcpp        whole SD pipeline 512x512, CFG 7.5, Euler (discrete), BENCH_IMAGE_STEPS,
               both loading the ldm single file sd15-random.safetensors (f32)  vs stable-diffusion.cpp
  dalle-step   DALL·E Mini: one decoder step, 1 image = batch 2 (super-condition), position 128
  dalle-image  DALL·E Mini: one whole image (encode, 256 tokens, VQGAN decode)  vs min-dalle (both)
  mega-step    DALL·E Mega: one decoder step (as dalle-step)                   vs min-dalle
  mega-image   DALL·E Mega: one whole image (slow: min-dalle takes 10+ min)    vs min-dalle
BENCH_IMAGE_STEPS defaults to 20. DALL·E runs use min-dalle's tokeniser, super-condition 16 and
greedy sampling (top_k 1) on both sides, so the work is the same and no RNG is involved; the
first 8 tokens of each side are in the JSON (they may differ: min-dalle starts from token 16383,
dalle-mini/kiln from 16384). min-dalle recomputes the cross-attention K/V at every step (its
design), kiln projects them once per image: that is part of what is being compared.

What it does:
  1. makes the reference venv `.venv-ref` if absent (torch, diffusers, transformers, ...) and
     re-runs itself inside it; installs `min-dalle` (DALL·E rows) and
     `stable-diffusion-cpp-python==0.4.7` (sdcpp row; built from source: ~4 min on 2 quiet cores, 20 under load) into
     it when a selected component needs them;
  2. makes the random full-size weights it needs if absent (never committed): `.cache/sd15-random/`
     (`models/make_sd15_fixtures.py --full`, ~8.6 GB), `.cache/dalle-mini-random/` and
     `.cache/dalle-mega-random/` (`models/make_dalle_fixtures.py full --model mini|mega`,
     1.0 / 5.3 GB of fp16 min-dalle .pt files; mega takes ~20 min and ~9 GB of RAM to make);
  3. builds `cargo build --release --example sd15_bench --example dalle_bench` (kiln's timing
     binaries, in $CARGO_TARGET_DIR or target/);
  4. per component, alternates kiln and reference *processes* for --rounds rounds, each loading
     the weights and doing warm-up + timed runs, under `/usr/bin/time -v` (peak RSS, CPU %);
  5. prints a table of medians (over every timed run of every round), ratio kiln/ref, peak RSS and
     CPU % of each process (both include loading), the project's targets, and writes JSON
     (`.cache/bench/compare.json`).
Threads: --threads for torch (set_num_threads), sd.cpp (n_threads) and kiln (RAYON_NUM_THREADS).
`--profile` adds a per-op-category profile of one kiln UNet step (examples/sd15_bench.rs).
"""
from __future__ import annotations

import argparse
import importlib.util
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
sys.path.insert(0, str(REPO / "benches"))
from compare_refs import parse_sdcpp_log  # noqa: E402

VENV = REPO / ".venv-ref"
VPY = VENV / "bin" / "python"
REFS = REPO / "benches" / "compare_refs.py"
SD_MODEL = REPO / ".cache" / "sd15-random"
DALLE = {"mini": REPO / ".cache" / "dalle-mini-random", "mega": REPO / ".cache" / "dalle-mega-random"}
OUT = REPO / ".cache" / "bench" / "compare.json"
_target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
BIN = (_target if _target.is_absolute() else REPO / _target) / "release" / "examples"
DEFAULT_ONLY = "clip,unet,vae,dalle-step"
SDCPP_PIP = "stable-diffusion-cpp-python==0.4.7"

# name: (model, label, timed, warm-up per process, reference)
COMPONENTS = {
    "clip": ("sd15", "CLIP encode 1x77", 5, 1, "diffusers"),
    "unet": ("sd15", "UNet step b2 64x64", 2, 1, "diffusers"),
    "unet-bf16": ("sd15", "UNet step vs bf16", 2, 1, "diffusers"),
    "vae": ("sd15", "VAE decode 512x512", 2, 1, "diffusers"),
    "image": ("sd15", "SD image 512 DDIM", 1, 0, "diffusers"),
    "sdcpp": ("sd15-file", "SD image 512 Euler", 1, 0, "sd.cpp"),
    "dalle-step": ("mini", "mini decoder step", 8, 2, "min-dalle"),
    "dalle-image": ("mini", "mini image 256 tok", 1, 0, "min-dalle"),
    "mega-step": ("mega", "mega decoder step", 4, 1, "min-dalle"),
    "mega-image": ("mega", "mega image 256 tok", 1, 0, "min-dalle"),
}
# The issue's targets: kiln/ref ratio at most, or kiln peak RSS at most (GiB).
TARGETS = [("unet", "ratio", 1.0), ("image", "ratio", 1.0), ("image", "kiln_rss_gib", 5.0), ("sdcpp", "ratio", 0.25),
           ("dalle-image", "ratio", 0.3), ("mega-step", "kiln_rss_gib", 12.0), ("mega-image", "kiln_rss_gib", 12.0)]


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    subprocess.run(list(map(str, cmd)), check=True, **kw)


def ensure_venv() -> None:
    if not VPY.exists():
        sh([sys.executable, "-m", "venv", VENV])
        sh([VPY, "-m", "pip", "install", "torch", "diffusers", "transformers", "safetensors",
            "accelerate", "scipy", "numpy", "pillow"])
        sh([VPY, "-m", "pip", "install", "--no-deps", "open-clip-torch"])
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VPY), [str(VPY), *sys.argv])


def ensure_package(module: str, spec: str) -> None:
    if importlib.util.find_spec(module) is None:
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        sh([VPY, "-m", "pip", "install", spec], env=env)


def model_path(kind: str, a) -> Path:
    """The path handed to both sides for a model kind, made first if it is the default and absent."""
    if kind in ("sd15", "sd15-file"):
        need = [a.model / "unet/diffusion_pytorch_model.safetensors", a.model / "vae/diffusion_pytorch_model.safetensors",
                a.model / "text_encoder/model.safetensors"] + [a.model / "sd15-random.safetensors"] * (kind == "sd15-file")
        if not all(p.exists() for p in need):
            if a.model != SD_MODEL:
                raise SystemExit(f"{a.model} lacks {[str(p) for p in need if not p.exists()]}")
            sh([VPY, REPO / "models/make_sd15_fixtures.py", "--full"], cwd=REPO)
        return a.model / "sd15-random.safetensors" if kind == "sd15-file" else a.model
    root = getattr(a, kind)
    bart = root / f"dalle_bart_{kind}"
    if not all((bart / f).exists() for f in ("encoder.pt", "decoder.pt", "config.json")) or \
            not (root / "vqgan" / "detoker.pt").exists():
        if root != DALLE[kind]:
            raise SystemExit(f"{root} lacks dalle_bart_{kind}/{{encoder,decoder}}.pt or vqgan/detoker.pt")
        sh([VPY, REPO / "models/make_dalle_fixtures.py", "full", "--model", kind], cwd=REPO)
    return bart


def commands(c: str, path: Path, timed: int, warm: int):
    """(kiln command, extra kiln env, reference command) of one process pair."""
    ref = [VPY, REFS, {"diffusers": "diffusers", "sd.cpp": "sdcpp", "min-dalle": "min-dalle"}[COMPONENTS[c][4]]]
    if c in ("clip", "unet", "unet-bf16", "vae", "image"):
        return [BIN / "sd15_bench", path, c.removesuffix("-bf16"), timed, warm], {}, ref + [c, path, timed, warm]
    if c == "sdcpp":
        return ([BIN / "sd15_bench", path, "image", timed, warm], {"BENCH_IMAGE_SCHEDULER": "euler"},
                ref + ["image", path, timed, warm])
    part = c.split("-")[1]  # step | image
    return [BIN / "dalle_bench", path, part, timed, warm], {}, ref + [part, path, timed, warm]


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
    if r.get("impl") == "sdcpp":
        r["sdcpp_log"] = parse_sdcpp_log(p.stderr)
    return r


def targets(res: dict) -> list[str]:
    lines = []
    for c, what, bound in TARGETS:
        if c not in res["components"]:
            continue
        s = res["components"][c]["summary"]
        if what == "ratio":
            v, text = s["ratio_kiln_over_ref"], f"kiln/{s['ref_impl']} {s['ratio_kiln_over_ref']:.3f} (target <= {bound})"
        else:
            v = s["kiln"]["peak_rss_mib"] / 1024
            text = f"kiln peak RSS {v:.2f} GiB (target <= {bound} GiB)"
        s.setdefault("targets", []).append({"what": what, "bound": bound, "value": v, "met": v <= bound})
        lines.append(f"  {c}: {text}: {'met' if v <= bound else 'MISSED'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=DEFAULT_ONLY, help=f"comma list of {','.join(COMPONENTS)}, or all")
    ap.add_argument("--rounds", type=int, default=1, help="kiln/reference process pairs per component")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=SD_MODEL, help="SD 1.5 diffusers folder (+ sd15-random.safetensors)")
    ap.add_argument("--mini", type=Path, default=DALLE["mini"], help="folder with dalle_bart_mini/ and vqgan/")
    ap.add_argument("--mega", type=Path, default=DALLE["mega"], help="folder with dalle_bart_mega/ and vqgan/")
    ap.add_argument("--timed", type=int, default=0, help="override timed runs per process (0: per-component default)")
    ap.add_argument("--profile", action="store_true", help="also profile one kiln UNet step by op category")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    comps = list(COMPONENTS) if a.only == "all" else [c for c in a.only.split(",") if c]
    unknown = [c for c in comps if c not in COMPONENTS]
    if unknown:
        raise SystemExit(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")

    ensure_venv()
    refs = {COMPONENTS[c][4] for c in comps}
    if "min-dalle" in refs:
        ensure_package("min_dalle", "min-dalle")
    if "sd.cpp" in refs:
        ensure_package("stable_diffusion_cpp", SDCPP_PIP)
    paths = {c: model_path(COMPONENTS[c][0], a) for c in comps}
    if not a.no_build:
        sh(["cargo", "build", "--release", "--example", "sd15_bench", "--example", "dalle_bench"], cwd=REPO)
    kenv = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_before": os.getloadavg(), "threads": a.threads,
                       "image_steps": int(os.environ.get("BENCH_IMAGE_STEPS", "20")),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")},
           "components": {}}
    for c in comps:
        _, _, timed, warm, ref = COMPONENTS[c]
        timed = a.timed or timed
        kcmd, kextra, rcmd = commands(c, paths[c], timed, warm)
        runs = {"kiln": [], ref: []}
        for _ in range(a.rounds):
            for impl, cmd, env in (("kiln", kcmd, dict(kenv, **kextra)), (ref, rcmd, None)):
                la = os.getloadavg()[0]
                r = timed_process(cmd + (["--threads", a.threads] if impl != "kiln" else []), env=env)
                r["loadavg_1m_before"] = la
                runs[impl].append(r)
        summ = {"ref_impl": ref, "model": str(paths[c])}
        for impl, rs in runs.items():
            ts = [t for r in rs for t in r["times_s"]]
            summ[impl] = {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts),
                          "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in rs),
                          "cpu_percent": [r["cpu_percent"] for r in rs]}
        summ["ratio_kiln_over_ref"] = summ["kiln"]["median_s"] / summ[ref]["median_s"]
        res["components"][c] = {"summary": summ, "runs": runs}
        print(f"{c}: kiln {summ['kiln']['median_s']:.3f}s  {ref} {summ[ref]['median_s']:.3f}s  "
              f"ratio {summ['ratio_kiln_over_ref']:.2f}", file=sys.stderr, flush=True)
    if a.profile:
        res["kiln_unet_profile"] = timed_process([BIN / "sd15_bench", model_path("sd15", a), "unet-profile", 1, 1],
                                                 env=kenv)
    res["machine"]["loadavg_after"] = os.getloadavg()
    report(res, a)


def report(res: dict, a) -> None:
    m = res["machine"]
    print(f"\nkiln vs references, CPU fp32, {a.threads} threads, nproc={m['nproc']}, image steps {m['image_steps']}, "
          f"loadavg before {m['loadavg_before'][0]:.2f} after {m['loadavg_after'][0]:.2f}")
    hdr = (f"| {'component':<20} | {'ref':<9} | {'kiln s':>8} | {'ref s':>8} | {'kiln/ref':>8} | {'kiln RSS MiB':>12} "
           f"| {'ref RSS MiB':>11} | {'kiln CPU%':>9} | {'ref CPU%':>8} |")
    print(hdr)
    print("|" + "|".join("-" * len(x) for x in hdr.split("|")[1:-1]) + "|")
    for c, v in res["components"].items():
        s = v["summary"]
        k, d = s["kiln"], s[s["ref_impl"]]
        print(f"| {COMPONENTS[c][1]:<20} | {s['ref_impl']:<9} | {k['median_s']:>8.3f} | {d['median_s']:>8.3f} | "
              f"{s['ratio_kiln_over_ref']:>8.3f} | {k['peak_rss_mib']:>12.0f} | {d['peak_rss_mib']:>11.0f} | "
              f"{'/'.join(map(str, k['cpu_percent'])):>9} | {'/'.join(map(str, d['cpu_percent'])):>8} |")
    print("(median of all timed runs; n timed per impl: "
          + ", ".join(f"{c}={v['summary']['kiln']['n']}" for c, v in res["components"].items())
          + "; CPU% and RSS are of the whole process incl. loading)")
    for c, v in res["components"].items():
        for r in v["runs"].get("sd.cpp", []):
            lg, steps = r.get("sdcpp_log", {}), r.get("steps") or m["image_steps"]
            if lg.get("sampling_s"):
                print(f"sd.cpp breakdown ({c}): text encode {lg['text_encode_s']} s, sampling {lg['sampling_s']} s "
                      f"(= {lg['sampling_s'][-1] / steps:.2f} s/step), VAE decode {lg['vae_decode_s']} s; "
                      f"UNet weights: {lg.get('unet_weight_types', '?')}; {r.get('system_info', '')}")
    lines = targets(res)
    if lines:
        print("targets:\n" + "\n".join(lines))
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
