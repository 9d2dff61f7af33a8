#!/usr/bin/env python3
"""kiln fixture generator: SD 1.5's safety checker (diffusers StableDiffusionSafetyChecker) on a tiny
random CLIP vision tower, its CLIPImageProcessor config, and reference tensors.

Run by hand only (never by CI), with the venv of make_sd15_fixtures.py (+ torchvision, only to
measure transformers 5's default torchvision image processor against the PIL one):

    .venv-ref/bin/pip install torch torchvision diffusers transformers safetensors numpy pillow accelerate
    .venv-ref/bin/python models/make_sd15_safety_fixtures.py            # -> models/fixtures/safety-tiny/{safety_checker,feature_extractor}/, refs/
    .venv-ref/bin/python models/make_sd15_safety_fixtures.py --manifest # -> models/manifests/sd15-diffusers-safety_checker.json (meta device)
    .venv-ref/bin/python models/make_sd15_safety_fixtures.py --full DIR # full-size random checker in DIR (1.2 GB, never committed)

Writes:
  safety-tiny/safety_checker/{config.json,model.safetensors}  tiny CLIPConfig (vision: hidden 32, 2 layers, 4 heads,
      intermediate 37, patch 4, image 32; projection_dim 16), fp32, under the published (transformers 4.x) key names
      `vision_model.vision_model.*` plus the int64 buffer `vision_model.vision_model.embeddings.position_ids` [1,65]
  safety-tiny/feature_extractor/preprocessor_config.json  SD 1.5's file in its old format with 32 for 224
  safety-tiny/refs/safety_{0..3}.png  test images (RGB, different aspect ratios, three need resizing)
  safety-tiny/refs/safety.safetensors  references, each tensor's recipe in the metadata key "how"

The concept / special-care embeddings are chosen (least squares on the test images' embeddings) so that at
adjustment 0 image 0 is flagged (by 0.07, so still at -0.05), image 1 is a special-care hit (0.03 above) whose +0.01 flags a concept that is 0.004
below its threshold, image 2 is clean and image 3 is flagged by a 0.03 margin that adjustment -0.05 removes.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models/fixtures/safety-tiny"
SEED = 1234
ADJUSTMENTS = {"adj0": 0.0, "adjm005": -0.05}

# SD 1.5's feature_extractor/preprocessor_config.json (transformers 4.x format), crop/size 224 -> 32 for the tiny model
PREPROCESSOR = {
    "crop_size": 32,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 32,
}
SD15_PREPROCESSOR = {**PREPROCESSOR, "crop_size": 224, "size": 224}

TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   patch_size=4, image_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=1000,
                 max_position_embeddings=77)
# CompVis/stable-diffusion-safety-checker: ViT-L/14 vision tower, projection 768
FULL_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   patch_size=14, image_size=224, hidden_act="quick_gelu", layer_norm_eps=1e-5)
FULL_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)

IMAGE_SIZES = [(40, 56), (64, 48), (32, 32), (97, 33)]  # (width, height)


def versions() -> dict:
    import diffusers
    import PIL
    import transformers
    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "pillow": PIL.__version__}


def make_checker(vision: dict, text: dict, projection_dim: int):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    return StableDiffusionSafetyChecker(cfg).eval()


def legacy_state_dict(checker) -> dict[str, torch.Tensor]:
    """The published key names: transformers 4.x nests CLIPVisionModel's tower as `vision_model.vision_model.*` and
    persists the int64 `embeddings.position_ids` buffer; transformers 5 writes `vision_model.*` without either."""
    sd = {}
    for k, v in checker.state_dict().items():
        if k.startswith("vision_model.") and not k.startswith("vision_model.vision_model."):
            k = "vision_model.vision_model." + k[len("vision_model."):]
        sd[k] = v
    n = checker.vision_model.embeddings.num_positions
    sd.setdefault("vision_model.vision_model.embeddings.position_ids", torch.arange(n, dtype=torch.int64)[None])
    return sd


def randomize(checker, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in checker.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[1] * (p[0].numel() // p.shape[1]) if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)
                # sharper attention and patch features: the CLS state depends more on the image
                if any(s in name for s in ("q_proj.weight", "k_proj.weight", "patch_embedding")):
                    p.mul_(3.0)


def test_images(g: torch.Generator):
    """Smooth colour gradients plus noise, so that resizing moves values, each tinted its own way."""
    from PIL import Image
    tints = [(1, 0.2, 0.2), (0.2, 0.2, 1), (0.2, 1, 0.2), (1, 1, 1)]
    out = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = torch.rand(3, generator=g).numpy() * 6.28
        base = np.stack([0.5 + 0.5 * np.sin(xx / (5 + 3 * c + i) + yy / (7 + 2 * c) + phase[c]) for c in range(3)], -1)
        noise = torch.rand(h, w, 3, generator=g).numpy() * 0.25
        arr = np.clip((base * 0.8 + noise) * np.array(tints[i]) * 255, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, "RGB"))
    return out


def diffusers_forward(checker, pixel_values: torch.Tensor, adjustment: float):
    """diffusers' own StableDiffusionSafetyChecker.forward, its source with the hard-coded `adjustment = 0.0` made
    `adjustment = ADJ` (a special-care hit sets it to ADJ + 0.01) and the scores recorded before rounding."""
    from diffusers.pipelines.stable_diffusion import safety_checker as mod
    src = inspect.getsource(mod.StableDiffusionSafetyChecker.forward)
    src = "\n".join(line[4:] for line in src.splitlines())
    for old, new in [("adjustment = 0.01", "adjustment = ADJ + 0.01"), ("adjustment = 0.0\n", "adjustment = ADJ\n"),
                     ("round(concept_cos - concept_threshold + adjustment, 3)",
                      "_raw(concept_cos - concept_threshold + adjustment)"),
                     ("has_nsfw_concepts = [", "RESULTS.extend(result)\n    has_nsfw_concepts = [")]:
        assert old in src, old
        src = src.replace(old, new)
    raw = []

    def _raw(x):
        raw.append(np.float32(x))
        return round(x, 3)
    ns = {**vars(mod), "ADJ": adjustment, "_raw": _raw, "RESULTS": []}
    exec(src, ns)
    images = [np.zeros((2, 2, 3)) for _ in range(pixel_values.shape[0])]
    _, flags = ns["forward"](checker, pixel_values, images)
    return ns["RESULTS"], flags, raw


def write_tiny() -> None:
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor, CLIPImageProcessorPil
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance

    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    checker = make_checker(TINY_VISION, TINY_TEXT, 16)
    randomize(checker, g)

    refs = TINY / "refs"
    fe_dir, sc_dir = TINY / "feature_extractor", TINY / "safety_checker"
    fe_dir.mkdir(exist_ok=True)
    sc_dir.mkdir(exist_ok=True)
    (fe_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2, sort_keys=True) + "\n")
    for i, img in enumerate(test_images(g)):
        img.save(refs / f"safety_{i}.png", optimize=True)
    images = [Image.open(refs / f"safety_{i}.png").convert("RGB") for i in range(len(IMAGE_SIZES))]

    pil = CLIPImageProcessorPil.from_pretrained(fe_dir)
    tv = CLIPImageProcessor.from_pretrained(fe_dir)
    assert pil.backend == "pil" and tv.backend == "torchvision", (pil.backend, tv.backend)
    px = pil(images, return_tensors="pt").pixel_values.float()
    px_tv = tv(images, return_tensors="pt").pixel_values.float()
    assert px.shape == (4, 3, 32, 32), px.shape

    # Concept embeddings: least-squares solutions c with unit(e_i) . c = target_i over the 4 images.
    with torch.no_grad():
        e = checker.visual_projection(checker.vision_model(px)[1])
    u = torch.nn.functional.normalize(e).double()
    pinv = torch.linalg.pinv(u)  # [16, 4]

    def aimed(target):
        return (pinv @ torch.tensor(target, dtype=torch.float64)).float()
    concept = torch.randn(17, 16, generator=g)
    special = torch.randn(3, 16, generator=g)
    concept[0] = aimed([1, -1, -1, -1])    # image 0: flagged by a wide margin
    concept[1] = aimed([-1, 1, -1, -1])    # image 1: 0.004 below, flagged only through its special-care hit
    concept[2] = aimed([-1, -1, -1, 1])    # image 3: 0.03 above, unflagged at adjustment -0.05
    special[0] = aimed([-1, 1, -1, -1])    # image 1: special care, 0.03 above
    special[1] = aimed([-1, 1, -1, -1])    # image 1: 0.004 below before the hit raises the adjustment
    with torch.no_grad():
        cos = cosine_distance(e, concept).double()
        scos = cosine_distance(e, special).double()
    cw = cos.max(0).values + 0.1                  # every other concept: 0.1 below its threshold for all images
    sw = scos.max(0).values + 0.1
    cw[0], cw[1], cw[2] = cos[0, 0] - 0.07, cos[1, 1] + 0.0042, cos[3, 2] - 0.03
    sw[0], sw[1] = scos[1, 0] - 0.03, scos[1, 1] + 0.0042
    print("cosines of the aimed embeddings:", cos[:, :3].T.numpy().round(4), scos[:, :2].T.numpy().round(4))
    others = [(0, [1, 2, 3]), (1, [0, 2, 3]), (2, [0, 1, 2])]
    for j, rows in others:
        assert (cos[rows, j] - cw[j]).max() < -0.02, (j, cos[:, j], cw[j])
    assert (scos[[0, 2, 3], 0] - sw[0]).max() < -0.02
    with torch.no_grad():
        checker.concept_embeds.copy_(concept)
        checker.special_care_embeds.copy_(special)
        checker.concept_embeds_weights.copy_(cw.float())
        checker.special_care_embeds_weights.copy_(sw.float())

    checker.config.to_json_file(sc_dir / "config.json")
    save_file({k: v.contiguous() for k, v in legacy_state_dict(checker).items()}, sc_dir / "model.safetensors")

    # Everything below runs on the checker as loaded back from the files.
    loaded = StableDiffusionSafetyChecker.from_pretrained(sc_dir).eval()
    for k, v in checker.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert "vision_model.vision_model.embeddings.position_ids" in load_file(sc_dir / "model.safetensors")

    tensors, how = {}, {}

    def put(name, t, recipe):
        tensors[name] = torch.as_tensor(t).contiguous()
        how[name] = recipe
    with torch.no_grad():
        embeds = loaded.visual_projection(loaded.vision_model(px)[1])
        embeds_tv = loaded.visual_projection(loaded.vision_model(px_tv)[1])
        ccos = cosine_distance(embeds, loaded.concept_embeds)
        sccos = cosine_distance(embeds, loaded.special_care_embeds)
    put("pixel_values", px, "CLIPImageProcessorPil.from_pretrained(feature_extractor/)(images).pixel_values [4,3,32,32] "
        "(the PIL path: Pillow bicubic resize on uint8, center crop, x/255 in f64 -> f32, (x-mean)/std in f32); "
        "images = refs/safety_{0..3}.png opened with PIL, .convert('RGB')")
    put("image_embeds", embeds, "visual_projection(vision_model(pixel_values).pooler_output) [4,16]")
    put("image_embeds_torchvision", embeds_tv, "the same from pixel_values_torchvision = CLIPImageProcessor."
        "from_pretrained(feature_extractor/)(images).pixel_values in transformers 5 (torchvision backend: tvF.resize "
        "bicubic with antialias on the uint8 tensor; not stored, its difference to pixel_values is in the metadata)")
    put("concept_cos", ccos, "diffusers cosine_distance(image_embeds, concept_embeds) [4,17]")
    put("special_cos", sccos, "diffusers cosine_distance(image_embeds, special_care_embeds) [4,3]")
    for tag, adj in ADJUSTMENTS.items():
        for suffix, pv in [("", px), ("_torchvision", px_tv)]:
            results, flags, raw = diffusers_forward(loaded, pv, adj)
            n = len(results)
            raw = np.array(raw, dtype=np.float32).reshape(n, 20)
            t = f"{tag}{suffix}"
            recipe = (f"diffusers StableDiffusionSafetyChecker.forward (its own source, with `adjustment = 0.0` -> {adj} and "
                      f"`adjustment = 0.01` -> {adj} + 0.01) on pixel_values{suffix}")
            if suffix:  # the torchvision path: its verdicts only, to measure what the resize changes
                put(f"concept_scores_{t}", np.array([[r["concept_scores"][j] for j in range(17)] for r in results],
                                                     np.float32), recipe + ": result['concept_scores']")
                put(f"nsfw_{t}", np.array([float(f) for f in flags], np.float32), recipe + ": has_nsfw_concepts as 0/1")
                continue
            put(f"special_scores_raw_{t}", raw[:, :3], recipe + ": concept_cos - threshold + adjustment per special concept "
                "(numpy float32) before round(.., 3)")
            put(f"concept_scores_raw_{t}", raw[:, 3:], recipe + ": the same per concept")
            put(f"special_scores_{t}", np.array([[r["special_scores"][j] for j in range(3)] for r in results], np.float32),
                recipe + ": result['special_scores'] (rounded to 3 decimals)")
            put(f"concept_scores_{t}", np.array([[r["concept_scores"][j] for j in range(17)] for r in results], np.float32),
                recipe + ": result['concept_scores']")
            put(f"special_care_{t}", np.array([float(len(r["special_care"]) > 0) for r in results], np.float32),
                recipe + ": 1 where result['special_care'] is non-empty")
            put(f"nsfw_{t}", np.array([float(f) for f in flags], np.float32), recipe + ": has_nsfw_concepts as 0/1")
    print("flags adj0:", tensors["nsfw_adj0"].tolist(), "special:", tensors["special_care_adj0"].tolist())
    print("flags adjm005:", tensors["nsfw_adjm005"].tolist(), "special:", tensors["special_care_adjm005"].tolist())
    assert tensors["nsfw_adj0"].tolist() == [1, 1, 0, 1], tensors["nsfw_adj0"]
    assert tensors["special_care_adj0"].tolist() == [0, 1, 0, 0]
    assert tensors["nsfw_adjm005"].tolist() == [1, 0, 0, 0], tensors["nsfw_adjm005"]
    d = (px - px_tv).abs()
    tv_diff = (f"PIL vs torchvision pixel_values: max |d| {d.max():.4f}, mean {d.mean():.6f}, "
               f"{int((d > 0).sum())} of {d.numel()} differ; image_embeds max |d| {(embeds - embeds_tv).abs().max():.2e}")
    print(tv_diff)
    meta = {"torchvision_vs_pil": tv_diff, "how": json.dumps(how), "versions": json.dumps(versions()),
            "adjustments": json.dumps(ADJUSTMENTS), "seed": str(SEED)}
    save_file(tensors, refs / "safety.safetensors", metadata=meta)
    for f in [sc_dir / "model.safetensors", refs / "safety.safetensors"]:
        f.chmod(0o644)
    print("wrote", refs / "safety.safetensors", {k: list(v.shape) for k, v in tensors.items()})


def write_manifest() -> None:
    out = REPO / "models/manifests/sd15-diffusers-safety_checker.json"
    with torch.device("meta"):
        checker = make_checker(FULL_VISION, FULL_TEXT, 768)
        sd = legacy_state_dict(checker)
    st = {torch.float32: "F32", torch.int64: "I64"}
    tensors = {k: {"shape": list(v.shape), "dtype": st[v.dtype]} for k, v in sorted(sd.items())}
    ver = ", ".join(f"{k} {v}" for k, v in versions().items() if k in ("torch", "diffusers", "transformers"))
    doc = {"layout": "diffusers folder: safety_checker/model.safetensors",
           "source": "models/make_sd15_safety_fixtures.py --manifest: built on the meta device from the published "
                     "CompVis/stable-diffusion-safety-checker config (ViT-L/14 vision tower, projection_dim 768); "
                     "diffusers StableDiffusionSafetyChecker.state_dict() under the transformers-4.x names "
                     "(`vision_model.vision_model.*`) plus the int64 buffer "
                     f"vision_model.vision_model.embeddings.position_ids [1,257], as SD 1.5's file has them ({ver})",
           "num_tensors": len(tensors),
           "num_elements": int(sum(v.numel() for k, v in sd.items() if v.is_floating_point())),
           "tensors": tensors}
    head = json.dumps({k: v for k, v in doc.items() if k != "tensors"}, indent=1)[:-2]
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in tensors.items())
    text = head + ',\n "tensors": {\n' + body + "\n }\n}\n"
    assert json.loads(text) == doc
    out.write_text(text)
    print(f"{out}: {len(tensors)} tensors, {doc['num_elements'] / 1e6:.1f} M elements")


def write_full(root: Path) -> None:
    from safetensors.torch import save_file
    checker = make_checker(FULL_VISION, FULL_TEXT, 768)
    randomize(checker, torch.Generator().manual_seed(SEED))
    (root / "safety_checker").mkdir(parents=True, exist_ok=True)
    (root / "feature_extractor").mkdir(parents=True, exist_ok=True)
    checker.config.to_json_file(root / "safety_checker/config.json")
    save_file({k: v.contiguous() for k, v in legacy_state_dict(checker).items()},
              root / "safety_checker/model.safetensors")
    (root / "feature_extractor/preprocessor_config.json").write_text(json.dumps(SD15_PREPROCESSOR, indent=2))
    print("wrote", root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", action="store_true")
    ap.add_argument("--full", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.manifest:
        write_manifest()
    elif a.full:
        write_full(a.full)
    else:
        write_tiny()


if __name__ == "__main__":
    sys.exit(main())
