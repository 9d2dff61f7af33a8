#!/usr/bin/env python3
"""kiln fixture generator: diffusers' bf16 run of the tiny SD 1.5 model (issue 28, `--precision bf16`).

Run by hand only (never by CI), in the reference venv (see make_sd15_fixtures.py):

    .venv-ref/bin/python models/make_sd15_bf16_fixtures.py    # -> models/fixtures/sd15-tiny/refs/pipeline_ddim4_bf16.safetensors

The 4-step DDIM txt2img loop of refs/pipeline_ddim4.safetensors (same prompt, guidance, initial noise), with
the UNet and the CLIP text encoder cast to torch.bfloat16 and the VAE in fp32 (SD 1.5's force_upcast), as
kiln's `--precision bf16` places them. kiln keeps the latents and the scheduler in f32, so does this run: a
forward pre-hook casts the UNet's input to bf16 and a forward hook casts its output back to f32. The
difference that remains is by design: torch rounds every activation inside the bf16 modules to bf16, kiln
rounds only the operands of its GEMMs (weights as stored, activations as they are packed) and keeps the rest
in f32.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent / "fixtures" / "sd15-tiny"
PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
STEPS = 4


def main() -> None:
    import diffusers
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    refs = ROOT / "refs"
    fp32 = load_file(str(refs / "pipeline_ddim4.safetensors"))
    noise = fp32["init_noise"]
    pipe = StableDiffusionPipeline.from_pretrained(str(ROOT), safety_checker=None, requires_safety_checker=False)
    cfg = json.loads((ROOT / "scheduler" / "scheduler_config.json").read_text())
    pipe.scheduler = diffusers.DDIMScheduler.from_config(cfg)
    pipe.unet.to(torch.bfloat16)
    pipe.text_encoder.to(torch.bfloat16)

    def to_bf16(_m, args, kwargs):
        return (args[0].to(torch.bfloat16), *args[1:]), kwargs

    def to_f32(_m, _args, _kwargs, out):
        if isinstance(out, tuple):
            return (out[0].float(), *out[1:])
        out.sample = out.sample.float()
        return out

    pipe.unet.register_forward_pre_hook(to_bf16, with_kwargs=True)
    pipe.unet.register_forward_hook(to_f32, with_kwargs=True)
    h, w = noise.shape[2] * pipe.vae_scale_factor, noise.shape[3] * pipe.vae_scale_factor
    with torch.inference_mode():
        lat = pipe(PROMPT, negative_prompt="", height=h, width=w, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, latents=noise.clone(), output_type="latent").images.float()
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    scale = fp32["final_latents"].abs().max().item()
    diff = (lat - fp32["final_latents"]).abs().max().item()
    print(f"bf16 vs fp32 final latents: max|diff| {diff:.4g}, relative to scale {diff / scale:.4g}")
    how = (f"diffusers {diffusers.__version__}, torch {torch.__version__}: the pipeline_ddim4 run (prompt {PROMPT!r}, "
           f"guidance {GUIDANCE}, DDIM {STEPS} steps, its init_noise) with unet and text_encoder in torch.bfloat16, "
           "VAE fp32, latents and scheduler fp32 (hooks cast the UNet's input to bf16 and its output to fp32); "
           "final_latents = pipeline output (fp32); image = vae.decode(final_latents / scaling_factor).sample (fp32)")
    save_file({"final_latents": lat.contiguous(), "image": image.contiguous()},
              str(refs / "pipeline_ddim4_bf16.safetensors"), metadata={"how": how})
    print("written", refs / "pipeline_ddim4_bf16.safetensors")


if __name__ == "__main__":
    main()
