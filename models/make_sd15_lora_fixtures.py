#!/usr/bin/env python3
"""kiln fixture generator: random LoRAs for the tiny SD 1.5 model and diffusers references.

Run by hand only (never by CI), after models/make_sd15_fixtures.py --tiny, with the same venv:

    .venv-ref/bin/python models/make_sd15_lora_fixtures.py    # -> models/fixtures/sd15-tiny-lora/

Writes (every safetensors file carries its description in the metadata key "how"; README.json lists them):
  kohya.safetensors    kohya-ss/A1111 keys (lora_unet_* / lora_te_*, lora_down / lora_up / alpha), fp16,
                       rank 4, alpha 2 (scale 0.5): UNet attention q/k/v/out, proj_in/proj_out (1x1 convs),
                       ff, resnet conv1/conv2 (LoCon 3x3) + conv_shortcut + time_emb_proj; text encoder q/k/v/out
                       and mlp fc1/fc2
  peft.safetensors     diffusers/PEFT keys (unet.*.lora_A.weight / lora_B.weight, text_encoder.*), fp32, rank 2,
                       no alpha (scale 1): UNet attention + ff, text encoder attention
  old_diffusers.safetensors   the same tensors as peft.safetensors under the pre-PEFT diffusers names
                       (attn processors `…attn1.processor.to_q_lora.down.weight`, `…ff.net.2.lora.down.weight`,
                       text encoder `…q_proj.lora_linear_layer.down.weight`)
  lcm_style.safetensors kohya keys on the LCM-LoRA target list (to_q/k/v/out.0, proj_in/out, ff, conv1/conv2,
                       conv_shortcut, downsamplers/upsamplers conv, time_emb_proj), UNet only, rank 2, alpha 4
  sdxl_keys.safetensors, bad_shape.safetensors, not_lora.safetensors   inputs that must be refused
  refs.safetensors     final latents of 4-step runs from the same init noise (init_noise): base, each LoRA alone,
                       kohya 0.7 + peft -0.4, and LCMScheduler 4 steps guidance 1 with lcm_style (step noise
                       injected, stored as lcm_noise_step{i})

--full-lcm writes .cache/sd15-lora/lcm_style_full.safetensors instead: a random kohya LoRA for the FULL-size
UNet on the LCM-LoRA target list, rank 64, alpha 8, fp16 (the shape of latent-consistency/lcm-lora-sdv1-5, ~135 MB),
module shapes from models/manifests/sd15-diffusers-unet.json, for timing LoRA merging (never committed).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models/fixtures/sd15-tiny"
OUT = REPO / "models/fixtures/sd15-tiny-lora"
SEED = 2024

_spec = importlib.util.spec_from_file_location("mk", REPO / "models/make_sd15_fixtures.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)

UNET_ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


def modules(model, want) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and want(n)]


def te_name(n: str) -> str:
    """kohya/diffusers name the CLIP modules with the `text_model.` prefix."""
    return n if n.startswith("text_model.") else "text_model." + n


def pair(m, rank: int, g: torch.Generator, mag: float):
    """(down, up) for module m: Linear [r, in] / [out, r]; Conv [r, in, k, k] / [out, r, 1, 1]."""
    if isinstance(m, torch.nn.Linear):
        down = torch.randn(rank, m.in_features, generator=g)
        up = torch.randn(m.out_features, rank, generator=g)
    else:
        kh, kw = m.kernel_size
        down = torch.randn(rank, m.in_channels, kh, kw, generator=g)
        up = torch.randn(m.out_channels, rank, 1, 1, generator=g)
    fan = down[0].numel()
    return down * (mag / fan ** 0.5), up * (mag / rank ** 0.5)


def kohya(pipe, unet_want, te_want, rank, alpha, g, mag, dtype):
    sd = {}
    for prefix, model, want, name in (("lora_unet_", pipe.unet, unet_want, str),
                                      ("lora_te_", pipe.text_encoder, te_want, te_name)):
        for n, m in modules(model, want):
            key = prefix + name(n).replace(".", "_")
            down, up = pair(m, rank, g, mag)
            sd[f"{key}.lora_down.weight"] = down.to(dtype)
            sd[f"{key}.lora_up.weight"] = up.to(dtype)
            sd[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return sd


def peft_and_old(pipe, rank, g, mag):
    peft, old = {}, {}
    for n, m in modules(pipe.unet, lambda n: n.endswith(UNET_ATTN) or n.endswith(("ff.net.0.proj", "ff.net.2"))):
        down, up = pair(m, rank, g, mag)
        peft[f"unet.{n}.lora_A.weight"], peft[f"unet.{n}.lora_B.weight"] = down, up
        if ".attn" in n:
            head, proj = n.rsplit(".attn", 1)[0], n.split(".attn", 1)[1]  # "1.to_q" / "2.to_out.0"
            idx, lin = proj.split(".", 1)
            lin = {"to_out.0": "to_out"}.get(lin, lin)
            base = f"unet.{head}.attn{idx}.processor.{lin}_lora"
        else:
            base = f"unet.{n}.lora"
        old[f"{base}.down.weight"], old[f"{base}.up.weight"] = down, up
    for n, m in modules(pipe.text_encoder, lambda n: "self_attn." in n):
        down, up = pair(m, rank, g, mag)
        peft[f"text_encoder.{te_name(n)}.lora_A.weight"], peft[f"text_encoder.{te_name(n)}.lora_B.weight"] = down, up
        old[f"text_encoder.{te_name(n)}.lora_linear_layer.down.weight"] = down
        old[f"text_encoder.{te_name(n)}.lora_linear_layer.up.weight"] = up
    return peft, old


def run(pipe, noise, scheduler, guidance, replay=None, draw_seed=None):
    pipe.scheduler = scheduler
    mods = [type(scheduler).__module__, mk.PIPE_MODULES["txt2img"]]
    gen = torch.Generator().manual_seed(draw_seed) if draw_seed is not None else None
    with torch.inference_mode(), mk.NoiseInjector(mods, generator=gen, replay=replay) as inj:
        lat = pipe(mk.PROMPT, negative_prompt="", height=noise.shape[2] * 8, width=noise.shape[3] * 8,
                   num_inference_steps=4, guidance_scale=guidance, latents=noise.clone(),
                   output_type="latent").images
    return lat, [t for _, t in inj.draws]


def save(tensors: dict, name: str, how: str, readme: dict) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / name), metadata={"how": how})
    readme["files"][name] = how


def full_lcm(rank: int = 64, alpha: float = 8.0) -> None:
    manifest = json.loads((REPO / "models/manifests/sd15-diffusers-unet.json").read_text())["tensors"]
    g = torch.Generator().manual_seed(SEED)
    sd = {}
    for key, t in manifest.items():
        module, shape = key.removesuffix(".weight"), t["shape"]
        if not key.endswith(".weight") or len(shape) not in (2, 4) or not any(module.endswith(x) for x in LCM_TARGETS):
            continue
        name = "lora_unet_" + module.replace(".", "_")
        fan = int(torch.tensor(shape[1:]).prod())
        sd[f"{name}.lora_down.weight"] = (torch.randn(rank, *shape[1:], generator=g) / fan ** 0.5).half()
        sd[f"{name}.lora_up.weight"] = (torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []),
                                                    generator=g) * 0.01).half()
        sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    out = REPO / ".cache/sd15-lora"
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "lcm_style_full.safetensors"), metadata={"how": "random, LCM-LoRA targets, full size"})
    print(f"{len(sd) // 3} modules -> {out / 'lcm_style_full.safetensors'}")


def main() -> None:
    import sys

    if "--full-lcm" in sys.argv:
        return full_lcm()
    import diffusers
    import peft
    import transformers
    from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    pipe = StableDiffusionPipeline.from_pretrained(str(TINY), local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    cfg = json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    ddim = lambda: DDIMScheduler.from_config(cfg)  # noqa: E731
    lcm = lambda: LCMScheduler.from_config(cfg)  # noqa: E731
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__}
    readme = {"about": "Random LoRAs for models/fixtures/sd15-tiny and diffusers references, written by "
                       "models/make_sd15_lora_fixtures.py (seed %d). Float refs float32 CPU." % SEED,
              "versions": versions, "files": {}}

    resnet = ("conv1", "conv2", "conv_shortcut", "time_emb_proj")
    k_unet = lambda n: n.endswith(UNET_ATTN + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2") + resnet)  # noqa: E731
    k_te = lambda n: n.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "mlp.fc1", "mlp.fc2"))  # noqa: E731
    kohya_sd = kohya(pipe, k_unet, k_te, rank=4, alpha=2, g=g, mag=1.0, dtype=torch.float16)
    assert any(v.dim() == 4 and v.shape[-1] == 3 for v in kohya_sd.values()), "no 3x3 LoCon"
    save(kohya_sd, "kohya.safetensors",
         "kohya-ss keys, fp16, rank 4, alpha 2 on every module (scale 0.5); UNet attention q/k/v/out, proj_in/out "
         "(1x1 conv), ff.net.0.proj/ff.net.2, resnets conv1/conv2 (3x3 LoCon: down [4,C,3,3], up [O,4,1,1]), "
         "conv_shortcut, time_emb_proj; text encoder self_attn q/k/v/out_proj, mlp fc1/fc2", readme)

    peft_sd, old_sd = peft_and_old(pipe, rank=2, g=g, mag=1.0)
    save(peft_sd, "peft.safetensors", "diffusers/PEFT keys (unet./text_encoder. prefix, lora_A/lora_B), fp32, "
         "rank 2, no alpha (scale 1); UNet attention q/k/v/out + ff, text encoder self_attn q/k/v/out_proj", readme)
    save(old_sd, "old_diffusers.safetensors", "the tensors of peft.safetensors under pre-PEFT diffusers names: "
         "unet attn processors `…attnN.processor.to_{q,k,v,out}_lora.{down,up}.weight`, ff `….lora.{down,up}.weight`, "
         "text encoder `….lora_linear_layer.{down,up}.weight`", readme)

    lcm_want = lambda n: any(n.endswith(t) for t in LCM_TARGETS)  # noqa: E731
    lcm_sd = kohya(pipe, lcm_want, lambda n: False, rank=2, alpha=4, g=g, mag=0.5, dtype=torch.float16)
    assert any("downsamplers" in k for k in lcm_sd) and any("upsamplers" in k for k in lcm_sd)
    save(lcm_sd, "lcm_style.safetensors", "kohya keys on the LCM-LoRA (latent-consistency/lcm-lora-sdv1-5) target "
         "list " + ", ".join(LCM_TARGETS) + "; UNet only, fp16, rank 2, alpha 4 (scale 2)", readme)

    # inputs that must be refused
    h = torch.float16
    save({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(1, 1280, dtype=h),
          "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(1280, 1, dtype=h),
          "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(1, 2048, dtype=h),
          "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 1, dtype=h)},
         "sdxl_keys.safetensors", "SDXL-style kohya keys (lora_te2_, sgm input_blocks, 2048-wide context)", readme)
    bad = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save({f"{bad}.lora_down.weight": torch.zeros(4, 48), f"{bad}.lora_up.weight": torch.zeros(32, 4),
          f"{bad}.alpha": torch.tensor(4.0)},
         "bad_shape.safetensors", f"{bad}: lora_down [4, 48] where the tiny to_q takes 32 inputs", readme)
    save({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, "not_lora.safetensors",
         "two tensors with no LoRA key names", readme)

    # references
    noise = torch.randn(1, 4, mk.LAT_H, mk.LAT_W, generator=torch.Generator().manual_seed(SEED + 1))
    refs = {"init_noise": noise}
    refs["base"], _ = run(pipe, noise, ddim(), mk.GUIDANCE)
    cases = [("kohya", [("kohya", 1.0)]), ("peft", [("peft", 1.0)]), ("old_diffusers", [("old_diffusers", 1.0)]),
             ("kohya_peft", [("kohya", 0.7), ("peft", -0.4)])]
    for ref, loras in cases:
        for name, _ in loras:
            pipe.load_lora_weights(str(OUT / f"{name}.safetensors"), adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        refs[ref], _ = run(pipe, noise, ddim(), mk.GUIDANCE)
        pipe.unload_lora_weights()
        d = float((refs[ref] - refs["base"]).abs().max())
        print(f"{ref}: max |latents - base| = {d:.4f}")
        assert d > 0.05, f"{ref}: the LoRA barely changes the latents"
    again, _ = run(pipe, noise, ddim(), mk.GUIDANCE)
    assert torch.equal(again, refs["base"]), "unload_lora_weights left the pipeline changed"
    assert float((refs["old_diffusers"] - refs["peft"]).abs().max()) < 1e-5, "old format != peft in diffusers"
    del refs["old_diffusers"]  # same as peft (checked above); the Rust test compares the two files directly

    refs["lcm_base"], _ = run(pipe, noise, lcm(), 1.0, draw_seed=SEED + 2)
    pipe.load_lora_weights(str(OUT / "lcm_style.safetensors"), adapter_name="lcm")
    pipe.set_adapters(["lcm"], adapter_weights=[1.0])
    refs["lcm"], draws = run(pipe, noise, lcm(), 1.0, draw_seed=SEED + 2)
    pipe.unload_lora_weights()
    for i, d in enumerate(draws):
        refs[f"lcm_noise_step{i}"] = d
    print(f"lcm: {len(draws)} step noises, max |latents - lcm_base| = {float((refs['lcm'] - refs['lcm_base']).abs().max()):.4f}")
    save(refs, "refs.safetensors",
         f"StableDiffusionPipeline.from_pretrained(sd15-tiny); pipe({mk.PROMPT!r}, negative_prompt='', height=128, "
         f"width=96, num_inference_steps=4, latents=init_noise, output_type='latent'); init_noise = torch.randn(1,4,"
         f"{mk.LAT_H},{mk.LAT_W}, generator=manual_seed({SEED + 1})). base/kohya/peft/kohya_peft: DDIMScheduler."
         f"from_config(scheduler_config.json), guidance {mk.GUIDANCE}, LoRAs by pipe.load_lora_weights(file, "
         f"adapter_name=…) + pipe.set_adapters(names, adapter_weights) (kohya 1.0; peft 1.0; kohya 0.7 + peft -0.4), "
         f"pipe.unload_lora_weights() between cases; old_diffusers.safetensors gave the peft latents within 1e-5. "
         f"lcm_base / lcm: LCMScheduler.from_config(scheduler_config.json), guidance 1.0, without / with "
         f"lcm_style.safetensors at 1.0; lcm_noise_step{{i}} = the noise LCMScheduler.step drew (randn_tensor "
         f"monkeypatched, torch.Generator().manual_seed({SEED + 2}), same for both runs)", readme)
    (OUT / "README.json").write_text(json.dumps(readme, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
