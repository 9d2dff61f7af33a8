#!/usr/bin/env python3
"""kiln fixture generator: TAESD (diffusers `AutoencoderTiny`) and tiled-VAE references (issue 24).

Run by hand only (never by CI), with the reference venv of models/make_sd15_fixtures.py:

    .venv-ref/bin/python models/make_sd15_vae_fixtures.py --tiny          # committed fixtures (seconds)
    .venv-ref/bin/python models/make_sd15_vae_fixtures.py --full DIR      # full-size random VAE + TAESD (~335 MB, not committed)

--tiny writes
  models/fixtures/taesd-tiny/config.json, diffusion_pytorch_model.safetensors
      a tiny random AutoencoderTiny (16 channels, fewer blocks than TAESD), weights stored as fp16 (the
      values the references were computed with, upcast to fp32), laid out as madebyollin/taesd's folder
  models/fixtures/taesd-tiny/refs.safetensors
      decode_in / decode_out:   AutoencoderTiny.decode(decode_in).sample
      encode_out:               AutoencoderTiny.encode(decode_out).latents  (the decode output is the input)
      pipeline_image:           StableDiffusionPipeline(sd15-tiny, vae=this TAESD), DDIM 4 steps, output_type="pt"
                                (image in [0, 1]), started from sd15-tiny/refs/pipeline_ddim4.safetensors' init_noise
  models/fixtures/sd15-tiny/refs/vae_tiling.safetensors
      the sd15-tiny VAE with enable_tiling() and tile_sample_min_size = 64, tile_latent_min_size = 8 (the
      config's 128 / 16 would need a ~0.5 MB reference image to span several tiles):
      decode_in / decode_out:   vae.decode(decode_in).sample, latent 10 x 13 (2 x 3 tiles, the last column 1 latent wide)
      encode_mean / encode_logvar: vae.encode(decode_out).latent_dist (3 x 2 tiles of the 80 x 104 image)
      decode_untiled:           not stored; the Rust test checks that it differs from the tiled result
      metadata 'tile_params': diffusers' tile sizes for the sd15-tiny config and for SD 1.5's
Every safetensors file carries its description in the metadata key 'how'.

--full DIR writes DIR/vae/ (SD 1.5's AutoencoderKL config, random weights, fp32) and DIR/taesd/ (madebyollin/taesd's
published config, random weights) for `cargo run --release --example vae_bench`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "models" / "fixtures"
SEED = 2424

# madebyollin/taesd config.json (the published one; = AutoencoderTiny's defaults).
TAESD = {
    "_class_name": "AutoencoderTiny",
    "act_fn": "relu",
    "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64],
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3],
    "out_channels": 3,
    "scaling_factor": 1.0,
    "upsampling_scaling_factor": 2,
}

TAESD_TINY = dict(TAESD, decoder_block_out_channels=[16] * 4, encoder_block_out_channels=[16] * 4,
                  num_decoder_blocks=[2, 2, 2, 1], num_encoder_blocks=[1, 2, 2, 2])


def sd15_script():
    spec = importlib.util.spec_from_file_location("make_sd15_fixtures", REPO / "models" / "make_sd15_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def save(tensors: dict, path: Path, how: str, **meta) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), metadata={"how": how, **meta})
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def random_taesd(cfg: dict, seed: int):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    kw = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return AutoencoderTiny(**kw).eval()


def write_taesd_tiny(seed: int) -> None:
    from diffusers import AutoencoderTiny, DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    out = FIX / "taesd-tiny"
    out.mkdir(parents=True, exist_ok=True)
    m = random_taesd(TAESD_TINY, seed)
    m.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    # Reload in fp32 from disk: the references are of the committed (fp16-rounded) weights.
    m = AutoencoderTiny.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in m.parameters())

    g = torch.Generator().manual_seed(seed + 1)
    # Latents of SD's scale (std ~1) times 2, so that tanh(x / 3) * 3 clamps some of them.
    decode_in = torch.randn(1, 4, 6, 10, generator=g) * 2.0
    with torch.no_grad():
        decode_out = m.decode(decode_in).sample
        encode_out = m.encode(decode_out).latents

        sd = FIX / "sd15-tiny"
        ref = load_file(str(sd / "refs" / "pipeline_ddim4.safetensors"))
        pipe = StableDiffusionPipeline.from_pretrained(str(sd), vae=m, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        sd15 = sd15_script()
        prompt = sd15.PROMPT if hasattr(sd15, "PROMPT") else "a photograph of an astronaut riding a horse"
        noise = ref["init_noise"]
        image = pipe(prompt, num_inference_steps=4, guidance_scale=7.5, latents=noise.clone(),
                     height=noise.shape[2] * 8, width=noise.shape[3] * 8, output_type="pt").images
        lat = pipe(prompt, num_inference_steps=4, guidance_scale=7.5, latents=noise.clone(),
                   height=noise.shape[2] * 8, width=noise.shape[3] * 8, output_type="latent").images
        want = ref["final_latents"]
        d = (lat - want).abs().max().item()
        assert d <= 1e-5 * want.abs().max().item(), f"pipeline latents differ from pipeline_ddim4 by {d}"
    how = (f"AutoencoderTiny(**config.json) with torch.manual_seed({seed}) default init, saved as fp16, reloaded "
           f"with torch_dtype=float32. decode_in = randn(1,4,6,10, Generator().manual_seed({seed + 1})) * 2; "
           "decode_out = m.decode(decode_in).sample; encode_out = m.encode(decode_out).latents; pipeline_image = "
           "StableDiffusionPipeline.from_pretrained(sd15-tiny, vae=m) with DDIMScheduler.from_config, prompt "
           f"{prompt!r}, 4 steps, guidance 7.5, latents = sd15-tiny/refs/pipeline_ddim4 init_noise, "
           "output_type='pt' (in [0, 1]); its latents equal pipeline_ddim4's final_latents.")
    save({"decode_in": decode_in, "decode_out": decode_out, "encode_out": encode_out, "pipeline_image": image},
         out / "refs.safetensors", how)


def tile_params(vae) -> dict:
    """diffusers' derived tile numbers (autoencoder_kl.py tiled_decode / _tiled_encode)."""
    s, l, f = vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor
    return {"tile_sample_min_size": s, "tile_latent_min_size": l,
            "decode": {"overlap_size": int(l * (1 - f)), "blend_extent": int(s * f), "row_limit": s - int(s * f)},
            "encode": {"overlap_size": int(s * (1 - f)), "blend_extent": int(l * f), "row_limit": l - int(l * f)}}


def write_tiling(seed: int) -> None:
    from diffusers import AutoencoderKL

    sd15 = sd15_script()
    vae = AutoencoderKL.from_pretrained(str(FIX / "sd15-tiny" / "vae")).eval()
    params = {"sd15-tiny": tile_params(vae),
              "sd15": tile_params(AutoencoderKL(**{k: v for k, v in sd15.SD15_VAE.items() if not k.startswith("_")}))}
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = 64, 8
    g = torch.Generator().manual_seed(seed + 2)
    decode_in = torch.randn(1, 4, 10, 13, generator=g)
    with torch.no_grad():
        decode_out = vae.decode(decode_in).sample
        dist = vae.encode(decode_out).latent_dist
        vae.disable_tiling()
        untiled = vae.decode(decode_in).sample
    print("tiled vs untiled decode max|diff|", (decode_out - untiled).abs().max().item())
    how = ("sd15-tiny/vae (AutoencoderKL.from_pretrained), vae.enable_tiling(); vae.tile_sample_min_size = 64; "
           f"vae.tile_latent_min_size = 8. decode_in = randn(1,4,10,13, Generator().manual_seed({seed + 2})); "
           "decode_out = vae.decode(decode_in).sample (tiled: latent larger than 8); d = vae.encode(decode_out)"
           ".latent_dist (tiled: image larger than 64); encode_mean = d.mean, encode_logvar = d.logvar. "
           "tile_params (metadata): diffusers' tile numbers for the sd15-tiny config and SD 1.5's, untouched.")
    save({"decode_in": decode_in, "decode_out": decode_out, "encode_mean": dist.mean, "encode_logvar": dist.logvar},
         FIX / "sd15-tiny" / "refs" / "vae_tiling.safetensors", how, tile_params=json.dumps(params))


def write_full(out: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    sd15 = sd15_script()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**{k: v for k, v in sd15.SD15_VAE.items() if not k.startswith("_")})
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    random_taesd(TAESD, seed).save_pretrained(str(out / "taesd"), safe_serialization=True)
    print(f"wrote {out}/vae and {out}/taesd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--full", type=Path)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.tiny:
        write_taesd_tiny(a.seed)
        write_tiling(a.seed)
    if a.full:
        write_full(a.full, a.seed)
    if not (a.tiny or a.full):
        ap.print_help()


if __name__ == "__main__":
    main()
