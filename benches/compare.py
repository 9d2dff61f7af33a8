#!/usr/bin/env python3
"""Benchmark: kiln against the reference implementations, same machine, same run, alternating
processes, identical weights, prompts and settings. CPU fp32 by default; `--device` for a GPU.

One command (from the repo root, or anywhere):

    python3 benches/compare.py                           # clip,unet,vae,dalle-step (~7 min on 2 cores)
    python3 benches/compare.py --only all                # every component (~1.5 h on 2 cores)
    python3 benches/compare.py --only sdcpp,mega-step --rounds 2 --threads 2

Components (kiln vs reference):
  clip         SD 1.5 CLIP text encode 1x77                                   vs diffusers
  unet         one UNet forward at batch 2 (CFG), 64x64 latent, 2x77x768 ctx  vs diffusers
  unet-bf16    the same step, kiln --precision bf16                            vs diffusers in bf16 (AMX/AVX512-BF16)
  image-bf16   the whole image, kiln --precision bf16 (VAE f32)               vs diffusers torch_dtype=bf16 (VAE too)
  vae          VAE decode 1x4x64x64 -> 512x512                                vs diffusers
  image        whole SD pipeline 512x512, CFG 7.5, DDIM, BENCH_IMAGE_STEPS    vs diffusers
               (kiln loads <model>/sd15-random-fp16.safetensors where it exists: fp16 weights
               kept f16 in memory, computed in f32; diffusers the fp32 folder)
  lcm          whole SD pipeline 512x512 with an LCM-LoRA: LCM scheduler, 4 steps, guidance 1
               (UNet at batch 1), the LoRA applied once per process (kiln: merged on the first
               request and cached; diffusers: load_lora_weights + fuse_lora)    vs diffusers
  sdcpp        whole SD pipeline 512x512, CFG 7.5, Euler (discrete), BENCH_IMAGE_STEPS,
               both loading the ldm single file sd15-random.safetensors (f32)  vs stable-diffusion.cpp
  dalle-step   DALL·E Mini: one decoder step, 1 image = batch 2 (super-condition), position 128
  dalle-image  DALL·E Mini: one whole image (encode, 256 tokens, VQGAN decode)  vs min-dalle (both)
  mega-step    DALL·E Mega: one decoder step (as dalle-step)                   vs min-dalle
  mega-image   DALL·E Mega: one whole image (slow: min-dalle takes 10+ min)    vs min-dalle
BENCH_IMAGE_STEPS defaults to 20; BENCH_IMAGE_N (default 1) images per request for kiln's image row
(n = 4 ran at 0.95-0.97x the per-image time of n = 1, 10 DDIM steps at 512x512, 2 cores). DALL·E runs use min-dalle's tokeniser, super-condition 16 and
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
     (`models/make_sd15_fixtures.py --full`, ~8.6 GB), `.cache/lcm-lora-random/<model>.safetensors`
     (a random rank-64 kohya LoRA on the modules LCM-LoRA trains, for the lcm row), `.cache/dalle-mini-random/` and
     `.cache/dalle-mega-random/` (`models/make_dalle_fixtures.py full --model mini|mega`,
     1.0 / 5.3 GB of fp16 min-dalle .pt files; mega takes ~2 min and ~4 GB of RAM to make on 2 cores);
  3. builds `cargo build --release --example sd15_bench --example dalle_bench` (kiln's timing
     binaries, in $CARGO_TARGET_DIR or target/);
  4. per component, alternates kiln and reference *processes* for --rounds rounds, each loading
     the weights and doing warm-up + timed runs, under `/usr/bin/time -v` (peak RSS, CPU %);
  5. prints a table of medians (over every timed run of every round), ratio kiln/ref, peak RSS and
     CPU % of each process (both include loading), the project's targets, and writes JSON
     (`.cache/bench/compare.json`).
Threads: --threads for torch (set_num_threads), sd.cpp (n_threads) and kiln (RAYON_NUM_THREADS).
`--profile` adds a per-op-category profile of one kiln UNet step (examples/sd15_bench.rs).

GPU mode (`--device cuda`, `cuda:N`, `wgpu`, `wgpu:N`): kiln's examples are built with that cargo
feature and run there with `--precision` (default auto = f16 for UNet, CLIP and BART; the VAE
in f32 as its config asks). The references run with `--ref-device` (default: cuda when torch
sees a GPU, else none: kiln-only rows, e.g. wgpu on Mesa lavapipe) in `--ref-dtype` (default
fp16: diffusers' usual GPU setting, and min-dalle's). sdcpp and unet-bf16 are CPU rows. Extra
columns: each side's own pool figure (kiln: cubecl's reserved bytes after the runs; torch: peak
reserved) and, where nvidia-smi exists, the device's used memory above its idle level while
the process ran (sampled every 0.1 s; includes the CUDA context) -- the GPU targets use the
latter when present. For the image rows the JSON and the table give it/s = steps / seconds
per image (whole image: CLIP, steps, VAE).
Without a venv (`--ref-python PATH` or env BENCH_REF_PYTHON, e.g. a GPU machine with no network):
no `.venv-ref` is made and nothing is pip-installed; PATH runs compare_refs.py and the make_*
generators (with the caller's environment, so PYTHONPATH reaches wheels installed with --target),
and the run stops at once if the modules the selected rows need (diffusers, min_dalle, ...)
do not import there. benches/gpu/wheels.sh fetches the wheels such a machine lacks.
`--size` (BENCH_IMAGE_SIZE) shrinks SD's unet/vae/image rows on both sides; with the tiny
fixture models (`--model models/fixtures/sd15-tiny --size 64`, `--mini
models/fixtures/dalle-tiny/mindalle/dalle_bart_tiny`) the whole GPU path runs on lavapipe in
about a minute.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
DEFAULT_GPU_ONLY = "clip,unet,vae,image,dalle-image,mega-step,mega-image"
CPU_ONLY = ("sdcpp", "unet-bf16", "image-bf16")
SDCPP_PIP = "stable-diffusion-cpp-python==0.4.7"

# name: (model, label, timed, warm-up per process, reference)
COMPONENTS = {
    "clip": ("sd15", "CLIP encode 1x77", 5, 1, "diffusers"),
    "unet": ("sd15", "UNet step b2 64x64", 2, 1, "diffusers"),
    "unet-bf16": ("sd15", "UNet step bf16", 2, 1, "diffusers"),
    "vae": ("sd15", "VAE decode 512x512", 2, 1, "diffusers"),
    "image": ("sd15", "SD image 512 DDIM", 1, 0, "diffusers"),
    "image-bf16": ("sd15", "SD image 512 bf16", 1, 0, "diffusers"),
    "lcm": ("sd15", "SD image 512 LCM 4", 2, 1, "diffusers"),
    "sdcpp": ("sd15-file", "SD image 512 Euler", 1, 0, "sd.cpp"),
    "dalle-step": ("mini", "mini decoder step", 8, 2, "min-dalle"),
    "dalle-image": ("mini", "mini image 256 tok", 1, 0, "min-dalle"),
    "mega-step": ("mega", "mega decoder step", 4, 1, "min-dalle"),
    "mega-image": ("mega", "mega image 256 tok", 1, 0, "min-dalle"),
}
# The targets: kiln/ref ratio at most, or kiln peak RSS at most (GiB).
TARGETS = [("unet", "ratio", 1.0), ("unet-bf16", "ratio", 1.0), ("image", "ratio", 0.6), ("image", "kiln_rss_gib", 3.0), ("sdcpp", "ratio", 0.25),
           ("dalle-image", "ratio", 0.3), ("mega-step", "kiln_rss_gib", 12.0), ("mega-image", "kiln_rss_gib", 12.0)]
# On a GPU (issue 27): the whole image at most diffusers fp16's time; kiln's device memory at most
# (GiB), where the old services asked for 16 and 32 GiB.
GPU_TARGETS = [("image", "ratio", 1.0), ("image", "kiln_gpu_gib", 4.0), ("mega-step", "kiln_gpu_gib", 8.0), ("mega-image", "kiln_gpu_gib", 8.0)]


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


def ensure_ref_python(path: str, modules: set[str]) -> None:
    """Use the interpreter `path` for every reference-side process (no venv, no pip); stop with a
    clear message if it cannot import `modules`."""
    global VPY
    VPY = Path(path)
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    try: importlib.import_module(m)\n" \
           "    except Exception as e: print(f'{m}: {type(e).__name__}: {e}')"
    try:
        bad = subprocess.run([str(VPY), "-c", code, *sorted(modules)], capture_output=True, text=True).stdout.strip()
    except OSError as e:
        raise SystemExit(f"--ref-python {path}: {e}")
    if bad:
        raise SystemExit(f"--ref-python {path} cannot import what the selected rows need:\n{bad}\n"
                         f"(install the wheels of benches/gpu/wheels.sh with pip --target DIR and export PYTHONPATH=DIR)")


def ensure_package(module: str, spec: str) -> None:
    if importlib.util.find_spec(module) is None:
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        sh([VPY, "-m", "pip", "install", spec], env=env)


def make_flags(a, sd: bool = False) -> list[str]:
    """Generator flags: with --device cuda the weights are drawn on the GPU (mega: seconds, not
    minutes) and SD skips what no GPU row reads (the f32 ldm file: sdcpp only)."""
    if not a.device.startswith("cuda"):
        return []
    return ["--device", a.device, "--threads", str(os.cpu_count() or 2)] + \
        (["--no-fp32-file", "--no-reload-check"] if sd else [])


def model_path(kind: str, a) -> Path:
    """The path handed to both sides for a model kind, made first if it is the default and absent."""
    if kind in ("sd15", "sd15-file"):
        need = [a.model / "unet/diffusion_pytorch_model.safetensors", a.model / "vae/diffusion_pytorch_model.safetensors",
                a.model / "text_encoder/model.safetensors"] + [a.model / "sd15-random.safetensors"] * (kind == "sd15-file")
        if not all(p.exists() for p in need):
            if a.model != SD_MODEL:
                raise SystemExit(f"{a.model} lacks {[str(p) for p in need if not p.exists()]}")
            sh([VPY, REPO / "models/make_sd15_fixtures.py", "--full", *make_flags(a, sd=True)], cwd=REPO)
        return a.model / "sd15-random.safetensors" if kind == "sd15-file" else a.model
    root = getattr(a, kind)
    # The folder holding dalle_bart_<kind>/ and vqgan/, or a dalle_bart_* folder itself.
    bart = root if (root / "config.json").exists() else root / f"dalle_bart_{kind}"
    if not all((bart / f).exists() for f in ("encoder.pt", "decoder.pt", "config.json")) or \
            not (bart.parent / "vqgan" / "detoker.pt").exists():
        if root != DALLE[kind]:
            raise SystemExit(f"{root} lacks dalle_bart_{kind}/{{encoder,decoder}}.pt or vqgan/detoker.pt")
        sh([VPY, REPO / "models/make_dalle_fixtures.py", "full", "--model", kind, *make_flags(a)], cwd=REPO)
    return bart


def commands(c: str, path: Path, timed: int, warm: int):
    """(kiln command, extra kiln env, reference command) of one process pair."""
    ref = [VPY, REFS, {"diffusers": "diffusers", "sd.cpp": "sdcpp", "min-dalle": "min-dalle"}[COMPONENTS[c][4]]]
    if c in ("clip", "unet", "unet-bf16", "vae", "image", "image-bf16"):
        env = {"BENCH_PRECISION": "bf16"} if c.endswith("-bf16") else {}
        # Whole images: kiln from the fp16 single file where the model has one (what `kiln
        # download` fetches: f16 weights stay f16 in memory), diffusers from the fp32 folder.
        half = path / "sd15-random-fp16.safetensors"
        kpath = half if c.startswith("image") and half.exists() else path
        return [BIN / "sd15_bench", kpath, c.removesuffix("-bf16"), timed, warm], env, ref + [c, path, timed, warm]
    if c == "lcm":
        lora = lcm_lora(path)
        env = {"BENCH_IMAGE_SCHEDULER": "lcm", "BENCH_IMAGE_STEPS": "4", "BENCH_IMAGE_GUIDANCE": "1",
               "BENCH_LORA": str(lora)}
        return [BIN / "sd15_bench", path, "image", timed, warm], env, ref + ["lcm", path, timed, warm, "--lora", lora]
    if c == "sdcpp":
        return ([BIN / "sd15_bench", path, "image", timed, warm], {"BENCH_IMAGE_SCHEDULER": "euler"},
                ref + ["image", path, timed, warm])
    part = c.split("-")[1]  # step | image
    return [BIN / "dalle_bench", path, part, timed, warm], {}, ref + [part, path, timed, warm]


def lcm_lora(model: Path) -> Path:
    """A random full-size LoRA shaped like LCM-LoRA (kohya keys, rank 64, alpha 64: attention,
    feed-forward, projections, ResNet convolutions incl. 3x3, time embeddings, resamplers), made
    once from the UNet's own module shapes."""
    out = REPO / ".cache" / "lcm-lora-random" / f"{model.resolve().name}.safetensors"
    if not out.exists():
        sh([VPY, REFS, "make-lcm-lora", model / "unet", out])
    return out


def cpu_info() -> str:
    """The CPU's model and the flags that decide kiln's kernels (AVX-512, AVX512-BF16, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    keep = [f for f in (flags.group(1).split() if flags else [])
            if f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")]
    return f"{model.group(1) if model else 'unknown'} [{' '.join(keep)}]"


def smi_used_mib() -> float | None:
    """Memory used on the GPUs, as nvidia-smi reports it (MiB, all devices summed)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return sum(float(x) for x in out.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class SmiPeak:
    """Peak of nvidia-smi's used memory above its level at the start, sampled while a process runs."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.base = self.peak = None
        self._stop = threading.Event()

    def __enter__(self):
        if self.enabled:
            self.base = smi_used_mib()
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.1):
            v = smi_used_mib()
            if v is not None and self.base is not None:
                self.peak = max(self.peak or 0.0, v - self.base)

    def __exit__(self, *_):
        if self.enabled:
            self._stop.set()
            self._t.join()


def run_rusage(cmd, env) -> tuple[subprocess.CompletedProcess, str]:
    """Runs cmd; returns its result and the /usr/bin/time -v lines timed_process reads, from wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=err, text=True, env=env, cwd=REPO)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        p = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    cpu = round(100 * (ru.ru_utime + ru.ru_stime) / max(wall, 1e-9))
    tv = (f"Maximum resident set size (kbytes): {ru.ru_maxrss}\nPercent of CPU this job got: {cpu}%\n"
          f"Elapsed (wall clock) time (h:mm:ss or m:ss): {int(wall // 60)}:{wall % 60:05.2f}\n")
    return p, tv


def timed_process(cmd, env=None, gpu=False) -> dict:
    """Runs cmd under /usr/bin/time -v; returns its JSON stdout line + peak RSS (MiB) + CPU %
    (+ nvidia-smi's peak device memory above idle when `gpu`)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf, SmiPeak(gpu) as smi:
        print("+", " ".join(map(str, cmd)), file=sys.stderr, flush=True)
        if Path("/usr/bin/time").exists():
            full = ["/usr/bin/time", "-v", "-o", tf.name, *map(str, cmd)]
            p = subprocess.run(full, capture_output=True, text=True, env=env, cwd=REPO)
            tv = Path(tf.name).read_text()
        else:  # images without GNU time (the GPU machine may lack it): the same three figures from wait4
            p, tv = run_rusage(cmd, env)
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
    mem = r.get("device_memory")
    r["gpu_pool_mib"] = round(mem["bytes_reserved"] / 2 ** 20, 1) if mem else None
    r["gpu_smi_mib"] = round(smi.peak, 1) if smi.peak is not None else None
    if r.get("impl") == "sdcpp":
        r["sdcpp_log"] = parse_sdcpp_log(p.stderr)
    return r


def gpu_mib(side: dict) -> tuple[float | None, str]:
    """A side's device memory: nvidia-smi's where sampled, else its own pool's."""
    if side.get("gpu_smi_mib") is not None:
        return side["gpu_smi_mib"], "nvidia-smi"
    return side.get("gpu_pool_mib"), "pool reserved"


def targets(res: dict, gpu: bool) -> list[str]:
    lines = []
    for c, what, bound in (GPU_TARGETS if gpu else TARGETS):
        if c not in res["components"]:
            continue
        s = res["components"][c]["summary"]
        if what == "ratio":
            v = s["ratio_kiln_over_ref"]
            if v is None:
                continue
            text = f"kiln/{s['ref_impl']} {v:.3f} (target <= {bound})"
        elif what == "kiln_gpu_gib":
            mib, how = gpu_mib(s["kiln"])
            if mib is None:
                continue
            v = mib / 1024
            text = f"kiln device memory {v:.2f} GiB ({how}; target <= {bound} GiB)"
        else:
            v = s["kiln"]["peak_rss_mib"] / 1024
            text = f"kiln peak RSS {v:.2f} GiB (target <= {bound} GiB)"
        s.setdefault("targets", []).append({"what": what, "bound": bound, "value": v, "met": v <= bound})
        lines.append(f"  {c}: {text}: {'met' if v <= bound else 'MISSED'}")
    return lines


def side_summary(rs: list[dict]) -> dict:
    ts = [t for r in rs for t in r["times_s"]]
    out = {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts),
           "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in rs),
           "cpu_percent": [r["cpu_percent"] for r in rs]}
    for k in ("gpu_pool_mib", "gpu_smi_mib"):
        vals = [r[k] for r in rs if r.get(k) is not None]
        out[k] = max(vals) if vals else None
    if rs and rs[0].get("steps"):
        out["it_per_s"] = rs[0]["steps"] / out["median_s"]
    return out


def ref_placement(a) -> tuple[str, str]:
    """(reference device or 'none', reference dtype)."""
    dev = a.ref_device
    if dev == "auto":
        if a.device == "cpu":
            dev = "cpu"
        else:  # the reference interpreter decides (this process may have no torch)
            out = subprocess.run([str(VPY), "-c", "import torch; print(torch.cuda.is_available())"],
                                 capture_output=True, text=True).stdout.strip()
            dev = "cuda" if out == "True" else "none"
    return dev, a.ref_dtype or ("fp32" if dev == "cpu" else "fp16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help=f"comma list of {','.join(COMPONENTS)}, or all "
                    f"(default {DEFAULT_ONLY}; on a GPU {DEFAULT_GPU_ONLY})")
    ap.add_argument("--rounds", type=int, default=1, help="kiln/reference process pairs per component")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, default=SD_MODEL, help="SD 1.5 diffusers folder (+ sd15-random.safetensors)")
    ap.add_argument("--mini", type=Path, default=DALLE["mini"], help="folder with dalle_bart_mini/ and vqgan/")
    ap.add_argument("--mega", type=Path, default=DALLE["mega"], help="folder with dalle_bart_mega/ and vqgan/")
    ap.add_argument("--timed", type=int, default=0, help="override timed runs per process (0: per-component default)")
    ap.add_argument("--profile", action="store_true", help="also profile one kiln UNet step by op category")
    ap.add_argument("--device", default="cpu", help="kiln's device: cpu, wgpu[:N] or cuda[:N]")
    ap.add_argument("--precision", default="auto", help="kiln's precision: auto, f32 or f16")
    ap.add_argument("--ref-device", default="auto", help="cpu, cuda[:N], none, or auto (kiln's kind, cuda if torch has it)")
    ap.add_argument("--ref-dtype", default=None, choices=["fp32", "fp16", "bf16"], help="default fp32 on cpu, fp16 on cuda")
    ap.add_argument("--size", type=int, default=int(os.environ.get("BENCH_IMAGE_SIZE", "512")),
                    help="SD pixel size of unet/vae/image (default 512)")
    ap.add_argument("--ref-python", default=os.environ.get("BENCH_REF_PYTHON"), metavar="PATH",
                    help="reference interpreter to use as is (no .venv-ref, no pip; env BENCH_REF_PYTHON)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    gpu = a.device != "cpu"
    only = a.only or (DEFAULT_GPU_ONLY if gpu else DEFAULT_ONLY)
    comps = list(COMPONENTS) if only == "all" else [c for c in only.split(",") if c]
    if gpu and only == "all":
        comps = [c for c in comps if c not in CPU_ONLY]
    unknown = [c for c in comps if c not in COMPONENTS]
    if unknown:
        raise SystemExit(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")
    if gpu and any(c in CPU_ONLY for c in comps):
        raise SystemExit(f"{', '.join(CPU_ONLY)} are CPU rows; drop them with --device {a.device}")
    if a.profile and gpu:
        raise SystemExit("--profile times the CPU backend's eager ops; run it without --device")

    if a.ref_python:
        # the reference modules, and those of the generators (diffusers, min_dalle) for every row
        kinds = {COMPONENTS[c][0] for c in comps}
        need = {"torch"}
        if kinds & {"sd15", "sd15-file"}:
            need |= {"diffusers", "transformers"}
        if kinds & {"mini", "mega"}:
            need.add("min_dalle")
        if "sdcpp" in comps:
            need.add("stable_diffusion_cpp")
        ensure_ref_python(a.ref_python, need)
    else:
        ensure_venv()
    ref_dev, ref_dtype = ref_placement(a)
    refs = {COMPONENTS[c][4] for c in comps} if ref_dev != "none" else set()
    if "min-dalle" in refs and not a.ref_python:
        ensure_package("min_dalle", "min-dalle")
    if "sd.cpp" in refs and not a.ref_python:
        ensure_package("stable_diffusion_cpp", SDCPP_PIP)
    paths = {c: model_path(COMPONENTS[c][0], a) for c in comps}
    if not a.no_build:
        feature = ["--features", a.device.split(":")[0]] if gpu else []
        sh(["cargo", "build", "--release", *feature, "--example", "sd15_bench", "--example", "dalle_bench"], cwd=REPO)
    kenv = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), BENCH_DEVICE=a.device, BENCH_PRECISION=a.precision,
                BENCH_IMAGE_SIZE=str(a.size))
    renv = dict(os.environ, BENCH_IMAGE_SIZE=str(a.size))
    rflags = ["--threads", a.threads] + (["--device", ref_dev, "--dtype", ref_dtype] if ref_dev != "cpu" else [])
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_before": os.getloadavg(), "threads": a.threads,
                       "cpu": cpu_info(),
                       "image_steps": int(os.environ.get("BENCH_IMAGE_STEPS", "20")), "size": a.size,
                       "kiln_device": a.device, "kiln_precision": a.precision, "ref_device": ref_dev,
                       "ref_dtype": ref_dtype, "started": time.strftime("%Y-%m-%d %H:%M:%S")},
           "components": {}}
    for c in comps:
        _, _, timed, warm, ref = COMPONENTS[c]
        timed = a.timed or timed
        if gpu:
            warm = max(warm, 1)  # cubecl compiles and autotunes its kernels on the first run
        kcmd, kextra, rcmd = commands(c, paths[c], timed, warm)
        sides = [("kiln", kcmd, dict(kenv, **kextra))]
        if ref_dev != "none":
            sides.append((ref, rcmd + rflags, renv))
        runs = {impl: [] for impl, _, _ in sides}
        for _ in range(a.rounds):
            for impl, cmd, env in sides:
                la = os.getloadavg()[0]
                r = timed_process(cmd, env=env, gpu=gpu)
                r["loadavg_1m_before"] = la
                runs[impl].append(r)
        summ = {"ref_impl": ref if ref_dev != "none" else None, "model": str(paths[c])}
        for impl, rs in runs.items():
            summ[impl] = side_summary(rs)
        summ["ratio_kiln_over_ref"] = (summ["kiln"]["median_s"] / summ[ref]["median_s"]) if ref in summ else None
        res["components"][c] = {"summary": summ, "runs": runs}
        print(f"{c}: kiln {summ['kiln']['median_s']:.3f}s" + (f"  {ref} {summ[ref]['median_s']:.3f}s  ratio "
              f"{summ['ratio_kiln_over_ref']:.2f}" if ref in summ else ""), file=sys.stderr, flush=True)
    if a.profile:
        res["kiln_unet_profile"] = timed_process([BIN / "sd15_bench", model_path("sd15", a), "unet-profile", 1, 1],
                                                 env=kenv)
    res["machine"]["loadavg_after"] = os.getloadavg()
    report(res, a)


def label(c: str, size: int) -> str:
    """The component's table label at SD pixel size `size` (the labels say 512)."""
    text = COMPONENTS[c][1]
    if size == 512 or COMPONENTS[c][0] not in ("sd15", "sd15-file"):
        return text
    return text.replace("512x512", f"{size}x{size}").replace("64x64", f"{size // 8}x{size // 8}").replace(
        "512 ", f"{size} ")


def fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def report(res: dict, a) -> None:
    m = res["machine"]
    gpu = m["kiln_device"] != "cpu"
    if gpu:
        refs = "no reference" if m["ref_device"] == "none" else f"references on {m['ref_device']} ({m['ref_dtype']})"
        print(f"\nkiln on {m['kiln_device']} (precision {m['kiln_precision']}) vs {refs}, size {m['size']}, "
              f"image steps {m['image_steps']}")
        mem_cols = [("kiln pool MiB", "kiln", "gpu_pool_mib"), ("ref pool MiB", "ref", "gpu_pool_mib"),
                    ("kiln smi MiB", "kiln", "gpu_smi_mib"), ("ref smi MiB", "ref", "gpu_smi_mib"),
                    ("kiln RSS MiB", "kiln", "peak_rss_mib")]
    else:
        print(f"\nkiln vs references, CPU fp32 (-bf16 rows: bf16), {a.threads} threads, nproc={m['nproc']}, "
              f"size {m['size']}, image steps {m['image_steps']}, loadavg before {m['loadavg_before'][0]:.2f} after "
              f"{m['loadavg_after'][0]:.2f}\ncpu: {m['cpu']}")
        mem_cols = [("kiln RSS MiB", "kiln", "peak_rss_mib"), ("ref RSS MiB", "ref", "peak_rss_mib")]
    cols = [("component", 20), ("ref", 9), ("kiln s", 8), ("ref s", 8), ("kiln/ref", 8)] + \
        [(h, len(h)) for h, _, _ in mem_cols] + ([("kiln it/s", 9), ("ref it/s", 8)] if gpu else
                                                  [("kiln CPU%", 9), ("ref CPU%", 8)])
    hdr = "| " + " | ".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(cols)) + " |"
    print(hdr)
    print("|" + "|".join("-" * len(x) for x in hdr.split("|")[1:-1]) + "|")
    for c, v in res["components"].items():
        s = v["summary"]
        k, d = s["kiln"], s.get(s["ref_impl"]) or {}
        cells = [label(c, m["size"]), s["ref_impl"] or "-", fmt(k["median_s"], ".3f"), fmt(d.get("median_s"), ".3f"),
                 fmt(s["ratio_kiln_over_ref"], ".3f")]
        cells += [fmt((k if who == "kiln" else d).get(key), ".0f") for _, who, key in mem_cols]
        if gpu:
            cells += [fmt(k.get("it_per_s"), ".2f"), fmt(d.get("it_per_s"), ".2f")]
        else:
            cells += ["/".join(map(str, k["cpu_percent"])), "/".join(map(str, d.get("cpu_percent", [])))]
        print("| " + " | ".join(f"{x:<{w}}" if i < 2 else f"{x:>{w}}" for i, (x, (_, w)) in enumerate(zip(cells, cols)))
              + " |")
    print("(median of all timed runs; n timed per impl: "
          + ", ".join(f"{c}={v['summary']['kiln']['n']}" for c, v in res["components"].items())
          + ("; pool = each side's allocator after the runs (kiln: cubecl reserved; torch: peak reserved); smi = "
             "nvidia-smi's used memory above idle while the process ran; it/s = steps / seconds per whole image)"
             if gpu else "; CPU% and RSS are of the whole process incl. loading)"))
    for c, v in res["components"].items():
        for r in v["runs"].get("sd.cpp", []):
            lg, steps = r.get("sdcpp_log", {}), r.get("steps") or m["image_steps"]
            if lg.get("sampling_s"):
                print(f"sd.cpp breakdown ({c}): text encode {lg['text_encode_s']} s, sampling {lg['sampling_s']} s "
                      f"(= {lg['sampling_s'][-1] / steps:.2f} s/step), VAE decode {lg['vae_decode_s']} s; "
                      f"UNet weights: {lg.get('unet_weight_types', '?')}; {r.get('system_info', '')}")
    lines = targets(res, gpu)
    if lines:
        smoke = m["size"] != 512 or any(v["summary"]["model"].startswith(str(REPO / "models")) or
                                        v["summary"]["model"].startswith("models") for v in res["components"].values())
        print("targets" + (" (they are the full-size models' at 512; this run is a smoke run)" if smoke else "")
              + ":\n" + "\n".join(lines))
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
