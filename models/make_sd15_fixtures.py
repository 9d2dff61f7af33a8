#!/usr/bin/env python3
"""kiln fixture generator: Stable Diffusion 1.5 test models, reference tensors and key manifests.

Run by hand only (never by CI).  Needs a Python venv with the reference stack:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch diffusers transformers safetensors accelerate scipy numpy pillow
    .venv-ref/bin/pip install --no-deps open-clip-torch   # only its bpe_simple_vocab_16e6.txt.gz is read
    .venv-ref/bin/python models/make_sd15_fixtures.py --tiny          # -> models/fixtures/sd15-tiny/ (committed)
    .venv-ref/bin/python models/make_sd15_fixtures.py --manifests     # -> models/manifests/ (committed)
    .venv-ref/bin/python models/make_sd15_fixtures.py --full          # -> .cache/sd15-random/ (~8.6 GB, never committed)

No model hub is needed (or reachable): the published SD 1.5 component configs are written out
below by hand, weights are random under a fixed seed, and the CLIP BPE vocabulary is rebuilt from
open_clip's bpe_simple_vocab_16e6.txt.gz (the same merges file OpenAI's CLIP ships).  Set
CLIP_BPE_GZ=/path/to/bpe_simple_vocab_16e6.txt.gz to use another copy.

--tiny writes (all float weights rounded to fp16-representable values first, so the fp32 folder and
the fp16 single files hold exactly the same numbers):
  model_index.json, scheduler/scheduler_config.json (PNDM, SD 1.5 settings)
  tokenizer/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json}   (no tokenizer.json)
  text_encoder/{config.json,model.safetensors}   legacy `text_model.*` names + int64 position_ids
  unet/{config.json,diffusion_pytorch_model.safetensors}
  vae/{config.json,diffusion_pytorch_model.safetensors}
  sd15-tiny-fp16.safetensors   CompVis/ldm single file (model.diffusion_model.*, first_stage_model.*,
                               cond_stage_model.transformer.text_model.*, + ldm schedule buffers and
                               model_ema.{decay,num_updates} that loaders must ignore)
  sd15-tiny-fp16.ckpt          same dict as a torch.save zip pickle {"state_dict": ..., "global_step": 0}
                               (only with --ckpt: it does not fit the repo size budget, see README.json)
  refs/                        reference tensors computed with diffusers/transformers (fp32); every
                               file is described in refs/README.json, scheduler math in schedulers.json
  and (issue 6; skip with --no-more-refs; README.json is not touched, these are described in
  refs/README_more.json and in each safetensors file's metadata key "how"):
  refs/schedulers_more.json    Euler a, Heun, LMS, DPM++ 2M (+ Karras, + SDE Karras), UniPC, DDPM, LCM, DDIM eta=0.5:
                               timesteps/sigmas for 1,2,4,8,20 steps, resolved configs, host-math step checks
                               with fixed eps and injected noise
  refs/pipeline_<sampler>4.safetensors   4-step txt2img loops (euler_a, dpmpp_2m, dpmpp_2m_karras,
                               dpmpp_2m_sde_karras, unipc, lms, heun), injected per-step noise as noise_step{i}
  refs/img2img.safetensors + img2img_input.png   StableDiffusionImg2ImgPipeline, DDIM 4 steps, strength 0.75/0.5
                               (+ 0.75 with the VAE latent mean), injected VAE-sample and noise tensors
  refs/inpaint_{base,9ch}.safetensors + inpaint_mask.png (L, white = repaint) + inpaint_mask_rgba.png (OpenAI
                               convention: transparent = repaint)   StableDiffusionInpaintPipeline, strength 1, DDIM 4
  unet/diffusion_pytorch_model.bf16.safetensors   the tiny UNet's weights cast to bfloat16 (diffusers' bf16 variant)
  refs/img2img_sigmas.safetensors   img2img (strength 0.6, 8 steps) with DPM++ 2M Karras and Euler Karras: the start
                               is noised at the scheduler's own sigma
  refs/clip_skip.safetensors   prompt embeddings with diffusers clip_skip=1 (= A1111/kiln clip_skip 2) and a 4-step
                               DDIM txt2img loop using them
  ../sd15-tiny-inpaint/        9-channel tiny inpainting UNet (unet/ in fp16, scheduler/, model_index.json only;
                               text_encoder/tokenizer/vae are sd15-tiny's)
--more-refs DIR rewrites only those issue-6 files from an existing tiny folder (loaded from disk), then --verify.
--full writes the full-size random model (diffusers folder + sd15-random.safetensors (ldm, fp32) +
  sd15-random-fp16.safetensors) for key-coverage and benchmark runs.  Add --refs for reference tensors.
  For GPU benchmark machines: --device cuda (init there), --no-fp32-file (only the sdcpp CPU row reads
  the f32 ldm file), --no-reload-check, --threads N.
--manifests writes, for the FULL-size architecture (built on the meta device, no memory used), every
  key with shape and dtype of each real checkpoint layout: sd15-diffusers-{text_encoder,unet,vae}.json
  and sd15-ldm.json.

--verify DIR recomputes every reference in DIR/refs from the files on disk (folder via
from_pretrained, single file via from_single_file) and checks max|diff| <= 1e-6; --tiny runs it at the end.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# Published SD 1.5 configs (diffusers layout of runwayml/stable-diffusion-v1-5), by hand.
# --------------------------------------------------------------------------------------
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,  # legacy diffusers name: number of heads in SD 1.x
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json of SD 1.5 = text half of openai/clip-vit-large-patch14
SD15_CLIP = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|startoftext|>",
    "do_lower_case": True,
    "eos_token": "<|endoftext|>",
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}

SD15_SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


# --------------------------------------------------------------------------------------
# Tiny configs: same block types, same head count, same group count, same VAE depth
# (4 levels -> latent/image factor 8), same CLIP layout and vocabulary; only sizes shrink.
# --------------------------------------------------------------------------------------
def tiny_configs(unet_layers: int, vae_layers: int) -> tuple[dict, dict, dict]:
    unet = dict(SD15_UNET)
    unet.update({
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": unet_layers,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "sample_size": 16,
    })
    vae = dict(SD15_VAE)
    vae.update({
        "block_out_channels": [32, 32, 32, 32],
        "layers_per_block": vae_layers,
        "sample_size": 128,
    })
    clip = dict(SD15_CLIP)
    clip.update({
        "hidden_size": 32,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    })
    return unet, vae, clip


PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = ""
NEGATIVE2 = "blurry, low quality"
GUIDANCE = 7.5
LAT_H, LAT_W = 16, 12  # tiny refs: non-square on purpose (image 128 x 96)

TOKENIZER_PROMPTS = [
    PROMPT,
    "a photo of a cat",
    "Hello, world!!! (test) [x] {y}",
    "A MiXeD CaSe PrOmPt With CAPITALS and lowercase",
    "1234567 3.14 2nd 100%",
    "café naïve Ünïcödé",
    "一只猫坐在桌子上，東京タワーの写真",
    "a cat 🐱 wearing a 🎩, thumbs up 👍🏽",
    "  extra   spaces\n\nnew\nlines\tand\ttabs  ",
    "don't it's we'll I'M YOU'RE",
    "&amp; <b>bold</b> &lt;tag&gt;",
    "",
    "masterpiece, best quality, ((ultra-detailed)), 8k, highres, [lowres:0.5], hyphen-ated under_score a/b",
    "<|startoftext|>literal special tokens<|endoftext|>",
    ("a very long prompt describing an extremely detailed fantasy landscape with towering mountains, "
     "deep green valleys, a winding silver river, ancient stone castles on every hill, dragons flying "
     "through golden clouds at sunset, tiny villages with warm glowing windows, knights on horseback, "
     "wizards in tall hats, market stalls full of colourful fruit, and a huge full moon rising slowly "
     "over the distant snowy peaks while birds sing, children play by the fountain, merchants shout their "
     "prices, and an old bard tells stories of heroes, battles, treasure and lost kingdoms"),
]


def model_index(diffusers_version: str) -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def strip(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------
# Tokenizer files from open_clip's BPE merges (same construction as OpenAI's CLIP).
# --------------------------------------------------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_bpe_gz() -> Path:
    env = os.environ.get("CLIP_BPE_GZ")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open_clip not found: pip install --no-deps open-clip-torch (only bpe_simple_vocab_16e6.txt.gz is "
                 "used), or set CLIP_BPE_GZ=/path/to/bpe_simple_vocab_16e6.txt.gz")
    p = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not p.exists():
        sys.exit(f"{p} missing")
    return p


def clip_merges() -> list[str]:
    """The 48894 merges, as in OpenAI's simple_tokenizer: from open_clip's BPE file, or where
    neither it nor CLIP_BPE_GZ is there (the GPU machine: benches/gpu/run.sh carries no
    open_clip), from the committed tiny fixture's merges.txt, which this script wrote from the
    same file (checked equal, all 48894 lines)."""
    committed = Path(__file__).resolve().parent / "fixtures/sd15-tiny/tokenizer/merges.txt"
    if not os.environ.get("CLIP_BPE_GZ") and importlib.util.find_spec("open_clip") is None and committed.exists():
        return committed.read_text(encoding="utf-8").split("\n")[1:-1]
    lines = gzip.open(find_bpe_gz()).read().decode("utf-8").split("\n")
    return lines[1: 49152 - 256 - 2 + 1]


def write_tokenizer(out: Path, with_tokenizer_json: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(SD15_TOKENIZER_CONFIG, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SD15_SPECIAL_TOKENS, indent=2) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(out))
    if with_tokenizer_json:  # HF `tokenizers` format; skipped for the committed tiny fixture (size)
        tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    ids = tok("a photo of a cat").input_ids
    expect = [49406, 320, 1125, 539, 320, 2368, 49407]  # the real SD 1.5 / CLIP ViT-L/14 tokenizer's ids
    if ids != expect:
        sys.exit(f"tokenizer self-check failed: {ids} != {expect}")


# --------------------------------------------------------------------------------------
# diffusers -> CompVis/ldm key mapping (own code; verified by round trip through
# diffusers.loaders.single_file_utils, which converts ldm -> diffusers).
# --------------------------------------------------------------------------------------
UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
               ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _sub(rest: str, table) -> str:
    for a, b in table:
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    return rest


def unet_key_to_ldm(k: str, cfg: dict) -> str:
    L = cfg["layers_per_block"]
    p = k.split(".")
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for a, b in simple.items():
        if k.startswith(a + "."):
            return b + k[len(a):]
    if p[0] == "down_blocks":
        i, kind = int(p[1]), p[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.*
            return f"input_blocks.{(L + 1) * (i + 1)}.0.op." + ".".join(p[5:])
        j, rest = int(p[3]), ".".join(p[4:])
        idx = (L + 1) * i + j + 1
        return f"input_blocks.{idx}.0.{_sub(rest, UNET_RESNET)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if p[0] == "mid_block":
        j, rest = int(p[2]), ".".join(p[3:])
        return f"middle_block.{2 * j}.{_sub(rest, UNET_RESNET)}" if p[1] == "resnets" else f"middle_block.1.{rest}"
    if p[0] == "up_blocks":
        i, kind = int(p[1]), p[2]
        has_attn = cfg["up_block_types"][i].startswith("CrossAttn")
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv.*
            return f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}." + ".".join(p[4:])
        j, rest = int(p[3]), ".".join(p[4:])
        idx = (L + 1) * i + j
        return f"output_blocks.{idx}.0.{_sub(rest, UNET_RESNET)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    raise KeyError(k)


def vae_key_to_ldm(k: str, cfg: dict) -> str:
    n = len(cfg["block_out_channels"])
    p = k.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return k
    part, rest = p[0], p[1:]  # encoder / decoder
    if rest[0] in ("conv_in", "conv_out"):
        return k
    if rest[0] == "conv_norm_out":
        return f"{part}.norm_out." + ".".join(rest[1:])
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{part}.mid.block_{int(rest[2]) + 1}." + _sub(".".join(rest[3:]), [("conv_shortcut", "nin_shortcut")])
        return f"{part}.mid.attn_1." + _sub(".".join(rest[3:]), VAE_ATTN)
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        level = i if rest[0] == "down_blocks" else n - 1 - i  # ldm decoder levels are numbered bottom-up
        name = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] == "resnets":
            return f"{part}.{name}.{level}.block.{rest[3]}." + _sub(".".join(rest[4:]), [("conv_shortcut", "nin_shortcut")])
        sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
        return f"{part}.{name}.{level}.{sampler}." + ".".join(rest[4:])
    raise KeyError(k)


def clip_legacy_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights under the key names the published SD 1.5 files use.

    Recent transformers may name them `embeddings.*`, `encoder.*`, `final_layer_norm.*` and no longer
    persist position_ids; the SD 1.5 text_encoder/model.safetensors (written by transformers 4.x) and
    every original single-file checkpoint use `text_model.embeddings.*` etc. and carry the int64 buffer
    `text_model.embeddings.position_ids` [1,77].  Loaders should accept and ignore that buffer.
    """
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in text_encoder.state_dict().items()}
    npos = text_encoder.config.max_position_embeddings
    sd.setdefault("text_model.embeddings.position_ids", torch.arange(npos, dtype=torch.int64)[None])
    return sd


def ldm_schedule_buffers() -> dict[str, torch.Tensor]:
    """The buffers CompVis' ldm.models.diffusion.ddpm.DDPM.register_schedule stores in every SD 1.x
    checkpoint (linear_start=0.00085, linear_end=0.012, 1000 steps, v_posterior=0), computed exactly as
    there: float64 numpy, then torch.tensor(..., dtype=float32)."""
    betas = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64, device="cpu") ** 2).numpy()
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }
    return {k: torch.tensor(v, dtype=torch.float32, device="cpu") for k, v in bufs.items()}


def ldm_ignored_keys(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Non-weight keys of v1-5-pruned-emaonly: schedule buffers + LitEma's decay (f32) / num_updates (i32)."""
    out = {k: v.to(dtype) for k, v in ldm_schedule_buffers().items()}
    out["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32, device="cpu").to(dtype)
    out["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32, device="cpu")
    return out


def to_ldm_state_dict(unet, vae, text_encoder, dtype, with_ignored: bool = True) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    ucfg, vcfg = dict(unet.config), dict(vae.config)
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + unet_key_to_ldm(k, ucfg)] = v
    for k, v in vae.state_dict().items():
        nk = vae_key_to_ldm(k, vcfg)
        if ".mid.attn_1." in nk and nk.endswith(".weight") and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)  # ldm uses 1x1 convs for the VAE attention projections
        out["first_stage_model." + nk] = v
    for k, v in clip_legacy_state_dict(text_encoder).items():
        out["cond_stage_model.transformer." + k] = v
    out = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in out.items()}
    if with_ignored:
        for k, v in ldm_ignored_keys(dtype).items():
            assert k not in out
            out[k] = v
    return out


def round_to_fp16_grid(*models) -> None:
    """Make every float weight exactly representable in fp16 (so fp16 files == fp32 files)."""
    with torch.no_grad():
        for m in models:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point():
                    t.data = t.data.half().float()


def save_text_encoder(text_encoder, out: Path) -> None:
    """config.json as transformers writes it; weights in the SD 1.5 (transformers 4.x) key layout."""
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in clip_legacy_state_dict(text_encoder).items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    back = CLIPTextModel.from_pretrained(str(out)).eval()  # transformers maps the legacy names back
    sd = text_encoder.state_dict()
    if any(not torch.equal(back.state_dict()[k], v) for k, v in sd.items()):
        raise SystemExit("text_encoder reload check failed")


def verify_ldm_round_trip(ldm: dict, unet, vae, text_encoder) -> str:
    """Map the ldm dict back with diffusers' own ldm->diffusers converters and compare exactly.
    Works on real and on meta tensors (meta: key sets and shapes only)."""
    from diffusers.loaders import single_file_utils as sfu

    meta = next(iter(ldm.values())).device.type == "meta"
    back_unet = sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    back_vae = sfu.convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    back_clip = sfu.convert_ldm_clip_checkpoint(ldm)
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # newer transformers: no prefix
        back_clip = {k[len("text_model."):]: v for k, v in back_clip.items() if k.startswith("text_model.")}
    for name, model, back in (("unet", unet, back_unet), ("vae", vae, back_vae), ("text_encoder", text_encoder, back_clip)):
        sd = model.state_dict()
        missing = set(sd) - set(back)
        if missing:
            raise SystemExit(f"round trip {name}: {len(missing)} keys missing, e.g. {sorted(missing)[:5]}")
        extra = set(back) - set(sd) - {"embeddings.position_ids", "text_model.embeddings.position_ids"}
        if extra:
            raise SystemExit(f"round trip {name}: {len(extra)} unexpected keys, e.g. {sorted(extra)[:5]}")
        for k, v in sd.items():
            w = back[k]
            if w.numel() != v.numel():
                raise SystemExit(f"round trip {name}: {k} has {tuple(w.shape)} != {tuple(v.shape)}")
            w = w.reshape(v.shape)
            if not meta and not torch.equal(w.to(v.dtype), v):
                raise SystemExit(f"round trip {name}: tensor {k} differs")
    kind = sfu.infer_diffusers_model_type(ldm)
    print(f"  ldm round trip OK ({'shapes' if meta else 'values'}; diffusers single_file_utils converters; "
          f"model type detected: {kind})")
    return kind


def load_single_file_pipe(path: Path, config_dir: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(str(path), config=str(config_dir), local_files_only=True,
                                                    torch_dtype=torch.float32, safety_checker=None,
                                                    requires_safety_checker=False)


def check_single_file(path: Path, config_dir: Path, unet, vae, text_encoder) -> None:
    """Open the single file with diffusers' own loader (from_single_file, offline, configs from
    config_dir) and compare every weight with the models it was written from."""
    pipe = load_single_file_pipe(path, config_dir)
    for name, model, loaded in (("unet", unet, pipe.unet), ("vae", vae, pipe.vae), ("text_encoder", text_encoder, pipe.text_encoder)):
        a, b = model.state_dict(), loaded.state_dict()
        bad = [k for k, v in a.items() if k not in b or not torch.equal(b[k].to(v.dtype), v)]
        if bad:
            raise SystemExit(f"from_single_file {name}: {len(bad)} tensors differ, e.g. {bad[:3]}")
    print(f"  diffusers from_single_file({path.name}) reproduces every weight")
    del pipe


def check_ckpt(path: Path, ldm: dict) -> None:
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    sd = obj["state_dict"]
    if set(sd) != set(ldm) or any(not torch.equal(sd[k], v) or sd[k].dtype != v.dtype for k, v in ldm.items()):
        raise SystemExit(f"{path} does not reproduce the ldm dict")
    sd2 = load_single_file_checkpoint(str(path), local_files_only=True)  # diffusers' reader (unwraps "state_dict")
    if set(sd2) != set(ldm):
        raise SystemExit(f"diffusers load_single_file_checkpoint({path.name}) key set differs")
    print(f"  {path.name}: torch.load and diffusers' single-file reader reproduce every tensor")


# --------------------------------------------------------------------------------------
# Reference tensors
# --------------------------------------------------------------------------------------
def tokens(tok, text):
    return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def tokenizer_refs(tok) -> list[dict]:
    rows = []
    for p in TOKENIZER_PROMPTS:
        padded = tok(p, padding="max_length", max_length=77, truncation=True).input_ids
        unpadded = tok(p).input_ids  # no padding, no truncation (> 77 ids for the long prompt)
        rows.append({"prompt": p, "input_ids": padded, "ids_unpadded": unpadded,
                     "tokens_unpadded": tok.convert_ids_to_tokens(unpadded)})
    return rows


def pixels_like_diffusers(pipe, image: torch.Tensor) -> np.ndarray:
    """uint8 NHWC exactly as StableDiffusionPipeline(output_type="pil") makes them:
    VaeImageProcessor.postprocess -> denormalize (x/2+0.5).clamp(0,1) -> NHWC float numpy ->
    numpy_to_pil: (x*255).round().astype(uint8)."""
    from diffusers.image_processor import VaeImageProcessor

    ip = pipe.image_processor
    arr = ip.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
    pix = (arr * 255).round().astype("uint8")
    pil = VaeImageProcessor.numpy_to_pil(arr)
    assert all(np.array_equal(np.asarray(im), pix[i]) for i, im in enumerate(pil))
    manual = ((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy() * 255).round().astype("uint8")
    assert np.array_equal(manual, pix), "manual postprocess differs from diffusers'"
    return pix


PIPE_RUNS_SPEC = [
    # file stem (pipeline_<name><steps><suffix>), scheduler class name, negative prompt, num_images_per_prompt
    ("ddim", "", "DDIMScheduler", NEGATIVE, 1),
    ("pndm", "", "PNDMScheduler", NEGATIVE, 1),
    ("euler", "", "EulerDiscreteScheduler", NEGATIVE, 1),
    ("ddim", "_neg", "DDIMScheduler", NEGATIVE2, 1),
    ("euler", "_n2", "EulerDiscreteScheduler", NEGATIVE, 2),
]


def pipe_runs(steps: int) -> list[tuple[str, str, str, int]]:
    return [(f"pipeline_{name}{steps}{suffix}", cls, neg, n) for name, suffix, cls, neg, n in PIPE_RUNS_SPEC]


def run_pipeline(pipe, sched_cls: str, negative: str, n: int, noise: torch.Tensor, steps: int, collect: bool = True):
    import diffusers

    base_cfg = json.loads(json.dumps(dict(pipe.scheduler.config), default=str))
    pipe.scheduler = getattr(diffusers, sched_cls).from_config(SD15_SCHEDULER_RESOLVED or base_cfg)
    per_step = {}

    def cb(p, i, t, kw):
        per_step[f"latents_after_step{i}"] = kw["latents"].detach().clone()
        return kw

    h, w = noise.shape[2] * pipe.vae_scale_factor, noise.shape[3] * pipe.vae_scale_factor
    with torch.inference_mode():
        lat = pipe(PROMPT, negative_prompt=negative, height=h, width=w, num_inference_steps=steps,
                   guidance_scale=GUIDANCE, num_images_per_prompt=n, latents=noise.clone(), output_type="latent",
                   callback_on_step_end=cb if collect else None,
                   callback_on_step_end_tensor_inputs=["latents"]).images
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    return lat, image, per_step, pipe.scheduler


SD15_SCHEDULER_RESOLVED: dict | None = None  # scheduler_config.json as written (set in main)


def write_refs(out: Path, pipe, steps: int, seed: int, versions: dict) -> None:
    from safetensors.torch import save_file

    refs = out / "refs"
    refs.mkdir(exist_ok=True)
    tok, te, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    sf = vae.config.scaling_factor
    LH, LW, D = LAT_H, LAT_W, te.config.hidden_size
    IH, IW = LH * pipe.vae_scale_factor, LW * pipe.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    readme: dict = {
        "about": "Reference tensors for kiln's parity tests, written by models/make_sd15_fixtures.py --tiny from the "
                 "fp32 diffusers folder next to this directory (random weights rounded to the fp16 grid). All float "
                 "tensors are float32 (CPU), NCHW. Inputs drawn with torch.Generator().manual_seed(seed) in the order "
                 "listed. Recompute/verify: models/make_sd15_fixtures.py --verify <folder>.",
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed, "guidance_scale": GUIDANCE, "steps": steps,
        "versions": versions, "files": {},
    }

    # 0. tokenizer
    rows = tokenizer_refs(tok)
    (refs / "tokenizer.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    readme["files"]["tokenizer.json"] = (
        f"list of {{prompt, input_ids, ids_unpadded, tokens_unpadded}}: input_ids = tokenizer(prompt, "
        f"padding='max_length', max_length=77, truncation=True).input_ids; ids_unpadded = tokenizer(prompt).input_ids "
        f"(no padding, no truncation: the long prompt gives > 77 ids); tokens_unpadded = convert_ids_to_tokens(ids_unpadded). "
        f"tokenizer = transformers.{type(tok).__name__}.from_pretrained(<folder>/tokenizer) (vocab.json + merges.txt; "
        f"no tokenizer.json in the folder). BOS 49406, EOS = PAD 49407. Note this is HF's CLIP tokenizer behaviour "
        f"(what diffusers uses), not OpenAI's simple_tokenizer: no ftfy/html.unescape, so '&amp;' stays literal.")

    with torch.inference_mode():
        # 1. text encoder
        ids, uids = tokens(tok, PROMPT), tokens(tok, NEGATIVE)
        emb, uemb = te(ids)[0], te(uids)[0]
        save_file({"prompt_ids": ids.contiguous(), "uncond_ids": uids.contiguous(),
                   "prompt_embeds": emb.contiguous(), "uncond_embeds": uemb.contiguous()},
                  str(refs / "text_encoder.safetensors"))
        readme["files"]["text_encoder.safetensors"] = (
            f"prompt_ids/uncond_ids int64 [1,77] = tokenizer({PROMPT!r} / '', padding='max_length', max_length=77, "
            f"truncation=True, return_tensors='pt').input_ids; prompt_embeds/uncond_embeds [1,77,{D}] = "
            f"text_encoder(ids)[0] (CLIPTextModel last_hidden_state, after final_layer_norm, causal mask, quick_gelu)")

        # 2. one UNet forward (CFG batch: [uncond, cond])
        sample = torch.randn(2, unet.config.in_channels, LAT_H, LAT_W, generator=g)
        t = torch.tensor([981], dtype=torch.int64)
        ctx = torch.cat([uemb, emb])
        eps = unet(sample, t, encoder_hidden_states=ctx).sample
        save_file({"sample": sample, "timestep": t, "encoder_hidden_states": ctx.contiguous(), "out": eps.contiguous()},
                  str(refs / "unet.safetensors"))
        readme["files"]["unet.safetensors"] = (
            f"sample = torch.randn(2,4,{LH},{LW}, generator=g); timestep = int64 [1] = 981 (broadcast over the batch); "
            f"encoder_hidden_states = cat([uncond_embeds, prompt_embeds]) [2,77,{D}]; "
            "out = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states).sample")

        # 3. VAE decode / encode
        z = torch.randn(1, vae.config.latent_channels, LAT_H, LAT_W, generator=g)
        img = vae.decode(z).sample
        x = torch.rand(1, 3, LAT_H * pipe.vae_scale_factor, LAT_W * pipe.vae_scale_factor, generator=g) * 2 - 1
        dist = vae.encode(x).latent_dist
        save_file({"decode_in": z, "decode_out": img.contiguous(), "encode_in": x,
                   "encode_mean": dist.mean.contiguous(), "encode_logvar": dist.logvar.contiguous()},
                  str(refs / "vae.safetensors"))
        readme["files"]["vae.safetensors"] = (
            f"decode_in = torch.randn(1,4,{LH},{LW}, generator=g); decode_out = vae.decode(decode_in).sample [1,3,{IH},{IW}] "
            f"(post_quant_conv included, no scaling: the pipeline divides latents by scaling_factor={sf} before this); "
            f"encode_in = torch.rand(1,3,{IH},{IW}, generator=g)*2-1; encode_mean/encode_logvar [1,4,{LH},{LW}] = "
            f"vae.encode(encode_in).latent_dist.mean/.logvar (quant_conv included; logvar clamped to [-30,20])")

    # 4. full pipelines from fixed initial noise
    noise1 = torch.randn(1, unet.config.in_channels, LAT_H, LAT_W, generator=g)
    noise2 = torch.randn(2, unet.config.in_channels, LAT_H, LAT_W, generator=g)
    for stem, cls, neg, n in pipe_runs(steps):
        noise = noise2 if n == 2 else noise1
        lat, image, per_step, sch = run_pipeline(pipe, cls, neg, n, noise, steps)
        pix = pixels_like_diffusers(pipe, image)
        # cross-check: the pipeline's own output_type="pil" gives the same pixels
        with torch.inference_mode():
            pil = pipe(PROMPT, negative_prompt=neg, height=noise.shape[2] * 8, width=noise.shape[3] * 8,
                       num_inference_steps=steps, guidance_scale=GUIDANCE, num_images_per_prompt=n,
                       latents=noise.clone(), output_type="pil").images
        if not all(np.array_equal(np.asarray(im), pix[i]) for i, im in enumerate(pil)):
            raise SystemExit(f"{stem}: pipeline(output_type='pil') pixels differ from the latent path")
        tensors = {"init_noise": noise, "timesteps": sch.timesteps.float(), "final_latents": lat,
                   "image": image, "pixels": torch.from_numpy(pix), **per_step}
        if cls == "EulerDiscreteScheduler":
            tensors["sigmas"] = sch.sigmas.float()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(refs / f"{stem}.safetensors"))
        resolved = {k: v for k, v in sch.config.items() if not k.startswith("_")}
        readme["files"][f"{stem}.safetensors"] = (
            f"pipe.scheduler = {cls}.from_config(scheduler/scheduler_config.json) (resolved config: "
            f"{json.dumps(resolved, default=str)}); pipe({PROMPT!r}, negative_prompt={neg!r}, height={IH}, width={IW}, "
            f"num_inference_steps={steps}, guidance_scale={GUIDANCE}, num_images_per_prompt={n}, latents=init_noise, "
            f"output_type='latent', callback_on_step_end=<stores latents after step i>) (eta=0, guidance_rescale=0). "
            f"init_noise = torch.randn({n},4,{LH},{LW}, generator=g) (the pipeline multiplies it by init_noise_sigma="
            f"{float(sch.init_noise_sigma):.6f}); timesteps = scheduler.timesteps as float32 "
            f"({len(sch.timesteps)} UNet evaluations"
            + (", PNDM with skip_prk_steps repeats the second timestep" if cls == "PNDMScheduler" else "")
            + "); latents_after_step{i} = latents after scheduler.step of loop iteration i; "
            + ("sigmas = scheduler.sigmas as float32 (len steps+1, last 0); " if cls == "EulerDiscreteScheduler" else "")
            + f"final_latents = pipeline output; image = vae.decode(final_latents / {sf}).sample (fp32, unclamped); "
            f"pixels = uint8 [{n},{IH},{IW},3] NHWC = ((image*0.5+0.5).clamp(0,1) -> permute to NHWC -> float32 numpy -> *255 -> np.round (half to even) "
            f"-> astype(uint8)), exactly VaeImageProcessor.postprocess + numpy_to_pil, checked equal to "
            f"pipe(..., output_type='pil').images")
        print(f"    {stem}: timesteps {sch.timesteps.tolist()}")

    # 5. scheduler tables + host-math step checks
    (refs / "schedulers.json").write_text(json.dumps(scheduler_refs(seed), indent=1) + "\n")
    readme["files"]["schedulers.json"] = "see the 'how' string of each entry inside the file"
    (refs / "README.json").write_text(json.dumps(readme, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"  refs written to {refs}")


def scheduler_refs(seed: int) -> dict:
    import diffusers

    cfg = {k: v for k, v in SD15_SCHEDULER.items() if not k.startswith("_")}
    res: dict = {"scheduler_config": cfg, "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__}}
    ref = diffusers.DDIMScheduler.from_config(cfg)
    res["alphas_cumprod"] = {"how": "DDIMScheduler.from_config(scheduler_config).alphas_cumprod (float32, 1000 values; "
                                    "betas = linspace(0.00085**0.5, 0.012**0.5, 1000, float32)**2)",
                             "values": ref.alphas_cumprod.tolist()}
    res["timesteps"] = []
    for cls in ("DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"):
        for n in (1, 2, 4, 10, 20, 50):
            s = getattr(diffusers, cls).from_config(cfg)
            s.set_timesteps(n)
            e = {"scheduler": cls, "num_inference_steps": n,
                 "how": f"s = {cls}.from_config(scheduler_config); s.set_timesteps({n}); timesteps = s.timesteps.tolist()"
                        + ("; sigmas = s.sigmas.tolist() (float32)" if cls == "EulerDiscreteScheduler" else "")
                        + "; init_noise_sigma = float(s.init_noise_sigma)",
                 "timestep_spacing": s.config.timestep_spacing,
                 "timesteps": s.timesteps.tolist(),
                 "init_noise_sigma": float(s.init_noise_sigma)}
            if cls == "EulerDiscreteScheduler":
                e["sigmas"] = s.sigmas.float().tolist()
            res["timesteps"].append(e)
    res["steps"] = []
    for cls in ("DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"):
        s = getattr(diffusers, cls).from_config(cfg)
        s.set_timesteps(4)
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(1, 4, 2, 2, generator=g) * s.init_noise_sigma
        n = len(s.timesteps)
        eps = [torch.randn(1, 4, 2, 2, generator=g) for _ in range(n)]
        sample = x.clone()
        prev, scaled = [], []
        for i, t in enumerate(s.timesteps):
            if cls == "EulerDiscreteScheduler":
                scaled.append(s.scale_model_input(sample, t).flatten().tolist())
            else:
                assert torch.equal(s.scale_model_input(sample, t), sample)
            sample = s.step(eps[i], t, sample, return_dict=True).prev_sample
            prev.append(sample.flatten().tolist())
        e = {"scheduler": cls, "num_inference_steps": 4, "timesteps": s.timesteps.tolist(),
             "how": (f"s = {cls}.from_config(scheduler_config); s.set_timesteps(4); g = torch.Generator().manual_seed({seed + 100}); "
                     f"x = torch.randn(1,4,2,2, generator=g) * s.init_noise_sigma ({float(s.init_noise_sigma)}); "
                     f"eps_i = torch.randn(1,4,2,2, generator=g) for i in range(len(s.timesteps)={n}); sample = x; "
                     f"for i, t in enumerate(s.timesteps): "
                     + ("scaled_i = s.scale_model_input(sample, t); " if cls == "EulerDiscreteScheduler" else "")
                     + "sample = s.step(eps_i, t, sample).prev_sample; prev_sample_i = sample. "
                     + ("DDIM: eta=0, no noise. " if cls == "DDIMScheduler" else "")
                     + ("PNDM (skip_prk_steps): PLMS multistep, keeps a history of eps; the second timestep repeats. "
                        if cls == "PNDMScheduler" else "")
                     + ("Euler: s_churn=0 so no noise is added; scale_model_input divides by sqrt(sigma^2+1). "
                        if cls == "EulerDiscreteScheduler" else "")
                     + "All lists are the flattened [1,4,2,2] tensors (row-major), float32."),
             "x": x.flatten().tolist(), "eps": [e_.flatten().tolist() for e_ in eps], "prev_sample": prev}
        if cls == "EulerDiscreteScheduler":
            e["scale_model_input"] = scaled
            e["sigmas"] = s.sigmas.float().tolist()
        res["steps"].append(e)
    return res


# --------------------------------------------------------------------------------------
# More references (issue 6): more schedulers, img2img, inpainting (4- and 9-channel UNet)
# --------------------------------------------------------------------------------------
# id, diffusers class, from_config kwargs, step kwargs, A1111 label
MORE_SCHEDULERS = [
    ("euler_a", "EulerAncestralDiscreteScheduler", {}, {}, "Euler a"),
    ("heun", "HeunDiscreteScheduler", {}, {}, "Heun"),
    ("lms", "LMSDiscreteScheduler", {}, {}, "LMS"),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {}, {}, "DPM++ 2M"),
    ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, {}, "DPM++ 2M Karras"),
    ("dpmpp_2m_sde_karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
     {}, "DPM++ 2M SDE Karras"),
    ("unipc", "UniPCMultistepScheduler", {}, {}, "UniPC"),
    ("ddpm", "DDPMScheduler", {}, {}, "DDPM"),
    ("lcm", "LCMScheduler", {}, {}, "LCM"),
    ("ddim_eta0.5", "DDIMScheduler", {}, {"eta": 0.5}, "DDIM (eta 0.5)"),
]
MORE_STOCHASTIC = {"euler_a", "dpmpp_2m_sde_karras", "ddpm", "lcm", "ddim_eta0.5"}
MORE_MULTISTEP = {"lms", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "unipc"}
MORE_TIMESTEP_COUNTS = (1, 2, 4, 8, 20)
# end-to-end 4-step loops on the tiny model: refs/pipeline_<id>4.safetensors
MORE_PIPE_IDS = ["euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "unipc", "lms", "heun"]
IMG2IMG_STRENGTHS = [("s075", 0.75, False), ("s050", 0.5, False), ("s075_mean", 0.75, True)]
MORE_STEPS = 4  # DDIM steps of the img2img / inpaint references


def _sched_spec(sid: str):
    for row in MORE_SCHEDULERS:
        if row[0] == sid:
            return row
    raise KeyError(sid)


def make_scheduler(sid: str):
    import diffusers

    _, cls, kw, _, _ = _sched_spec(sid)
    return getattr(diffusers, cls).from_config(SD15_SCHEDULER_RESOLVED or strip(SD15_SCHEDULER), **kw)


def resolved_config(s) -> dict:
    return {k: v for k, v in json.loads(json.dumps(dict(s.config), default=str)).items() if not k.startswith("_")}


class NoiseInjector:
    """Replace `randn_tensor` (diffusers.utils.torch_utils) as imported into the given module namespaces.

    Every call is answered with the next tensor of `replay` (shape checked) or, without replay, with
    torch.randn(shape, generator=<own generator>) (float32, CPU); `zeros_sites` answers zeros for calls from
    those modules instead (used for the VAE "mean" variant).  `draws` records (site, tensor) in call order."""

    def __init__(self, modules, generator=None, replay=None, zeros_sites=()):
        self.modules = modules
        self.g, self.replay, self.zeros_sites = generator, list(replay) if replay is not None else None, set(zeros_sites)
        self.draws: list[tuple[str, torch.Tensor]] = []
        self._saved = []

    def _make(self, site):
        def fake(shape, generator=None, device=None, dtype=None, layout=None):
            shape = tuple(shape)
            if self.replay is not None:
                if not self.replay:
                    raise RuntimeError(f"unexpected randn_tensor call from {site}")
                t = self.replay.pop(0)
                assert tuple(t.shape) == shape, (site, tuple(t.shape), shape)
            elif site in self.zeros_sites:
                t = torch.zeros(shape)
            elif self.g is None:
                raise RuntimeError(f"unexpected randn_tensor call from {site}")
            else:
                t = torch.randn(shape, generator=self.g)
            self.draws.append((site, t.clone()))
            return t.clone().to(device=device or "cpu", dtype=dtype or torch.float32)
        return fake

    def __enter__(self):
        import importlib

        for name in self.modules:
            m = importlib.import_module(name)
            if hasattr(m, "randn_tensor"):  # modules without it draw no noise (checked: no torch.randn either)
                self._saved.append((m, m.randn_tensor))
                m.randn_tensor = self._make(name.rsplit(".", 1)[-1])
        return self

    def __exit__(self, *exc):
        for m, f in self._saved:
            m.randn_tensor = f
        if exc[0] is None and self.replay:
            raise RuntimeError(f"{len(self.replay)} injected tensors not used")


def sched_module(s) -> str:
    return type(s).__module__


def more_step_check(sid: str, n: int, seed: int) -> dict:
    """Host-math step check: fixed x, fixed eps per loop iteration, fixed injected noise."""
    _, cls, kw, step_kw, label = _sched_spec(sid)
    s = make_scheduler(sid)
    s.set_timesteps(n)
    g = torch.Generator().manual_seed(seed + 200)
    x = torch.randn(1, 4, 2, 2, generator=g) * s.init_noise_sigma
    T = len(s.timesteps)
    eps = [torch.randn(1, 4, 2, 2, generator=g) for _ in range(T)]
    gn = torch.Generator().manual_seed(seed + 300)
    sample = x.clone()
    scaled, prev, noise = [], [], []
    for i, t in enumerate(s.timesteps):
        scaled.append(s.scale_model_input(sample, t).flatten().tolist())
        if "eta" in step_kw:  # DDIM: noise passed as variance_noise; randn_tensor must not be called
            nz = torch.randn(1, 4, 2, 2, generator=gn)
            with NoiseInjector([sched_module(s)]):
                sample = s.step(eps[i], t, sample, eta=step_kw["eta"], variance_noise=nz).prev_sample
            noise.append(nz.flatten().tolist())
        else:
            with NoiseInjector([sched_module(s)], generator=gn) as inj:
                sample = s.step(eps[i], t, sample).prev_sample
            assert len(inj.draws) <= 1
            noise.append(inj.draws[0][1].flatten().tolist() if inj.draws else None)
            if sid not in MORE_STOCHASTIC:
                assert not inj.draws, sid
        prev.append(sample.float().flatten().tolist())
    if "eta" in step_kw:
        how_noise = (f"noise_i = torch.randn(1,4,2,2, generator=torch.Generator().manual_seed({seed + 300})) drawn one per "
                     f"iteration and passed as s.step(eps_i, t, sample, eta={step_kw['eta']}, variance_noise=noise_i)")
    elif sid in MORE_STOCHASTIC:
        how_noise = (f"the scheduler's own noise draw (randn_tensor in {sched_module(s)}, i.e. step(generator=...)) is "
                     f"monkeypatched to return torch.randn(shape, generator=torch.Generator().manual_seed({seed + 300})) "
                     f"(one shared generator, drawn in call order); noise[i] = the tensor step i used, null where that "
                     f"step draws none")
    else:
        how_noise = "deterministic: step() draws no noise (noise[i] all null)"
    e = {"id": sid, "label": label, "scheduler": cls, "kwargs": kw, "step_kwargs": step_kw, "num_inference_steps": n,
         "timesteps": s.timesteps.tolist(),
         "how": (f"s = {cls}.from_config(scheduler_config{''.join(f', {k}={v!r}' for k, v in kw.items())}); s.set_timesteps({n}); "
                 f"g = torch.Generator().manual_seed({seed + 200}); x = torch.randn(1,4,2,2, generator=g) * s.init_noise_sigma "
                 f"({float(s.init_noise_sigma)}); eps_i = torch.randn(1,4,2,2, generator=g) for i in range(len(s.timesteps)={T}); "
                 f"sample = x; for i, t in enumerate(s.timesteps): scale_model_input[i] = s.scale_model_input(sample, t); "
                 f"sample = s.step(eps_i, t, sample{', eta=' + str(step_kw['eta']) + ', variance_noise=noise_i' if 'eta' in step_kw else ''})"
                 f".prev_sample; prev_sample[i] = sample. Noise: {how_noise}. "
                 "All tensors are flattened [1,4,2,2] (row-major) float32 lists."),
         "x": x.flatten().tolist(), "eps": [v.flatten().tolist() for v in eps], "noise": noise,
         "scale_model_input": scaled, "prev_sample": prev}
    if hasattr(s, "sigmas") and s.sigmas is not None:
        e["sigmas"] = s.sigmas.tolist()
    return e


def scheduler_more_refs(seed: int) -> dict:
    import diffusers

    res: dict = {"scheduler_config": SD15_SCHEDULER_RESOLVED or strip(SD15_SCHEDULER),
                 "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
                 "about": "More diffusers schedulers, each built with <Class>.from_config(scheduler_config, **kwargs) "
                          "so diffusers' own defaults apply (see resolved_config). 'timesteps': per scheduler and "
                          "num_inference_steps, s.set_timesteps(n) then s.timesteps / s.sigmas (where the class has "
                          "them; dtype as stored) / init_noise_sigma. 'steps': host-math step checks (see each 'how'). "
                          "'schedulers': id -> class, kwargs, A1111 label, resolved config, stochastic, order.",
                 "schedulers": {}, "timesteps": [], "steps": []}
    for sid, cls, kw, step_kw, label in MORE_SCHEDULERS:
        s = make_scheduler(sid)
        res["schedulers"][sid] = {"scheduler": cls, "kwargs": kw, "step_kwargs": step_kw, "label": label,
                                  "stochastic": sid in MORE_STOCHASTIC, "order": s.order,
                                  "resolved_config": resolved_config(s)}
        for n in MORE_TIMESTEP_COUNTS:
            s = make_scheduler(sid)
            e = {"id": sid, "scheduler": cls, "num_inference_steps": n}
            try:
                s.set_timesteps(n)
            except Exception as ex:  # noqa: BLE001  (recorded, not hidden)
                e["error"] = f"{type(ex).__name__}: {ex}"
                res["timesteps"].append(e)
                continue
            e["timesteps"] = s.timesteps.tolist()
            e["timesteps_dtype"] = str(s.timesteps.dtype).replace("torch.", "")
            if hasattr(s, "sigmas") and s.sigmas is not None:
                e["sigmas"] = s.sigmas.tolist()
                e["sigmas_dtype"] = str(s.sigmas.dtype).replace("torch.", "")
            e["init_noise_sigma"] = float(s.init_noise_sigma)
            res["timesteps"].append(e)
        for n in ((4, 8) if sid in MORE_MULTISTEP else (4,)):
            res["steps"].append(more_step_check(sid, n, seed))
    return res


PIPE_MODULES = {
    "txt2img": "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "img2img": "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
    "inpaint": "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint",
}
VAE_MODULE = "diffusers.models.autoencoders.vae"


def run_more_pipeline(pipe, sid: str, noise: torch.Tensor, steps: int, seed: int, replay=None):
    """txt2img with scheduler `sid`, latents=noise, injected per-step scheduler noise."""
    pipe.scheduler = make_scheduler(sid)
    per_step = {}

    def cb(p, i, t, kw):
        per_step[f"latents_after_step{i}"] = kw["latents"].detach().clone()
        return kw

    mods = [sched_module(pipe.scheduler), PIPE_MODULES["txt2img"]]
    with torch.inference_mode(), NoiseInjector(mods, generator=torch.Generator().manual_seed(seed + 500), replay=replay) as inj:
        lat = pipe(PROMPT, negative_prompt=NEGATIVE, height=noise.shape[2] * 8, width=noise.shape[3] * 8,
                   num_inference_steps=steps, guidance_scale=GUIDANCE, latents=noise.clone(), output_type="latent",
                   callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"]).images
    with torch.inference_mode():
        image = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    assert all(site == sched_module(pipe.scheduler).rsplit(".", 1)[-1] for site, _ in inj.draws)
    return lat, image, per_step, pipe.scheduler, [t for _, t in inj.draws]


def make_input_image(h: int, w: int):
    """Deterministic RGB test image: smooth gradients + a disc, a bar and a triangle (uint8 HWC)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 40 + 180 * xx / (w - 1)
    g = 30 + 200 * yy / (h - 1)
    b = 128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    img = np.stack([r, g, b], -1)
    disc = (yy - 0.35 * h) ** 2 + (xx - 0.6 * w) ** 2 < (0.18 * w) ** 2
    img[disc] = [230, 40, 50]
    bar = (yy > 0.7 * h) & (yy < 0.78 * h) & (xx > 0.1 * w)
    img[bar] = [20, 20, 120]
    tri = (yy > 0.45 * h) & (xx < 0.35 * w) & ((yy - 0.45 * h) > 1.2 * (xx - 0.05 * w) - 0.0 * h)
    img[tri] = [250, 230, 60]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_mask(h: int, w: int):
    """Binary uint8 mask (255 = repaint): an ellipse + a rectangle, edges NOT aligned to the 8-pixel latent grid."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ell = ((yy - 0.42 * h) / (0.22 * h)) ** 2 + ((xx - 0.55 * w) / (0.3 * w)) ** 2 < 1
    rect = (yy >= 93) & (yy < 115) & (xx >= 5) & (xx < 37)
    return np.where(ell | rect, 255, 0).astype(np.uint8)


def _save_png(arr: np.ndarray, path: Path, mode: str) -> None:
    from PIL import Image

    Image.fromarray(arr, mode=mode).save(str(path), format="PNG", optimize=False, compress_level=9)


def _components(pipe) -> dict:
    return {"vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer, "unet": pipe.unet,
            "scheduler": pipe.scheduler, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False}


def _ddim(pipe):
    import diffusers

    return diffusers.DDIMScheduler.from_config(SD15_SCHEDULER_RESOLVED or strip(SD15_SCHEDULER))


def run_img2img(pipe, pil_image, strength: float, seed: int, mean: bool, replay=None, scheduler=None,
                steps: int = MORE_STEPS, noise_seed: int | None = None) -> dict:
    """StableDiffusionImg2ImgPipeline with injected VAE-sample and start noise; DDIM unless `scheduler`."""
    from diffusers import StableDiffusionImg2ImgPipeline

    p = StableDiffusionImg2ImgPipeline(**{**_components(pipe), "scheduler": scheduler or _ddim(pipe)})
    p.set_progress_bar_config(disable=True)
    rec: dict = {}
    orig_add_noise = p.scheduler.add_noise

    def add_noise(original, noise, timesteps):
        out = orig_add_noise(original, noise, timesteps)
        rec.update(image_latents=original.clone(), noise=noise.clone(), latent_timestep=timesteps.clone(),
                   noised_latents=out.clone())
        return out

    p.scheduler.add_noise = add_noise
    per_step = {}

    def cb(_p, i, t, kw):
        per_step[f"latents_after_step{i}"] = kw["latents"].detach().clone()
        return kw

    mods = [VAE_MODULE, PIPE_MODULES["img2img"], sched_module(p.scheduler)]
    gen = torch.Generator().manual_seed(noise_seed if noise_seed is not None else seed + 600 + int(strength * 100))
    with torch.inference_mode(), NoiseInjector(mods, generator=gen, replay=replay, zeros_sites={"vae"} if mean else ()) as inj:
        lat = p(PROMPT, image=pil_image, strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE,
                negative_prompt=NEGATIVE, output_type="latent", callback_on_step_end=cb,
                callback_on_step_end_tensor_inputs=["latents"]).images
        image = p.vae.decode(lat / p.vae.config.scaling_factor).sample
        init_image = p.image_processor.preprocess(pil_image).float()
        dist = p.vae.encode(init_image).latent_dist
    sites = [s for s, _ in inj.draws]
    assert sites == ["vae", "pipeline_stable_diffusion_img2img"], sites
    out = {"init_image": init_image, "encode_mean": dist.mean, "encode_std": dist.std,
           "vae_sample_noise": inj.draws[0][1], "timesteps": p.scheduler.timesteps.float(),
           "timesteps_used": torch.tensor([float(t) for t in p.scheduler.timesteps[p.scheduler.timesteps.numel() - len(per_step):]]),
           **rec, "latent_timestep": rec["latent_timestep"].float(), **per_step, "final_latents": lat, "image": image,
           "pixels": torch.from_numpy(pixels_like_diffusers(p, image))}
    sf = p.vae.config.scaling_factor
    manual = sf * (dist.mean + dist.std * inj.draws[0][1])
    assert torch.equal(manual, rec["image_latents"]), "image_latents != sf*(mean+std*z)"
    assert torch.equal(rec["noise"], inj.draws[1][1])
    return out


def tiny_inpaint_unet(unet, seed: int):
    """9-channel UNet: same weights as the 4-channel tiny UNet, conv_in widened to 9 input channels
    (channels 0-3 = the base conv_in, 4-8 (mask, masked-image latents) random, seed+9), fp16 grid."""
    from diffusers import UNet2DConditionModel

    cfg = dict(unet.config)
    cfg["in_channels"] = 9
    u9 = UNet2DConditionModel(**strip(cfg)).eval()
    sd = {k: v.clone() for k, v in unet.state_dict().items()}
    w = sd["conv_in.weight"]
    g = torch.Generator().manual_seed(seed + 9)
    extra = torch.randn(w.shape[0], 5, *w.shape[2:], generator=g) * w.std()
    sd["conv_in.weight"] = torch.cat([w, extra], 1).half().float()
    u9.load_state_dict(sd)
    return u9


def write_inpaint_folder(base: Path, out: Path, unet9) -> None:
    """Diffusers folder with only model_index.json, scheduler/ and unet/ (fp16 weights); text_encoder,
    tokenizer and vae are those of the sibling sd15-tiny folder (not copied, to keep the repo small)."""
    import diffusers
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    mi = json.loads((base / "model_index.json").read_text())
    mi["_class_name"] = "StableDiffusionInpaintPipeline"
    (out / "model_index.json").write_text(json.dumps(mi, indent=2) + "\n")
    (out / "scheduler").mkdir(exist_ok=True)
    shutil.copyfile(base / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
    unet9.to(torch.float16).save_pretrained(str(out / "unet"), safe_serialization=True)
    unet9.to(torch.float32)
    (out / "README.md").write_text(
        "# sd15-tiny-inpaint\n\nTiny random SD 1.5 *inpainting* model (9-channel UNet: 4 latent + 1 mask + 4 masked-image "
        "latent channels), written by `models/make_sd15_fixtures.py --tiny`.\n\n"
        "Only `unet/` (weights stored as fp16, all values on the fp16 grid), `scheduler/` and `model_index.json` are here; "
        "the text encoder, tokenizer and VAE are those of `../sd15-tiny/` (not copied, to keep the repo small). "
        "The UNet equals sd15-tiny's except `conv_in.weight` [32,9,3,3], whose first 4 input channels are sd15-tiny's "
        "conv_in. References: `../sd15-tiny/refs/inpaint_9ch.safetensors` (see `refs/README_more.json`).\n"
        f"diffusers {diffusers.__version__}.\n")


def load_inpaint_unet(folder: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32).eval()


def run_inpaint(pipe, unet, pil_image, pil_mask, seed: int, replay=None) -> dict:
    from diffusers import StableDiffusionInpaintPipeline

    p = StableDiffusionInpaintPipeline(**{**_components(pipe), "unet": unet, "scheduler": _ddim(pipe)})
    p.set_progress_bar_config(disable=True)
    nch = unet.config.in_channels
    rec: dict = {"encodes": []}
    orig_encode, orig_pml = p._encode_vae_image, p.prepare_mask_latents

    def enc(image, generator):
        out = orig_encode(image=image, generator=generator)
        rec["encodes"].append((image.clone(), out.clone()))
        return out

    def pml(mask, masked_image, *a, **k):
        rec["mask_condition"], rec["masked_image"] = mask.clone(), masked_image.clone()
        return orig_pml(mask, masked_image, *a, **k)

    p._encode_vae_image, p.prepare_mask_latents = enc, pml
    per_step, cond = {}, {}

    def cb(_p, i, t, kw):
        per_step[f"latents_after_step{i}"] = kw["latents"].detach().clone()
        cond["mask"], cond["masked_image_latents"] = kw["mask"].clone(), kw["masked_image_latents"].clone()
        return kw

    h, w = pil_image.size[1], pil_image.size[0]
    mods = [VAE_MODULE, PIPE_MODULES["inpaint"], sched_module(p.scheduler)]
    with torch.inference_mode(), NoiseInjector(mods, generator=torch.Generator().manual_seed(seed + 700 + nch),
                                               replay=replay) as inj:
        lat = p(PROMPT, image=pil_image, mask_image=pil_mask, height=h, width=w, strength=1.0,
                num_inference_steps=MORE_STEPS, guidance_scale=GUIDANCE, negative_prompt=NEGATIVE, output_type="latent",
                callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents", "mask", "masked_image_latents"]).images
        image = p.vae.decode(lat / p.vae.config.scaling_factor).sample
    sites = [s for s, _ in inj.draws]
    want = (["vae"] if nch == 4 else []) + ["pipeline_stable_diffusion_inpaint", "vae"]
    assert sites == want, sites
    draws = [t for _, t in inj.draws]
    out = {"init_image": p.image_processor.preprocess(pil_image, height=h, width=w).float(),
           "mask_condition": rec["mask_condition"], "masked_image": rec["masked_image"],
           "noise": draws[-2], "init_latents": draws[-2] * p.scheduler.init_noise_sigma,
           "masked_image_vae_noise": draws[-1], "masked_image_latents": cond["masked_image_latents"][:1],
           "mask_latent": cond["mask"][:1], "timesteps": p.scheduler.timesteps.float(), **per_step,
           "final_latents": lat, "image": image, "pixels": torch.from_numpy(pixels_like_diffusers(p, image))}
    assert torch.equal(rec["encodes"][-1][1], out["masked_image_latents"])
    # not stored (size): init_image is img2img.safetensors' init_image, masked_image = init_image * (mask_condition < 0.5)
    assert torch.equal(out["masked_image"], out["init_image"] * (out["mask_condition"] < 0.5))
    del out["init_image"], out["masked_image"]
    if nch == 4:
        out["image_vae_noise"] = draws[0]
        out["image_latents"] = rec["encodes"][0][1]
    return out, draws


CLIP_SKIP_DIFFUSERS = 1  # diffusers' clip_skip=1 == A1111's (and kiln's) "Clip skip: 2"


def run_clip_skip(pipe, noise: torch.Tensor) -> dict:
    """Prompt embeddings with diffusers' clip_skip (hidden_states[-(k+1)] + final_layer_norm) and a
    4-step DDIM txt2img loop that uses them for BOTH prompts, as A1111 does. diffusers' own pipeline
    skips layers for the positive prompt only (its negative embeddings are always the last layer's),
    so the loop gets both embeddings passed in."""
    import types

    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline(**{**_components(pipe), "scheduler": _ddim(pipe)})
    p.set_progress_bar_config(disable=True)
    k, te = CLIP_SKIP_DIFFUSERS, p.text_encoder
    # diffusers 0.42 reads text_encoder.text_model.final_layer_norm, which transformers 5 no longer
    # has (CLIPTextModel is flat now); a plain attribute (not a submodule) lets its own code run.
    shim = not hasattr(te, "text_model")
    if shim:
        object.__setattr__(te, "text_model", types.SimpleNamespace(final_layer_norm=te.final_layer_norm))
    try:
        with torch.inference_mode():
            out = te(tokens(p.tokenizer, PROMPT), output_hidden_states=True)
            # hidden_states = [embeddings, layer 1, ..., layer L]: what diffusers' [-(k+1)] indexes
            assert len(out.hidden_states) == te.config.num_hidden_layers + 1
            assert torch.equal(te.final_layer_norm(out.hidden_states[-1]), out.last_hidden_state)
            cond, _ = p.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=k)
            uncond, _ = p.encode_prompt(NEGATIVE, "cpu", 1, False, clip_skip=k)
            _, uncond_diffusers = p.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE, clip_skip=k)
            plain, _ = p.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=None)
            assert torch.equal(uncond_diffusers, te(tokens(p.tokenizer, NEGATIVE))[0])
            lat = p(prompt_embeds=cond, negative_prompt_embeds=uncond, height=noise.shape[2] * 8,
                    width=noise.shape[3] * 8, num_inference_steps=MORE_STEPS, guidance_scale=GUIDANCE,
                    latents=noise.clone(), output_type="latent").images
    finally:
        if shim:
            object.__delattr__(te, "text_model")
    assert (cond - plain).abs().max() > 1e-3, "clip_skip changed nothing"
    return {"prompt_embeds": cond, "uncond_embeds": uncond, "init_noise": noise,
            "timesteps": p.scheduler.timesteps.float(), "final_latents": lat}


# img2img with sigma-space samplers: add_noise reads the scheduler's own sigmas[begin_index]
IMG2IMG_SIGMA_RUNS = [("dpmpp_2m_karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras"),
                      ("euler_karras", "EulerDiscreteScheduler", "Euler Karras")]
IMG2IMG_SIGMA_STEPS, IMG2IMG_SIGMA_STRENGTH = 8, 0.6
IMG2IMG_SHARED = ("init_image", "encode_mean", "encode_std")  # stored once, in img2img.safetensors


def run_img2img_sigmas(pipe, pil, seed: int, replay: dict | None = None) -> dict:
    """img2img.safetensors' setup with Karras-sigma samplers; keys prefixed '<id>.'."""
    import diffusers

    out = {}
    for k, (sid, cls, _) in enumerate(IMG2IMG_SIGMA_RUNS):
        sch = getattr(diffusers, cls).from_config(SD15_SCHEDULER_RESOLVED or strip(SD15_SCHEDULER), use_karras_sigmas=True)
        rp = [replay[f"{sid}.vae_sample_noise"], replay[f"{sid}.noise"]] if replay else None
        r = run_img2img(pipe, pil, IMG2IMG_SIGMA_STRENGTH, seed, False, replay=rp, scheduler=sch,
                        steps=IMG2IMG_SIGMA_STEPS, noise_seed=seed + 800 + k)
        for key in IMG2IMG_SHARED + ("image",):  # image: size; VAE decode is covered elsewhere
            del r[key]
        # the start really is at the scheduler's own sigma, which ᾱ at the rounded timestep is not
        sigma = float(sch.sigmas[sch.begin_index])
        a = float(sch.alphas_cumprod[int(r["latent_timestep"][0])])
        if cls.startswith("Euler"):
            assert torch.allclose(r["noised_latents"], r["image_latents"] + sigma * r["noise"], atol=1e-5)
        else:
            al = 1 / (sigma ** 2 + 1) ** 0.5
            assert torch.allclose(r["noised_latents"], al * r["image_latents"] + sigma * al * r["noise"], atol=1e-5)
        print(f"    img2img {sid}: begin_index {sch.begin_index}, sigma {sigma:.6f} vs ᾱ-sigma at t="
              f"{float(r['latent_timestep'][0])}: {((1 - a) / a) ** 0.5:.6f}")
        r["sigmas"] = sch.sigmas.float()
        r["begin_index"] = torch.tensor([sch.begin_index], dtype=torch.int64)
        out.update({f"{sid}.{key}": v for key, v in r.items()})
    return out


BF16_UNET = "diffusion_pytorch_model.bf16.safetensors"


def write_bf16_unet(folder: Path, unet) -> Path:
    """The tiny UNet as diffusers' `bf16` variant (what save_pretrained(variant="bf16") names it):
    every weight rounded to bfloat16 (round to nearest even), safetensors metadata {"format": "pt"}."""
    from safetensors.torch import save_file

    path = folder / "unet" / BF16_UNET
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in unet.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def check_bf16_unet(folder: Path, unet) -> bool:
    """from_pretrained(variant="bf16") finds the file and holds exactly the fp32 weights cast to bf16."""
    from diffusers import UNet2DConditionModel

    u = UNet2DConditionModel.from_pretrained(str(folder / "unet"), variant="bf16", torch_dtype=torch.bfloat16)
    got, want = u.state_dict(), unet.state_dict()
    return set(got) == set(want) and all(
        got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)


def _save_refs(tensors: dict, path: Path, how: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"how": how})


def write_more_refs(out: Path, pipe, seed: int, versions: dict, inpaint_dir: Path | None = None) -> None:
    """Issue-6 references next to the existing ones (README.json is left as it was; these files are
    described in refs/README_more.json)."""
    from PIL import Image

    refs = out / "refs"
    inpaint_dir = inpaint_dir or out.parent / (out.name + "-inpaint")
    sf = pipe.vae.config.scaling_factor
    IH, IW = LAT_H * 8, LAT_W * 8
    readme: dict = {"about": "Issue-6 references (more schedulers, img2img, inpainting), written by "
                             "models/make_sd15_fixtures.py --tiny after the refs of README.json (which they do not "
                             "change), verified by --verify. Float tensors float32 CPU NCHW. Every safetensors file "
                             "also carries its description in the metadata key 'how'. Noise injection: diffusers "
                             "draws noise through `randn_tensor` imported into each module; the script replaces that "
                             "name in the scheduler's module, the pipeline's module and diffusers.models.autoencoders.vae "
                             "(DiagonalGaussianDistribution.sample) with a function returning fixed tensors in call "
                             "order; the tensors are stored here so a test can feed the same ones.",
                    "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": seed, "guidance_scale": GUIDANCE,
                    "versions": versions, "files": {}}

    # 1. scheduler tables + host-math steps
    (refs / "schedulers_more.json").write_text(json.dumps(scheduler_more_refs(seed), indent=1) + "\n")
    readme["files"]["schedulers_more.json"] = "see 'about' and each entry's 'how' inside the file"
    print("    schedulers_more.json written")

    # 2. end-to-end 4-step loops
    noise = torch.randn(1, 4, LAT_H, LAT_W, generator=torch.Generator().manual_seed(seed + 400))
    for sid in MORE_PIPE_IDS:
        lat, image, per_step, sch, draws = run_more_pipeline(pipe, sid, noise, MORE_STEPS, seed)
        tensors = {"init_noise": noise, "timesteps": sch.timesteps.float(), "final_latents": lat,
                   "pixels": torch.from_numpy(pixels_like_diffusers(pipe, image)), **per_step}  # float image: size
        if hasattr(sch, "sigmas") and sch.sigmas is not None:
            tensors["sigmas"] = sch.sigmas.float()
        for i, d in enumerate(draws):
            tensors[f"noise_step{i}"] = d
        assert bool(draws) == (sid in MORE_STOCHASTIC)
        _, cls, kw, _, label = _sched_spec(sid)
        how = (f"{label}: pipe.scheduler = {cls}.from_config(scheduler/scheduler_config.json{''.join(f', {k}={v!r}' for k, v in kw.items())}) "
               f"(resolved: {json.dumps(resolved_config(sch))}); pipe({PROMPT!r}, negative_prompt='', height={IH}, width={IW}, "
               f"num_inference_steps={MORE_STEPS}, guidance_scale={GUIDANCE}, latents=init_noise, output_type='latent', "
               f"callback_on_step_end=<latents after step i>). init_noise = torch.randn(1,4,{LAT_H},{LAT_W}, "
               f"generator=torch.Generator().manual_seed({seed + 400})) (same for every sampler; the pipeline multiplies it "
               f"by init_noise_sigma={float(sch.init_noise_sigma):.6f}); timesteps = scheduler.timesteps as float32 "
               f"({len(sch.timesteps)} loop iterations = UNet evaluations"
               + (", Heun: first timestep once then every later one twice (2nd-order correction)" if sid == "heun" else "")
               + "); sigmas (where the class has them) = scheduler.sigmas float32; latents_after_step{i} after loop "
               "iteration i; "
               + (f"noise_step{{i}} = the noise scheduler.step used in iteration i (randn_tensor in {sched_module(sch)} "
                  f"monkeypatched; drawn from torch.Generator().manual_seed({seed + 500})); " if draws else "no noise drawn; ")
               + f"final_latents; pixels = uint8 NHWC of vae.decode(final_latents / {sf}).sample as in README.json (the "
               f"float image is not stored, to keep the repo small: VAE decode is covered by vae.safetensors and the "
               f"img2img/inpaint files).")
        _save_refs(tensors, refs / f"pipeline_{sid}{MORE_STEPS}.safetensors", how)
        readme["files"][f"pipeline_{sid}{MORE_STEPS}.safetensors"] = how
        print(f"    pipeline_{sid}{MORE_STEPS}: timesteps {[round(float(t), 3) for t in sch.timesteps]}")

    # 3. img2img
    arr = make_input_image(IH, IW)
    _save_png(arr, refs / "img2img_input.png", "RGB")
    pil = Image.open(refs / "img2img_input.png")
    pil.load()
    tensors = {"input_pixels": torch.from_numpy(arr)}
    for tag, strength, mean in IMG2IMG_STRENGTHS:
        r = run_img2img(pipe, pil, strength, seed, mean)
        if tag != "s075":
            for k in ("init_image", "encode_mean", "encode_std"):
                assert torch.equal(r.pop(k), tensors[k])
        for k, v in r.items():
            tensors[k if k in ("init_image", "encode_mean", "encode_std") else f"{tag}.{k}"] = v
        print(f"    img2img {tag}: strength {strength}, timesteps used {r['timesteps_used'].tolist()}")
    how = (f"StableDiffusionImg2ImgPipeline(sd15-tiny components, scheduler=DDIMScheduler.from_config(scheduler_config)) "
           f"called as p({PROMPT!r}, image=PIL.Image.open('img2img_input.png') ({IW}x{IH} RGB), strength=S, "
           f"num_inference_steps={MORE_STEPS}, guidance_scale={GUIDANCE}, negative_prompt='', output_type='latent', "
           f"callback_on_step_end=<latents after step i>) (eta=0). Common keys: input_pixels uint8 [{IH},{IW},3] (the PNG); "
           f"init_image [1,3,{IH},{IW}] = p.image_processor.preprocess(png) (x/255*2-1); encode_mean / encode_std "
           f"[1,4,{LAT_H},{LAT_W}] = vae.encode(init_image).latent_dist.mean / .std. Per variant prefix "
           f"s075. (S=0.75), s050. (S=0.5), s075_mean. (S=0.75 with the VAE sample noise = zeros, i.e. latent_dist.mode(), "
           f"what retrieve_latents(sample_mode='argmax') gives; the pipeline itself always samples): "
           f"vae_sample_noise = z drawn inside latent_dist.sample (randn_tensor of diffusers.models.autoencoders.vae "
           f"monkeypatched); image_latents = {sf} * (encode_mean + encode_std * z) (bit-exact with what the pipeline "
           f"passes to scheduler.add_noise); noise = the pipeline's own noise draw (randn_tensor of the img2img module "
           f"monkeypatched); injected tensors drawn in call order (z then noise) from torch.Generator().manual_seed("
           f"{seed + 600} + int(S*100)); latent_timestep = timesteps_used[0]; noised_latents = "
           f"scheduler.add_noise(image_latents, noise, latent_timestep) (= sqrt(acp[t])*x0 + sqrt(1-acp[t])*noise, the "
           f"loop's starting latents, NOT multiplied by init_noise_sigma); timesteps = all DDIM timesteps for "
           f"{MORE_STEPS} steps; timesteps_used = timesteps[t_start:], t_start = {MORE_STEPS} - min(int({MORE_STEPS}*S), "
           f"{MORE_STEPS}) (int() truncates; scheduler.set_begin_index(t_start) is called); latents_after_step{{i}} per "
           f"used timestep; final_latents; image = vae.decode(final_latents/{sf}).sample; pixels uint8 NHWC.")
    _save_refs(tensors, refs / "img2img.safetensors", how)
    readme["files"]["img2img.safetensors"] = how
    readme["files"]["img2img_input.png"] = (f"{IW}x{IH} RGB 8-bit PNG, deterministic gradient + shapes "
                                            f"(make_input_image); also the inpaint input")

    # 4. inpainting (4-channel UNet: latent blending; 9-channel inpainting UNet)
    m = make_mask(IH, IW)
    _save_png(m, refs / "inpaint_mask.png", "L")
    rgba = np.concatenate([arr, np.where(m == 255, 0, 255).astype(np.uint8)[..., None]], -1)
    _save_png(rgba, refs / "inpaint_mask_rgba.png", "RGBA")
    pil_mask = Image.open(refs / "inpaint_mask.png")
    pil_mask.load()
    unet9 = tiny_inpaint_unet(pipe.unet, seed)
    write_inpaint_folder(out, inpaint_dir, unet9)
    unet9 = load_inpaint_unet(inpaint_dir)  # use exactly what is on disk
    for tag, unet in (("inpaint_base", pipe.unet), ("inpaint_9ch", unet9)):
        r, _ = run_inpaint(pipe, unet, pil, pil_mask, seed)
        r = {"input_pixels": torch.from_numpy(arr), "mask_pixels": torch.from_numpy(m), **r}
        nch = unet.config.in_channels
        how = (f"StableDiffusionInpaintPipeline(sd15-tiny text_encoder/tokenizer/vae, unet = "
               + ("sd15-tiny's 4-channel UNet (latent-blending path)" if nch == 4 else
                  f"{inpaint_dir.name}/unet (9 channels: cat([latents, mask_latent, masked_image_latents], 1))")
               + f", scheduler=DDIMScheduler.from_config(scheduler_config)) called as p({PROMPT!r}, image=img2img_input.png, "
               f"mask_image=inpaint_mask.png (L, 255 = repaint), height={IH}, width={IW}, strength=1.0, "
               f"num_inference_steps={MORE_STEPS}, guidance_scale={GUIDANCE}, negative_prompt='', output_type='latent', "
               f"callback_on_step_end=<latents after step i>) (eta=0, padding_mask_crop=None: no crop, no paste-back of "
               f"the original pixels; the decoded image is all generated). Keys: input_pixels uint8 [{IH},{IW},3]; mask_pixels "
               f"uint8 [{IH},{IW}]; (not stored: init_image [1,3,{IH},{IW}] = img2img.safetensors' init_image (x/255*2-1)); "
               f"mask_condition [1,1,{IH},{IW}] = mask_processor.preprocess(mask) (grayscale, /255, binarized: 1 where >= 0.5 "
               f"else 0); (not stored: masked_image = init_image * (mask_condition < 0.5), what the VAE encodes); mask_latent [1,1,{LAT_H},{LAT_W}] = F.interpolate(mask_condition, size=({LAT_H},"
               f"{LAT_W})) (mode 'nearest': latent (i,j) takes pixel (8i,8j)); masked_image_latents [1,4,{LAT_H},{LAT_W}] = "
               f"{sf} * (mean + std * masked_image_vae_noise) of vae.encode(masked_image) (computed for both UNet kinds, "
               f"used only by the 9-channel one); noise = the pipeline's initial-latent draw; init_latents = noise * "
               f"init_noise_sigma (strength 1.0: pure noise); timesteps (DDIM, all {MORE_STEPS} used); "
               + ("image_vae_noise / image_latents = the VAE sample noise and " + str(sf) + " * (mean + std * z) of "
                  "vae.encode(init_image) (drawn first); after every scheduler.step: latents = (1 - mask_latent) * "
                  "init_latents_proper + mask_latent * latents, init_latents_proper = scheduler.add_noise(image_latents, "
                  "noise, timesteps[i+1]) for i < last, = image_latents at the last step; " if nch == 4 else "")
               + "latents_after_step{i} (after that blending); final_latents; image = vae.decode(final_latents/"
               f"{sf}).sample; pixels uint8 NHWC. Injected tensors (randn_tensor monkeypatched in the vae and inpaint "
               f"modules) drawn in call order [" + ("image_vae_noise, " if nch == 4 else "")
               + f"noise, masked_image_vae_noise] from torch.Generator().manual_seed({seed + 700} + in_channels).")
        _save_refs(r, refs / f"{tag}.safetensors", how)
        readme["files"][f"{tag}.safetensors"] = how
        print(f"    {tag}: timesteps {r['timesteps'].tolist()}, mask latent cells {int(r['mask_latent'].sum())}")
    readme["files"]["inpaint_mask.png"] = (f"{IW}x{IH} 8-bit grayscale (L) PNG, 255 = repaint, 0 = keep (diffusers "
                                           f"convention); binary; an ellipse + a rectangle, edges not on the 8-pixel grid")
    readme["files"]["inpaint_mask_rgba.png"] = (
        f"{IW}x{IH} RGBA PNG, OpenAI convention: RGB = img2img_input.png, alpha 0 (fully transparent) exactly where "
        f"inpaint_mask.png is 255 (area to edit), alpha 255 elsewhere. Converting alpha==0 -> 255 else 0 gives "
        f"inpaint_mask.png, so both conventions must give the inpaint_*.safetensors results.")
    readme["files"][f"../../{inpaint_dir.name}/"] = (
        f"9-channel tiny inpainting UNet folder (model_index.json, scheduler/, unet/ in fp16); text_encoder, tokenizer "
        f"and vae come from sd15-tiny. conv_in.weight [32,9,3,3]: channels 0-3 = sd15-tiny's conv_in, 4-8 = "
        f"torch.randn(32,5,3,3, generator=torch.Generator().manual_seed({seed + 9})) * std(sd15-tiny conv_in), "
        f"rounded to fp16; every other weight = sd15-tiny's UNet.")
    # 5. img2img with Karras-sigma samplers
    tensors = run_img2img_sigmas(pipe, pil, seed)
    runs = ", ".join(f"{sid}. = {label} ({cls}.from_config(scheduler_config, use_karras_sigmas=True), noise seed "
                     f"{seed + 800 + k})" for k, (sid, cls, label) in enumerate(IMG2IMG_SIGMA_RUNS))
    how = (f"img2img.safetensors' pipeline and input (same init_image / encode_mean / encode_std, not repeated here) "
           f"with sigma-space samplers: {runs}; strength={IMG2IMG_SIGMA_STRENGTH}, num_inference_steps="
           f"{IMG2IMG_SIGMA_STEPS}, VAE sampled (not the mean). Per prefix: vae_sample_noise, noise (injected, drawn in "
           f"that order from torch.Generator().manual_seed(<noise seed>)), image_latents = {sf} * (mean + std * "
           f"vae_sample_noise), timesteps / sigmas = the scheduler's (float32), begin_index = t_start * order "
           f"(set_begin_index), timesteps_used = timesteps[begin_index:], latent_timestep = timesteps_used[0], "
           f"noised_latents = scheduler.add_noise(image_latents, noise, latent_timestep): with a begin index set, "
           f"diffusers reads sigma = sigmas[begin_index] (not the sigma of the rounded timestep): Euler image_latents "
           f"+ sigma * noise; DPM-Solver alpha_t * image_latents + sigma_t * noise, alpha_t = 1/sqrt(sigma^2+1), sigma_t "
           f"= sigma * alpha_t. latents_after_step{{i}}, final_latents, pixels (uint8 NHWC of the decoded final "
           f"latents; the float image is not stored, to keep the repo small).")
    _save_refs(tensors, refs / "img2img_sigmas.safetensors", how)
    readme["files"]["img2img_sigmas.safetensors"] = how

    # 6. bf16 variant of the UNet (loader test: bf16 -> f32 on load)
    path = write_bf16_unet(out, pipe.unet)
    assert check_bf16_unet(out, pipe.unet)
    readme["files"][f"../unet/{BF16_UNET}"] = (
        "the tiny UNet as diffusers' bf16 variant: {k: v.to(torch.bfloat16) for k, v in unet.state_dict().items()} "
        "(round to nearest even from the fp32 weights of unet/diffusion_pytorch_model.safetensors), saved with "
        "safetensors save_file(metadata={'format': 'pt'}); UNet2DConditionModel.from_pretrained(unet/, variant='bf16') "
        "loads it. Not a reference: the loader test compares a load of it with the fp32 weights rounded the same way.")
    print(f"    {path.relative_to(out)} ({human(path.stat().st_size)})")

    # 7. clip_skip (A1111 numbering in kiln: 2 = penultimate layer)
    r = run_clip_skip(pipe, noise)
    k = CLIP_SKIP_DIFFUSERS
    how = (f"diffusers clip_skip={k}, i.e. A1111's / kiln's clip_skip={k + 1} (penultimate CLIP layer). "
           f"p = StableDiffusionPipeline(sd15-tiny components, scheduler=DDIMScheduler.from_config(scheduler_config)); "
           f"prompt_embeds / uncond_embeds [1,77,{pipe.text_encoder.config.hidden_size}] = p.encode_prompt({PROMPT!r} / "
           f"'', 'cpu', 1, False, clip_skip={k})[0] (text_encoder(ids, output_hidden_states=True).hidden_states"
           f"[-({k} + 1)] then text_model.final_layer_norm; the tiny CLIP has "
           f"{pipe.text_encoder.config.num_hidden_layers} layers, so this is layer 1's output, normed). Both prompts are "
           f"clip-skipped, as A1111 does; NOTE diffusers' pipeline(clip_skip=k) skips for the positive prompt only (its "
           f"negative embeddings stay the last layer's = text_encoder.safetensors' uncond_embeds), so the loop is run with "
           f"the embeddings passed in: final_latents = p(prompt_embeds=prompt_embeds, negative_prompt_embeds="
           f"uncond_embeds, height={IH}, width={IW}, num_inference_steps={MORE_STEPS}, guidance_scale={GUIDANCE}, "
           f"latents=init_noise, output_type='latent') (DDIM, eta 0); init_noise = pipeline_<sampler>4's init_noise "
           f"(torch.randn(1,4,{LAT_H},{LAT_W}, generator=torch.Generator().manual_seed({seed + 400}))); timesteps = the "
           f"DDIM timesteps.")
    _save_refs(r, refs / "clip_skip.safetensors", how)
    readme["files"]["clip_skip.safetensors"] = how
    print(f"    clip_skip: diffusers clip_skip={k}")

    (refs / "README_more.json").write_text(json.dumps(readme, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"  more refs written to {refs} and {inpaint_dir}")


def verify_more(folder: Path, pipe, cmp, fails: list) -> None:
    """Recompute the issue-6 references from the files on disk, replaying the stored injected noise."""
    from PIL import Image
    from safetensors.torch import load_file

    refs = folder / "refs"
    rd = json.loads((refs / "README_more.json").read_text(encoding="utf-8"))
    seed = rd["seed"]
    got = scheduler_more_refs(seed)
    want = json.loads((refs / "schedulers_more.json").read_text())
    ok = json.loads(json.dumps(got)) == want
    if not ok:
        fails.append("schedulers_more.json")
    print(f"    {'ok  ' if ok else 'FAIL'} schedulers_more.json recomputed")

    def cmp_all(stem, got: dict, r: dict):
        for k, v in r.items():
            if k not in got:
                fails.append(f"{stem} {k} not recomputed")
                continue
            exact = v.dtype in (torch.uint8, torch.int64) or "timestep" in k
            cmp(f"{stem} {k}", got[k], v, exact=exact)
        if set(got) != set(r):
            fails.append(f"{stem} key sets differ: {sorted(set(got) ^ set(r))}")

    for sid in MORE_PIPE_IDS:
        stem = f"pipeline_{sid}{MORE_STEPS}"
        r = load_file(str(refs / f"{stem}.safetensors"))
        replay = [r[f"noise_step{i}"] for i in range(100) if f"noise_step{i}" in r]
        lat, image, per_step, sch, draws = run_more_pipeline(pipe, sid, r["init_noise"], MORE_STEPS, seed, replay=replay)
        got = {"init_noise": r["init_noise"], "timesteps": sch.timesteps.float(), "final_latents": lat,
               "pixels": torch.from_numpy(pixels_like_diffusers(pipe, image)), **per_step,
               **{f"noise_step{i}": d for i, d in enumerate(draws)}}
        if hasattr(sch, "sigmas") and sch.sigmas is not None:
            got["sigmas"] = sch.sigmas.float()
        cmp_all(stem, got, r)

    r = load_file(str(refs / "clip_skip.safetensors"))
    cmp_all("clip_skip", run_clip_skip(pipe, r["init_noise"]), r)
    r = load_file(str(refs / "img2img_sigmas.safetensors"))
    cmp_all("img2img_sigmas", run_img2img_sigmas(pipe, Image.open(refs / "img2img_input.png").convert("RGB"), seed, replay=r), r)

    ok = check_bf16_unet(folder, pipe.unet)
    if not ok:
        fails.append(f"unet/{BF16_UNET}")
    print(f"    {'ok  ' if ok else 'FAIL'} unet/{BF16_UNET} == fp32 unet weights .to(bfloat16)")

    pil = Image.open(refs / "img2img_input.png").convert("RGB")
    r = load_file(str(refs / "img2img.safetensors"))
    got = {"input_pixels": torch.from_numpy(np.asarray(pil).copy())}
    for tag, strength, mean in IMG2IMG_STRENGTHS:
        replay = [r[f"{tag}.vae_sample_noise"], r[f"{tag}.noise"]]
        x = run_img2img(pipe, pil, strength, seed, mean, replay=replay)
        for k, v in x.items():
            if k in ("init_image", "encode_mean", "encode_std"):
                got[k] = v
            else:
                got[f"{tag}.{k}"] = v
    cmp_all("img2img", got, r)

    mask = Image.open(refs / "inpaint_mask.png")
    rgba = np.asarray(Image.open(refs / "inpaint_mask_rgba.png"))
    okm = rgba.shape[-1] == 4 and np.array_equal(np.where(rgba[..., 3] == 0, 255, 0).astype(np.uint8), np.asarray(mask)) \
        and np.array_equal(rgba[..., :3], np.asarray(pil))
    if not okm:
        fails.append("inpaint_mask_rgba.png")
    print(f"    {'ok  ' if okm else 'FAIL'} inpaint_mask_rgba.png alpha==0 <=> inpaint_mask.png==255, rgb == input")
    inpaint_dir = folder.parent / (folder.name + "-inpaint")
    for tag, unet in (("inpaint_base", pipe.unet), ("inpaint_9ch", load_inpaint_unet(inpaint_dir))):
        r = load_file(str(refs / f"{tag}.safetensors"))
        replay = ([r["image_vae_noise"]] if "image_vae_noise" in r else []) + [r["noise"], r["masked_image_vae_noise"]]
        x, _ = run_inpaint(pipe, unet, pil, mask, seed, replay=replay)
        x = {"input_pixels": torch.from_numpy(np.asarray(pil).copy()), "mask_pixels": torch.from_numpy(np.asarray(mask).copy()), **x}
        cmp_all(tag, x, r)


# --------------------------------------------------------------------------------------
# Verification from disk
# --------------------------------------------------------------------------------------
def verify(folder: Path, tol: float = 1e-6) -> None:
    """Reload the folder (from_pretrained) and the single file (from_single_file) and recompute every ref."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    refs = folder / "refs"
    worst = {"v": 0.0}
    fails = []

    def cmp(name, got, want, exact=False):
        if exact:
            ok = got.dtype == want.dtype and torch.equal(got, want)
            d = 0.0 if ok else float("inf")
        else:
            d = (got.float() - want.float()).abs().max().item()
            ok = d <= tol
        worst["v"] = max(worst["v"], d)
        if not ok:
            fails.append(name)
        print(f"    {'ok  ' if ok else 'FAIL'} {name:44s} max|diff| = {d:.2e}")

    folder_pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None)
    singles = sorted(folder.glob("*.safetensors"))
    pipes = [("folder", folder_pipe)] + [(f.name, load_single_file_pipe(f, folder)) for f in singles]
    for label, pipe in pipes:
        print(f"  verify refs against {label}")
        pipe.set_progress_bar_config(disable=True)
        tok = pipe.tokenizer
        for row in json.loads((refs / "tokenizer.json").read_text(encoding="utf-8")):
            a = tok(row["prompt"], padding="max_length", max_length=77, truncation=True).input_ids
            b = tok(row["prompt"]).input_ids
            if a != row["input_ids"] or b != row["ids_unpadded"] or len(a) != 77:
                fails.append(f"{label} tokenizer {row['prompt']!r}")
        with torch.inference_mode():
            r = load_file(str(refs / "text_encoder.safetensors"))
            cmp("text_encoder prompt_ids", tokens(tok, PROMPT), r["prompt_ids"], exact=True)
            cmp("text_encoder uncond_ids", tokens(tok, NEGATIVE), r["uncond_ids"], exact=True)
            cmp("text_encoder prompt_embeds", pipe.text_encoder(r["prompt_ids"])[0], r["prompt_embeds"])
            cmp("text_encoder uncond_embeds", pipe.text_encoder(r["uncond_ids"])[0], r["uncond_embeds"])
            r = load_file(str(refs / "unet.safetensors"))
            cmp("unet out", pipe.unet(r["sample"], r["timestep"], encoder_hidden_states=r["encoder_hidden_states"]).sample, r["out"])
            r = load_file(str(refs / "vae.safetensors"))
            cmp("vae decode_out", pipe.vae.decode(r["decode_in"]).sample, r["decode_out"])
            dist = pipe.vae.encode(r["encode_in"]).latent_dist
            cmp("vae encode_mean", dist.mean, r["encode_mean"])
            cmp("vae encode_logvar", dist.logvar, r["encode_logvar"])
        steps = json.loads((refs / "README.json").read_text(encoding="utf-8"))["steps"]
        for stem, cls, neg, n in pipe_runs(steps):
            r = load_file(str(refs / f"{stem}.safetensors"))
            lat, image, per_step, sch = run_pipeline(pipe, cls, neg, n, r["init_noise"], steps)
            cmp(f"{stem} timesteps", sch.timesteps.float(), r["timesteps"], exact=True)
            if "sigmas" in r:
                cmp(f"{stem} sigmas", sch.sigmas.float(), r["sigmas"], exact=True)
            for k, v in per_step.items():
                cmp(f"{stem} {k}", v, r[k])
            if set(per_step) != {k for k in r if k.startswith("latents_after_step")}:
                fails.append(f"{stem} step count")
            cmp(f"{stem} final_latents", lat, r["final_latents"])
            cmp(f"{stem} image", image, r["image"])
            cmp(f"{stem} pixels", torch.from_numpy(pixels_like_diffusers(pipe, image)), r["pixels"], exact=True)
        if label == "folder":
            got = scheduler_refs(json.loads((refs / "README.json").read_text())["seed"])
            want = json.loads((refs / "schedulers.json").read_text())
            if json.loads(json.dumps(got)) != want:
                fails.append("schedulers.json")
            print(f"    {'ok  ' if 'schedulers.json' not in fails else 'FAIL'} schedulers.json recomputed")
            if (refs / "README_more.json").exists():
                verify_more(folder, pipe, cmp, fails)
    print(f"  worst max|diff| {worst['v']:.2e}; " + ("all OK" if not fails else "FAILED: " + ", ".join(fails)))
    if fails:
        raise SystemExit(1)


# --------------------------------------------------------------------------------------
# Manifests (full-size architecture, meta device)
# --------------------------------------------------------------------------------------
ST_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}


def build_models(ucfg, vcfg, ccfg):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in ccfg.items() if k != "model_type"})).eval()
    unet = UNet2DConditionModel(**strip(ucfg)).eval()
    vae = AutoencoderKL(**strip(vcfg)).eval()
    return te, unet, vae


def write_manifests(out: Path) -> None:
    import diffusers
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        te, unet, vae = build_models(SD15_UNET, SD15_VAE, SD15_CLIP)
        ldm = to_ldm_state_dict(unet, vae, te, torch.float32)
    kind = verify_ldm_round_trip(ldm, unet, vae, te)
    assert kind == "v1", kind
    ver = f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"

    def dump(name, layout, source, sd):
        tensors = {k: {"shape": list(v.shape), "dtype": ST_DTYPE[v.dtype]} for k, v in sorted(sd.items())}
        doc = {"layout": layout, "source": source + f" ({ver})", "num_tensors": len(tensors),
               "num_elements": int(sum(v.numel() for v in sd.values())), "tensors": tensors}
        # one tensor per line, so diffs and greps stay readable
        head = json.dumps({k: v for k, v in doc.items() if k != "tensors"}, indent=1)[:-2]
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in tensors.items())
        text = head + ',\n "tensors": {\n' + body + "\n }\n}\n"
        assert json.loads(text) == doc
        (out / name).write_text(text)
        print(f"  {out / name}: {len(tensors)} tensors, {doc['num_elements'] / 1e6:.2f} M elements")

    gen = "models/make_sd15_fixtures.py --manifests: built on the meta device from the published SD 1.5 configs"
    dump("sd15-diffusers-text_encoder.json", "diffusers folder: text_encoder/model.safetensors",
         gen + "; transformers CLIPTextModel state_dict under the legacy transformers-4.x names (`text_model.*`) plus the "
               "int64 buffer text_model.embeddings.position_ids [1,77], as in runwayml/stable-diffusion-v1-5", clip_legacy_state_dict(te))
    dump("sd15-diffusers-unet.json", "diffusers folder: unet/diffusion_pytorch_model.safetensors",
         gen + "; diffusers UNet2DConditionModel.state_dict()", unet.state_dict())
    dump("sd15-diffusers-vae.json", "diffusers folder: vae/diffusion_pytorch_model.safetensors",
         gen + "; diffusers AutoencoderKL.state_dict() (attention projections are Linear [C,C])", vae.state_dict())
    dump("sd15-ldm.json", "CompVis/ldm single file (v1-5-pruned-emaonly.safetensors / .ckpt state_dict)",
         gen + "; own diffusers->ldm key mapping, verified (keys and shapes) by diffusers' single_file_utils "
               "ldm->diffusers converters, infer_diffusers_model_type = v1. VAE mid attention q/k/v/proj_out are "
               "1x1 convs [C,C,1,1]. Includes the keys loaders must ignore: 12 ldm schedule buffers [1000] F32 "
               "(betas, alphas_cumprod, ...), model_ema.decay (F32 scalar), model_ema.num_updates (I32 scalar). "
               "Dtypes are those of the fp32 emaonly release; fp16 releases store all F32 tensors as F16", ldm)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def human(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def canonical_metadata_order(path: Path, order: list[str]) -> None:
    """safetensors (Rust HashMap) writes the __metadata__ keys in a random order per process, so a file with two
    metadata keys is byte-identical between runs only half the time.  Rewrite that object in a fixed key order
    (same length, tensors untouched).  ["note", "format"] is the order of the committed sd15-tiny-fp16.safetensors."""
    with path.open("rb") as f:  # only the header: the whole file was read and written again before
        n = int.from_bytes(f.read(8), "little")
        head = f.read(n).decode("utf-8")
    pre = '{"__metadata__":'
    assert head.startswith(pre + "{"), head[:40]
    end = head.index("}", len(pre)) + 1
    meta = json.loads(head[len(pre):end])
    assert sorted(meta) == sorted(order), (meta, order)
    want = pre + json.dumps({k: meta[k] for k in order}, separators=(",", ":"), ensure_ascii=False)
    assert len(want.encode()) == len(head[:end].encode())
    new = (want + head[end:]).encode("utf-8")
    assert len(new) == n
    with path.open("r+b") as f:
        f.seek(8)
        f.write(new)


def generate(args, tiny: bool) -> None:
    global SD15_SCHEDULER_RESOLVED, LAT_H, LAT_W
    import diffusers
    import safetensors
    import transformers
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    out = args.out or (REPO / "models" / "fixtures" / "sd15-tiny" if tiny else REPO / ".cache" / "sd15-random")
    out.mkdir(parents=True, exist_ok=True)
    ucfg, vcfg, ccfg = (tiny_configs(args.unet_layers, args.vae_layers) if tiny else (SD15_UNET, SD15_VAE, SD15_CLIP))
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__}
    t0 = time.time()
    print(f"writing {'tiny' if tiny else 'full-size'} random SD 1.5 to {out}")

    write_tokenizer(out / "tokenizer", with_tokenizer_json=not tiny)
    (out / "scheduler").mkdir(exist_ok=True)
    sched_cfg = {**SD15_SCHEDULER, "_diffusers_version": diffusers.__version__}
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2) + "\n")
    SD15_SCHEDULER_RESOLVED = strip(sched_cfg)
    (out / "model_index.json").write_text(json.dumps(model_index(diffusers.__version__), indent=2) + "\n")

    torch.manual_seed(args.seed)
    # --device cuda: the default init (and the fp16 rounding) on the GPU, then the models come to
    # the host; other values than the CPU default, same keys and shapes. --full on 2 busy cores:
    # 325 s wall (tokenizer + build 35 s, folder 27 s, fp32 ldm file 122 s, fp16 file 60 s); with
    # --no-fp32-file --no-reload-check and the header-only metadata fix: 109 s, the same bytes.
    with torch.device(args.device):
        te, unet, vae = build_models(ucfg, vcfg, ccfg)
        round_to_fp16_grid(te, unet, vae)
    te, unet, vae = te.cpu(), unet.cpu(), vae.cpu()
    print(f"  models built on {args.device} ({time.time() - t0:.1f}s)")
    for name, m in (("text_encoder", te), ("unet", unet), ("vae", vae)):
        print(f"  {name}: {sum(p.numel() for p in m.parameters()) / 1e6:.3f} M params")

    save_text_encoder(te, out / "text_encoder")
    unet.save_pretrained(str(out / "unet"), safe_serialization=True)
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    print(f"  diffusers layout saved ({time.time() - t0:.1f}s)")

    base = "sd15-tiny" if tiny else "sd15-random"
    meta = {"format": "pt", "note": "random weights (fp16 grid), SD 1.5 architecture, CompVis/ldm keys; kiln fixture"}
    # --no-fp32-file: the ldm f32 file is read by the sdcpp CPU row alone; the GPU rows read the folder
    # and sd15-random-fp16.safetensors.
    dtypes = [torch.float16] if tiny or args.no_fp32_file else [torch.float32, torch.float16]
    for dtype in dtypes:
        ldm = to_ldm_state_dict(unet, vae, te, dtype)
        verify_ldm_round_trip(ldm, unet, vae, te)
        stem = base + ("-fp16" if dtype == torch.float16 else "")
        save_file(ldm, str(out / f"{stem}.safetensors"), metadata=meta)
        canonical_metadata_order(out / f"{stem}.safetensors", ["note", "format"])
        print(f"  single file {stem}.safetensors ({time.time() - t0:.1f}s)")
        if tiny or args.check_single_file:
            check_single_file(out / f"{stem}.safetensors", out, unet, vae, te)
        if dtype == torch.float16 and args.ckpt:
            torch.save({"state_dict": ldm, "global_step": 0}, str(out / f"{stem}.ckpt"))  # zip format (default)
            check_ckpt(out / f"{stem}.ckpt", ldm)
            check_single_file(out / f"{stem}.ckpt", out, unet, vae, te)
        elif (out / f"{stem}.ckpt").exists():
            (out / f"{stem}.ckpt").unlink()
        del ldm

    if (tiny and not args.no_refs) or args.refs:
        if not tiny:
            LAT_H, LAT_W = 64, 64
        tok = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_RESOLVED),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        versions["tiny_configs"] = {"unet": strip(ucfg), "vae": strip(vcfg), "clip": ccfg} if tiny else None
        write_refs(out, pipe, args.steps, args.seed, versions)
        if tiny and not args.no_more_refs:
            write_more_refs(out, pipe, args.seed, versions)
        del pipe
        print(f"  refs done ({time.time() - t0:.1f}s)")
        if tiny and not args.no_verify:
            verify(out)

    if not args.no_reload_check:
        StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True, safety_checker=None)
    total = 0
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        total += f.stat().st_size
        print(f"    {human(f.stat().st_size):>10s}  {f.relative_to(out)}")
    print(f"  total {human(total)}; done in {time.time() - t0:.1f}s" + ("" if args.no_reload_check else f"; reload from {out} OK"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", action="store_true", help="tiny model + refs -> models/fixtures/sd15-tiny/")
    mode.add_argument("--full", action="store_true", help="full-size random model -> .cache/sd15-random/")
    mode.add_argument("--manifests", action="store_true", help="full-size key manifests -> models/manifests/")
    mode.add_argument("--verify", type=Path, metavar="DIR", help="recompute DIR/refs from the files in DIR")
    mode.add_argument("--more-refs", type=Path, metavar="DIR",
                      help="(re)write only the issue-6 refs of an existing tiny folder DIR (+ DIR-inpaint/), then --verify")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=4, help="pipeline steps for the reference runs")
    ap.add_argument("--unet-layers", type=int, default=1, help="tiny UNet layers_per_block (1 or 2)")
    ap.add_argument("--vae-layers", type=int, default=1, help="tiny VAE layers_per_block (1 or 2)")
    ap.add_argument("--ckpt", action="store_true", help="--tiny: also write sd15-tiny-fp16.ckpt (torch.save zip)")
    ap.add_argument("--refs", action="store_true", help="--full: also write reference tensors (slow on CPU)")
    ap.add_argument("--no-refs", action="store_true", help="--tiny: skip reference tensors")
    ap.add_argument("--no-verify", action="store_true", help="--tiny: skip the from-disk verification")
    ap.add_argument("--no-more-refs", action="store_true",
                    help="--tiny: skip the issue-6 refs (schedulers_more.json, pipeline_<sampler>4, img2img, inpaint, "
                         "the sd15-tiny-inpaint folder)")
    ap.add_argument("--check-single-file", action="store_true", help="--full: reload single files via from_single_file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="--full: where to build and init the models: cpu (default) or "
                    "cuda[:N] (fast; other random values)")
    ap.add_argument("--no-fp32-file", action="store_true",
                    help="--full: skip sd15-random.safetensors (ldm f32; only the sdcpp CPU row reads it)")
    ap.add_argument("--no-reload-check", action="store_true", help="--full: skip the final from_pretrained reload")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.manifests:
        write_manifests(args.out or REPO / "models" / "manifests")
    elif args.verify or args.more_refs:
        global SD15_SCHEDULER_RESOLVED
        folder = args.verify or args.more_refs
        SD15_SCHEDULER_RESOLVED = strip(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
        if args.more_refs:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None)
            pipe.set_progress_bar_config(disable=True)
            versions = json.loads((folder / "refs" / "README.json").read_text(encoding="utf-8"))["versions"]
            write_more_refs(folder, pipe, args.seed, versions)
            del pipe
        verify(folder)
    else:
        generate(args, tiny=args.tiny)


if __name__ == "__main__":
    main()
