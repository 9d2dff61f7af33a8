#!/usr/bin/env python3
"""Reference-side workers of `benches/compare.py`: one process = one implementation loading one
model and timing one component; prints one JSON line on stdout (as kiln's examples/*_bench.rs do).

    .venv-ref/bin/python benches/compare_refs.py diffusers  <clip|unet|unet-bf16|vae|image|image-bf16> <sd15-folder>  TIMED WARMUP [--threads N]
    .venv-ref/bin/python benches/compare_refs.py diffusers  lcm <sd15-folder> TIMED WARMUP --lora LORA.safetensors
    .venv-ref/bin/python benches/compare_refs.py make-lcm-lora <unet-folder> OUT.safetensors
    .venv-ref/bin/python benches/compare_refs.py sdcpp      image                 <sd15 .safetensors> TIMED WARMUP [--threads N]
    .venv-ref/bin/python benches/compare_refs.py min-dalle  <step|image>          <dalle_bart folder> TIMED WARMUP [--threads N]

diffusers and min-dalle also take `--device cuda[:N] --dtype fp16|bf16|fp32` (GPU runs of
`compare.py --device ...`): the models and inputs go to that device in that dtype (diffusers'
VAE too, as its SD 1.5 pipeline runs it; min-dalle under autocast as `MinDalle` does, its VQGAN
in fp32), each timed run ends with `torch.cuda.synchronize()`, and the JSON line carries
`device_memory` = torch's peak allocated / peak reserved bytes over the whole process.

Settings shared with kiln's side (keep them in step with examples/sd15_bench.rs and
examples/dalle_bench.rs):
- SD 1.5: prompt PROMPT_SD, negative "", BENCH_IMAGE_SIZE (default 512) square, CFG 7.5, BENCH_IMAGE_STEPS steps (default 20);
  diffusers uses DDIM (as kiln's `image`), sd.cpp Euler with the discrete schedule (kiln's
  `image` run with BENCH_IMAGE_SCHEDULER=euler for that row): one UNet evaluation per step, CFG
  on, on both sides.
- DALL·E: PROMPT_DALLE through min-dalle's tokeniser, super-condition 16, top_k 1 (greedy: no
  random numbers, so both sides do identical work), temperature 1, one image = decoder batch 2,
  fp32. min-dalle is driven through its own modules exactly as `MinDalle.generate_image` does
  (`MinDalle()` itself insists on contacting huggingface.co at construction).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

PROMPT_SD = "a photograph of an astronaut riding a horse"
PROMPT_DALLE = "a photo of a cat sitting on a red chair"
DALLE_STEP_AT = 128  # first timed decoder position (as examples/dalle_bench.rs)


def steps_env() -> int:
    return int(os.environ.get("BENCH_IMAGE_STEPS", "20"))


def size_env() -> int:
    return int(os.environ.get("BENCH_IMAGE_SIZE", "512"))


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def synced(fn, device: str):
    """fn, followed by a device sync on a GPU so that its time is the work's."""
    if not device.startswith("cuda"):
        return fn
    import torch

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return run


def device_memory(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    import torch
    return {"device_memory": {"bytes_in_use": torch.cuda.max_memory_allocated(device),
                              "bytes_reserved": torch.cuda.max_memory_reserved(device)}}


def time_runs(fn, timed: int, warmup: int):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(timed):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return ts


# ---------------------------------------------------------------------------------------------
# diffusers (PyTorch), SD 1.5 components

def diffusers(component: str, model: Path, threads: int, device: str = "cpu", dtype: str = "fp32",
              lora: Path | None = None):
    import torch
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    # unet-bf16 / image-bf16: the CPU step / whole pipeline in bfloat16 (torch_dtype, as a
    # diffusers user would: VAE included), which PyTorch runs on AMX/AVX512-BF16 where present.
    bf16_row = component.endswith("-bf16")
    component = component.removesuffix("-bf16")
    dt = getattr(torch, DTYPES["bf16" if bf16_row else dtype])
    g = torch.Generator(device=device).manual_seed(0)
    lat = size_env() // 8
    randn = lambda *shape: torch.randn(*shape, generator=g, device=device).to(dt)
    if component == "clip":
        m = CLIPTextModel.from_pretrained(str(model / "text_encoder"), torch_dtype=dt).to(device).eval()
        ids = torch.randint(0, 49408, (1, 77), generator=g, device=device)
        fn = lambda: m(ids).last_hidden_state
    elif component == "unet":
        m = UNet2DConditionModel.from_pretrained(str(model / "unet"), torch_dtype=dt).to(device).eval()
        x = randn(2, m.config.in_channels, lat, lat)
        t = torch.tensor([981, 981], device=device)
        ctx = randn(2, 77, m.config.cross_attention_dim)
        fn = lambda: m(x, t, encoder_hidden_states=ctx).sample
    elif component == "vae":
        m = AutoencoderKL.from_pretrained(str(model / "vae"), torch_dtype=dt).to(device).eval()
        z = randn(1, m.config.latent_channels, lat, lat)
        fn = lambda: m.decode(z).sample
    elif component == "image":
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        steps, size = steps_env(), size_env()
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, torch_dtype=dt,
                                                       requires_safety_checker=False).to(device)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        fn = lambda: pipe(PROMPT_SD, num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
                          generator=g, output_type="np").images
    elif component == "lcm":
        # LCM-LoRA as its model card runs it: LCMScheduler, 4 steps, guidance 1 (no CFG batch);
        # the LoRA fused once, as kiln merges it once and caches the result.
        from diffusers import LCMScheduler, StableDiffusionPipeline
        size = size_env()
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, torch_dtype=dt,
                                                       requires_safety_checker=False).to(device)
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lcm")
        pipe.fuse_lora()
        pipe.set_progress_bar_config(disable=True)
        fn = lambda: pipe(PROMPT_SD, num_inference_steps=4, guidance_scale=1.0, height=size, width=size,
                          generator=g, output_type="np").images
    else:
        raise SystemExit(f"diffusers: unknown component {component}")
    return fn, {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                                "dtype": str(dt).removeprefix("torch."), "size": size_env(),
                **({"steps": steps_env()} if component == "image" else {})}


# ---------------------------------------------------------------------------------------------
# stable-diffusion.cpp (PyPI stable-diffusion-cpp-python), whole image from the ldm single file

SDCPP_LOG = {
    "text_encode_s": r"get_learned_condition completed, taking ([0-9.]+)\s*s",
    "sampling_s": r"sampling completed, taking ([0-9.]+)\s*s",
    "vae_decode_s": r"decode_first_stage completed, taking ([0-9.]+)\s*s",
}


def parse_sdcpp_log(log: str) -> dict:
    """sd.cpp's own timing lines (one per generated image, in order) and the UNet weight types."""
    out = {k: [float(x) for x in re.findall(p, log)] for k, p in SDCPP_LOG.items()}
    m = re.search(r"Diffusion model weight type stat:\s*(.*)", log)
    if m:
        out["unet_weight_types"] = m.group(1).strip()
    return out


def sdcpp(component: str, model: Path, threads: int):
    if component != "image":
        raise SystemExit("sdcpp: only `image`")
    from stable_diffusion_cpp import StableDiffusion
    import stable_diffusion_cpp
    steps = steps_env()
    # wtype "default" keeps the file's f32 weights; no flash attention, no VAE tiling (defaults).
    sd = StableDiffusion(model_path=str(model), n_threads=threads, wtype="default", verbose=True)
    fn = lambda: sd.generate_image(prompt=PROMPT_SD, negative_prompt="", width=512, height=512, cfg_scale=7.5,
                                   sample_method="euler", scheduler="discrete", sample_steps=steps, seed=42)
    info = "ggml SIMD: " + " ".join(re.findall(r"(\w+) = 1", stable_diffusion_cpp.sd_get_system_info().decode()))
    return fn, {"stable_diffusion_cpp_python": getattr(stable_diffusion_cpp, "__version__", "?"), "threads": threads,
                "steps": steps, "sampler": "euler/discrete", "system_info": info}


# ---------------------------------------------------------------------------------------------
# min-dalle (PyPI min-dalle 0.4.11), driven through its modules as MinDalle(is_reusable=True) does

def min_dalle(component: str, bart: Path, threads: int, device: str = "cpu", dtype: str = "fp32"):
    import contextlib
    import torch
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer
    from min_dalle.text_tokenizer import TextTokenizer
    torch.set_num_threads(threads)  # after the import: min_dalle sets os.cpu_count() threads
    torch.set_grad_enabled(False)
    dt = getattr(torch, DTYPES[dtype])
    cfg = json.loads((bart / "config.json").read_text())
    L, d, H, F = cfg["decoder_layers"], cfg["d_model"], cfg["decoder_attention_heads"], cfg["decoder_ffn_dim"]
    # MinDalle.__init__: tokenizer, then encoder, decoder, detokenizer, all resident; the BART
    # in `dtype`, moved to the device after loading, the VQGAN in fp32.
    vocab = json.loads((bart / "vocab.json").read_text(encoding="utf8"))
    merges = (bart / "merges.txt").read_text(encoding="utf8").split("\n")[1:-1]
    tokenizer = TextTokenizer(vocab, merges)
    enc = DalleBartEncoder(attention_head_count=H, embed_count=d, glu_embed_count=F, text_token_count=64,
                           text_vocab_count=cfg["encoder_vocab_size"], layer_count=L,
                           device=device).to(dt).eval()
    enc.load_state_dict(torch.load(bart / "encoder.pt"), strict=False)
    enc = enc.to(device)
    dec = DalleBartDecoder(image_vocab_count=cfg["image_vocab_size"], attention_head_count=H, embed_count=d,
                           glu_embed_count=F, layer_count=L, device=device).to(dt).eval()
    dec.load_state_dict(torch.load(bart / "decoder.pt"), strict=False)
    dec = dec.to(device)
    detok = VQGanDetokenizer().eval()
    vq_cfg = bart.parent / "vqgan" / "config.json"
    vq_cfg = json.loads(vq_cfg.read_text()) if vq_cfg.exists() else {}
    tiny_vq = vq_cfg.get("ch", 128) != 128
    if tiny_vq:
        # A tiny fixture VQGAN (smoke runs of the harness): the project generator's parametric
        # module, which equals min-dalle's at the published size.
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
        from make_dalle_fixtures import VqDetokenizer
        detok = VqDetokenizer(vq_cfg, 1e-6).eval()
    detok.load_state_dict({k: v.float() for k, v in torch.load(bart.parent / "vqgan" / "detoker.pt").items()})
    detok = detok.to(device)
    detokenize = (lambda toks: detok(toks.clamp(max=vq_cfg["n_embed"] - 1))) if tiny_vq else \
        (lambda toks: detok.forward(False, toks))
    start = cfg["image_vocab_size"] - 1  # min-dalle's first token, 2 ** 14 - 1 at the published size
    # temperature, top_k, supercondition_factor
    settings = torch.tensor([1.0, 1.0, 16.0], dtype=torch.float32, device=device)
    token_indices = torch.arange(256, device=device)
    # MinDalle.generate_raw_image_stream runs the BART under autocast(self.dtype) on a GPU.
    amp = (lambda: torch.autocast("cuda", dtype=dt)) if device.startswith("cuda") else contextlib.nullcontext

    def encode():  # MinDalle.generate_raw_image_stream, grid_size 1
        tokens = tokenizer.tokenize(PROMPT_DALLE, is_verbose=False)[:64]
        text = torch.ones((2, 64), dtype=torch.long)
        text[0, :2] = torch.tensor([tokens[0], tokens[-1]])
        text[1, :len(tokens)] = torch.tensor(tokens)
        text = text.to(device)
        with amp():
            state = enc.forward(text)[[0, 1]]
        text = text[[0, 1]]
        return state, text.not_equal(1)[:, None, None, :], torch.zeros((L, 4, 256, d), device=device)

    def step(i, prev, es, mask, att):
        with amp():
            return dec.sample_tokens(settings=settings, attention_mask=mask, encoder_state=es, attention_state=att,
                                     prev_tokens=prev, token_index=token_indices[[i]])

    extra = {"torch": torch.__version__, "threads": torch.get_num_threads(), "model": f"d{d} x{L}",
             "device": device, "dtype": str(dt).removeprefix("torch.")}
    if component == "step":
        es, mask, att = encode()
        pos = {"i": 0, "prev": torch.full((1, 1), start, dtype=torch.long, device=device)}

        def fn():
            tok, _ = step(pos["i"], pos["prev"], es, mask, att)
            pos["prev"] = tok[:, None]
            pos["i"] += 1
        extra["first_position"] = DALLE_STEP_AT
        return fn, extra, lambda: pos.update(i=DALLE_STEP_AT)
    if component == "image":
        def fn():
            es, mask, att = encode()
            image_tokens = torch.full((1, 257), start, dtype=torch.long, device=device)
            for i in range(256):
                image_tokens[:, i + 1], att = step(i, image_tokens[:, [i]], es, mask, att)
            img = detokenize(image_tokens[:, 1:])
            extra["first_tokens"] = image_tokens[0, 1:9].tolist()
            return img.to(torch.uint8).cpu().numpy()
        return fn, extra
    raise SystemExit(f"min-dalle: unknown component {component}")


# ---------------------------------------------------------------------------------------------
# A random LoRA shaped like LCM-LoRA (latent-consistency/lcm-lora-sdv1-5): kohya keys, rank 64

LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")


def make_lcm_lora(unet_dir: Path, out: Path, rank: int = 64) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(unet_dir)))
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, mod in unet.named_modules():
        if not name.endswith(LCM_TARGETS) or not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(mod, torch.nn.Linear):
            down, up = (rank, mod.in_features), (mod.out_features, rank)
        else:
            down, up = (rank, mod.in_channels, *mod.kernel_size), (mod.out_channels, rank, 1, 1)
        sd[f"{key}.lora_down.weight"] = (torch.randn(*down, generator=g) * 0.01).half()
        sd[f"{key}.lora_up.weight"] = (torch.randn(*up, generator=g) * 0.01).half()
        sd[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out))
    print(f"{out}: {len(sd) // 3} modules, rank {rank}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------

def main() -> None:
    if sys.argv[1:2] == ["make-lcm-lora"]:
        return make_lcm_lora(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl", choices=["diffusers", "sdcpp", "min-dalle"])
    ap.add_argument("component")
    ap.add_argument("model", type=Path)
    ap.add_argument("timed", type=int)
    ap.add_argument("warmup", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (diffusers, min-dalle)")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="model dtype (diffusers, min-dalle)")
    ap.add_argument("--lora", type=Path, default=None, help="the LoRA file of the lcm component")
    a = ap.parse_args()
    t0 = time.perf_counter()
    if a.impl == "sdcpp":
        if (a.device, a.dtype) != ("cpu", "fp32"):
            raise SystemExit("sdcpp: CPU fp32 only (the file's f32 weights)")
        made = sdcpp(a.component, a.model, a.threads)
    else:
        extra_args = {"lora": a.lora} if a.impl == "diffusers" else {}
        made = {"diffusers": diffusers, "min-dalle": min_dalle}[a.impl](a.component, a.model, a.threads,
                                                                       a.device, a.dtype, **extra_args)
    fn, extra, between = (made + (None,))[:3]
    fn = synced(fn, a.device)
    for _ in range(a.warmup):
        fn()
    if between:
        between()  # e.g. jump to the timed decoder position
    ts = time_runs(fn, a.timed, 0)
    load = time.perf_counter() - t0 - sum(ts)
    print(json.dumps({"component": a.component, "impl": a.impl, "load_plus_warmup_s": round(load, 3),
                      "times_s": [round(x, 4) for x in ts], "median_s": round(statistics.median(ts), 4), **extra,
                      **device_memory(a.device)}),
          flush=True)


if __name__ == "__main__":
    main()
