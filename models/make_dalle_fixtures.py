#!/usr/bin/env python3
"""kiln fixture generator: DALL-E Mini / Mega test models, reference tensors and key manifests.

Run by hand only (never by CI).  Needs the reference venv plus min-dalle and the dalle-mini text code:

    .venv-ref/bin/pip install min-dalle msgpack ftfy unidecode
    .venv-ref/bin/pip install --no-deps dalle-mini==0.1.5     # only model/text.py is loaded (by path)
    .venv-ref/bin/python models/make_dalle_fixtures.py tiny        # -> models/fixtures/dalle-tiny/ (committed)
    .venv-ref/bin/python models/make_dalle_fixtures.py manifests   # -> models/manifests/ (committed)
    .venv-ref/bin/python models/make_dalle_fixtures.py check-vqgan # our parametric VQGAN == min-dalle's (full size)
    .venv-ref/bin/python models/make_dalle_fixtures.py full --model mini   # -> .cache/dalle-mini-random (never committed)
                                              # (+ --device cuda on a GPU machine: fast, other random values)
    .venv-ref/bin/python models/make_dalle_fixtures.py bench --model mini  # min-dalle timing on this machine

Adapted from ../shared/reference/tools/dalle_reference.py (see dalle-mini.md there).  Nothing is
downloaded: weights are random under a fixed seed and the BPE vocabulary is a toy one trained here.

`tiny` builds min-dalle's own DalleBartEncoder/DalleBartDecoder (2 layers, d 64) and a small VQGAN of
the taming architecture (ch 32, ch_mult (2,1,1,1,1), 16x16 codes -> 256x256; `check-vqgan` shows that
this parametric module equals min-dalle's VQGanDetokenizer at the published size).  The image side
uses a 1024-entry codebook (start token 1024) so that the fixtures stay small; all weights are rounded
to fp16 first, so the fp16 and fp32 files hold the same numbers.  It writes

  mindalle/dalle_bart_tiny/{encoder.pt,decoder.pt}   torch.save state dicts, fp16, min-dalle key names
                                                     (the scale-less LayerNorm weights are absent, as in
                                                     min-dalle's converted files), + config.json,
                                                     vocab.json, merges.txt
  mindalle/vqgan/{detoker.pt,config.json}            fp16
  flax/{flax_model.msgpack (fp32), config.json, vocab.json, merges.txt}   published DalleBart key tree
  flax/vqgan/{flax_model.msgpack (fp16), config.json}                     vqgan-jax key tree (decoder half)
  refs.safetensors + refs.json                       reference tensors (fp32 compute), described
  text_cases.json                                    normaliser / tokenizer references
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)
torch.set_grad_enabled(False)

REPO = Path(__file__).resolve().parent.parent
TINY_OUT = REPO / "models" / "fixtures" / "dalle-tiny"
MANIFESTS = REPO / "models" / "manifests"
TEXT_LEN = 64
IMAGE_LEN = 256

SHAPES = {
    "mini": dict(layers=12, d_model=1024, heads=16, ffn=2730, text_vocab=50264, image_vocab=16384, codebook=16384),
    "mega": dict(layers=24, d_model=2048, heads=32, ffn=4096, text_vocab=50272, image_vocab=16415, codebook=16384),
}
VQGAN_FULL = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], z_channels=256,
                  embed_dim=256, n_embed=16384, resolution=256, out_ch=3, in_channels=3)
VQGAN_TINY = dict(ch=32, ch_mult=[2, 1, 1, 1, 1], num_res_blocks=2, attn_resolutions=[16], z_channels=16,
                  embed_dim=16, n_embed=1024, resolution=256, out_ch=3, in_channels=3)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TOY_CORPUS = (
    "a photo of a cat sitting on a red chair . an avocado armchair in the shape of an avocado , "
    "sunset over a lake in the mountains ; the eiffel tower landing on the moon ! a painting of a dog "
    "wearing a hat , a drawing of a house with a garden and trees . a bowl of soup that looks like a "
    "monster , made of plastic . a teapot shaped like a pumpkin , 3d render of a robot reading a book "
    "the cat and the dog are friends , two people walking on the beach at night with stars in the sky "
    "red heart pizza grinning face 1000 50 % $ 3.5 12/25 it's john's cafe deja vu naive resume zurich"
)
# Normaliser / tokenizer cases: punctuation, hyphens, numbers, unicode, emoji, html, > 64 tokens.
TEXT_CASES = [
    "a photo of a cat sitting on a red chair",
    "Sunset over a lake, in the mountains!",
    "an avocado-armchair 3d render",
    "The 1,000,000th visitor paid $3.50 on 12/25/2021 -- 50% off!!",
    "Café déjà vu: naïve résumé in Zürich",
    "I \u2764\ufe0f pizza \U0001F355 and \U0001F600",
    "<person> and <person> walking on the beach",
    "[12] a house <b>with</b> a garden http://example.com/x.png it's John's dog, they'd've",
    "Sooooo coooool!!!! ... ??? ;; hello|world {x} = y + z ~ w",
    "\u201csmart quotes\u201d and 'single' and `backticks` _under_score_ back\\slash",
    "fish &amp; chips &amp;amp; peas &lt;3",
    "  tabs\tand\nnewlines   and    spaces  ",
    "3.5 stars, a.b.c & 100*2 / 7",
    "a painting of a dog wearing a hat with stars in the sky at night " * 6,
    "ＦＵＬＬＷＩＤＴＨ ﬁsh",
]


# ---------------------------------------------------------------------------------------------
# toy byte-level BPE (file format of GPT-2/BART/dalle-mini)
# ---------------------------------------------------------------------------------------------
def train_toy_bpe(corpus: str, vocab_limit: int):
    space = chr(ord(" ") + 256)  # 'Ġ'
    alphabet = [space] + [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    words = {}
    for w in corpus.split():
        key = tuple([space] + list(w))
        words[key] = words.get(key, 0) + 1
    merges = []
    while len(vocab) < vocab_limit:
        counts = {}
        for w, n in words.items():
            for a, b in zip(w[:-1], w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + n
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        if counts[best] < 2:
            break
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        new_words = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    return vocab, merges


def write_tokenizer(d: Path, vocab: dict, merges: list):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf8")
    (d / "merges.txt").write_text("\n".join(["#version: 0.2"] + [f"{a} {b}" for a, b in merges]) + "\n", encoding="utf8")


# ---------------------------------------------------------------------------------------------
# flax msgpack (format of flax.serialization.msgpack_serialize)
# ---------------------------------------------------------------------------------------------
def write_flax_msgpack(path: Path, tree: dict):
    import msgpack

    def default(obj):
        if isinstance(obj, np.ndarray):
            payload = msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(1, payload)
        raise TypeError(type(obj))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb(tree, default=default, strict_types=True, use_bin_type=True))


def nest(flat: dict) -> dict:
    root: dict = {}
    for key, val in flat.items():
        node = root
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = val
    return root


# ---------------------------------------------------------------------------------------------
# key mapping min-dalle <-> flax (same rules as the reference script)
# ---------------------------------------------------------------------------------------------
SCALELESS = ("pre_self_attn_layer_norm.weight", "pre_encoder_attn_layer_norm.weight", "glu.ln0.weight", "glu.ln1.weight")


def is_scaleless(name: str) -> bool:
    return name.endswith(SCALELESS) or name == "final_ln.weight"


LAYER_MAP = {
    "pre_self_attn_layer_norm": "LayerNorm_0", "self_attn": "FlaxBartAttention_0", "self_attn_layer_norm": "LayerNorm_1",
    "pre_encoder_attn_layer_norm": "LayerNorm_2", "encoder_attn": "FlaxBartAttention_1",
    "encoder_attn_layer_norm": "LayerNorm_3", "glu.ln0": "GLU_0.LayerNorm_0", "glu.fc0": "GLU_0.Dense_0",
    "glu.fc1": "GLU_0.Dense_1", "glu.ln1": "GLU_0.LayerNorm_1", "glu.fc2": "GLU_0.Dense_2",
}


def flax_name(side: str, name: str, shape):
    """min-dalle key (one layer) -> (flax key, flax shape per layer or None if the key is not in flax)."""
    if is_scaleless(name):
        return None, None
    if name.startswith("layers."):
        _, _, rest = name.split(".", 2)
        module, leaf = rest.rsplit(".", 1)
        for tp in ("self_attn", "encoder_attn"):
            if module.startswith(tp + "."):
                sub = LAYER_MAP[tp] + module[len(tp):]
                break
        else:
            sub = LAYER_MAP[module]
        if leaf == "weight" and len(shape) == 2:
            leaf, shape = "kernel", tuple(reversed(shape))
        elif leaf == "weight":
            leaf = "scale"
        stack = "FlaxBart{}Layers".format(side.title())
        return f"model.{side}.layers.{stack}.{sub}.{leaf}", tuple(shape)
    if name == "lm_head.weight":
        return "lm_head.kernel", tuple(reversed(shape))
    if name in ("embed_tokens.weight", "embed_positions.weight"):
        return f"model.{side}.{name.split('.')[0]}.embedding", tuple(shape)
    mod, leaf = name.split(".")
    return f"model.{side}.{mod}.{'scale' if leaf == 'weight' else leaf}", tuple(shape)


def dallebart_to_flax(enc_sd: dict, dec_sd: dict, layers: int) -> dict:
    flat, per_layer = {}, {}
    for side, sd in (("encoder", enc_sd), ("decoder", dec_sd)):
        for name, arr in sd.items():
            key, _ = flax_name(side, name, arr.shape)
            if key is None:
                continue
            if arr.ndim == 2 and (name.endswith("proj.weight") or ".fc" in name or name == "lm_head.weight"):
                arr = arr.T
            if name.startswith("layers."):
                per_layer.setdefault(key, {})[int(name.split(".")[1])] = arr
            else:
                flat[key] = arr
    for key, by_layer in per_layer.items():
        flat[key] = np.stack([by_layer[i] for i in range(layers)])
    return {k: np.ascontiguousarray(v) for k, v in flat.items()}


def vqgan_flax_name(name: str, shape):
    if name == "embedding.weight":
        return "quantize.embedding.embedding", tuple(shape)
    parts, out, i = name.split("."), [], 0
    while i < len(parts):
        p = parts[i]
        if p in ("up", "down", "block", "attn") and i + 1 < len(parts) and parts[i + 1].isdigit():
            out.append(f"{p}_{parts[i + 1]}")
            i += 2
        else:
            out.append(p)
            i += 1
    if out[-1] == "weight" and len(shape) == 4:
        out[-1], shape = "kernel", (shape[2], shape[3], shape[1], shape[0])
    elif out[-1] == "weight":
        out[-1] = "scale"
    return ".".join(out), tuple(shape)


def vqgan_to_flax(sd: dict) -> dict:
    flat = {}
    for name, arr in sd.items():
        key, _ = vqgan_flax_name(name, arr.shape)
        if arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        flat[key] = np.ascontiguousarray(arr)
    return flat


# ---------------------------------------------------------------------------------------------
# parametric VQGAN (taming architecture, min-dalle / taming key names)
# ---------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=eps)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(torch.bmm(q, k) / math.sqrt(c), dim=2)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpLevel(nn.Module):
    def __init__(self, cin, cout, n_blocks, attn, upsample, eps):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout, eps) for j in range(n_blocks)])
        if attn:
            self.attn = nn.ModuleList([AttnBlock(cout, eps) for _ in range(n_blocks)])
        if upsample:
            self.upsample = Upsample(cout)

    def forward(self, h):
        for j, blk in enumerate(self.block):
            h = blk(h)
            if hasattr(self, "attn"):
                h = self.attn[j](h)
        return self.upsample(h) if hasattr(self, "upsample") else h


class Mid(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c, eps), AttnBlock(c, eps), ResnetBlock(c, c, eps)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class VqDecoder(nn.Module):
    def __init__(self, cfg, eps):
        super().__init__()
        mult, ch = cfg["ch_mult"], cfg["ch"]
        nlev = len(mult)
        block_in = ch * mult[-1]
        res = cfg["resolution"] // 2 ** (nlev - 1)
        self.conv_in = nn.Conv2d(cfg["z_channels"], block_in, 3, padding=1)
        self.mid = Mid(block_in, eps)
        levels = [None] * nlev
        for i in reversed(range(nlev)):
            cout = ch * mult[i]
            levels[i] = UpLevel(block_in, cout, cfg["num_res_blocks"] + 1, res in cfg["attn_resolutions"], i != 0, eps)
            block_in = cout
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(32, block_in, eps=eps)
        self.conv_out = nn.Conv2d(block_in, cfg["out_ch"], 3, padding=1)

    def forward(self, z, taps=None):
        h = self.mid(self.conv_in(z))
        if taps is not None:
            taps["vq_mid"] = h
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if taps is not None:
                taps[f"vq_up{i}"] = h
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class VqDetokenizer(nn.Module):
    def __init__(self, cfg, eps):
        super().__init__()
        self.embedding = nn.Embedding(cfg["n_embed"], cfg["embed_dim"])
        self.post_quant_conv = nn.Conv2d(cfg["embed_dim"], cfg["z_channels"], 1)
        self.decoder = VqDecoder(cfg, eps)

    def forward(self, tokens, taps=None):  # tokens [n, 256] -> raw [n, 3, 256, 256]
        n, s = tokens.shape
        g = int(math.isqrt(s))
        z = self.embedding(tokens).view(n, g, g, -1).permute(0, 3, 1, 2).contiguous()
        zq = self.post_quant_conv(z)
        if taps is not None:
            taps["vq_codes_nchw"], taps["vq_post_quant"] = z, zq
        return self.decoder(zq, taps)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def random_value(name, shape, gen, scaleless=lambda n: False):
    """randomize_'s value of one parameter (fp32, on gen's device)."""
    dev = gen.device
    if name.endswith("weight") and len(shape) == 1:
        return torch.ones(shape, device=dev) if scaleless(name) else 1.0 + 0.2 * torch.randn(shape, generator=gen, device=dev)
    if name.endswith("bias"):
        return 0.1 * torch.randn(shape, generator=gen, device=dev)
    if "embed" in name:
        return torch.randn(shape, generator=gen, device=dev)
    return torch.randn(shape, generator=gen, device=dev) / math.sqrt(int(np.prod(shape[1:])))


def randomize_(module, gen, scaleless=lambda n: False):
    """Deterministic random init in named-parameter order, rounded to fp16-representable values."""
    for name, p in module.named_parameters():
        p.copy_(random_value(name, tuple(p.shape), gen, scaleless).half().float())


def random_half_state(make, gen, scaleless=lambda n: False, keep=lambda n: True) -> dict:
    """randomize_'s values as a CPU fp16 state dict, drawn on gen's device, of the module `make()` builds
    on the meta device: no default init, no fp32 copy on the host (make_full --device cuda)."""
    with torch.device("meta"):
        module = make()
    named = list(module.named_parameters())
    assert [n for n, _ in named] == list(module.state_dict()), "buffers would need values too"
    return {n: random_value(n, tuple(p.shape), gen, scaleless).half().cpu() for n, p in named if keep(n)}


def tap(module, store: dict, key: str, pick=lambda o: o):
    orig = module.forward

    def wrapped(*a, **kw):
        o = orig(*a, **kw)
        if key not in store:
            store[key] = pick(o).detach().clone()
        return o

    module.forward = wrapped
    return lambda: delattr(module, "forward")


def sample_token(lg: np.ndarray, codebook: int, s: float, top_k: int, top_p: float, temperature: float, u: float) -> int:
    """kiln's documented sampler (same rule as the reference script, plus HF-style top-p)."""
    l = (1.0 - s) * lg[0, :codebook].astype(np.float64) + s * lg[1, :codebook].astype(np.float64)
    kth = np.sort(l)[::-1][min(top_k, codebook) - 1]
    p = np.exp((l - l.max()) / temperature) * (l >= kth)
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order]) / p.sum()
        keep_sorted = np.concatenate([[True], cum[:-1] < top_p])
        keep = np.zeros_like(p, dtype=bool)
        keep[order[keep_sorted]] = True
        p = p * keep
    c = np.cumsum(p)
    return int(np.searchsorted(c, u * c[-1], side="right"))


def bart_config(L, d, H, F, Vt, Vi, start, codebook):
    """config.json in the layout of dalle-mini's published DalleBartConfig (the fields kiln reads)."""
    return {
        "architectures": ["eBart"], "model_type": "dallebart", "d_model": d, "encoder_layers": L, "decoder_layers": L,
        "encoder_attention_heads": H, "decoder_attention_heads": H, "encoder_ffn_dim": F, "decoder_ffn_dim": F,
        "encoder_vocab_size": Vt, "image_vocab_size": Vi, "image_length": IMAGE_LEN, "max_text_length": TEXT_LEN,
        "decoder_start_token_id": start, "bos_token_id": codebook + 1, "eos_token_id": codebook + 1,
        "pad_token_id": codebook + 1, "activation_function": "gelu", "ln_type": "layernorm",
        "ln_positions": "normformer", "use_glu": True, "use_bias": False, "force_ln_scale": False,
        "use_final_ln_encoder": True, "use_final_ln_decoder": True, "use_head_scale": False,
        "use_cosine_attention": False, "use_deepnet_scaling": False, "use_alibi": False,
        "use_swin_position_embeddings": False, "use_absolute_position_embeddings": True, "scale_embedding": False,
        "sinkhorn_iters": 1, "tie_word_embeddings": False, "normalize_text": True,
        "min_length": IMAGE_LEN + 1, "max_length": IMAGE_LEN + 1, "dropout": 0.0, "init_std": 0.02,
    }


def vqgan_config(cfg):
    return dict(cfg, dropout=0.0, double_z=False, resamp_with_conv=True, give_pre_end=False,
                architectures=["VQModel"])


def text_module():
    import site
    for sp in site.getsitepackages():
        p = Path(sp) / "dalle_mini" / "model" / "text.py"
        if p.is_file():
            spec = importlib.util.spec_from_file_location("dm_text", p)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    raise SystemExit("dalle_mini/model/text.py not found: pip install --no-deps dalle-mini==0.1.5")


def import_min_dalle():
    from min_dalle.models import DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer
    from min_dalle.text_tokenizer import TextTokenizer
    return DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer, TextTokenizer


# ---------------------------------------------------------------------------------------------
# tiny fixtures
# ---------------------------------------------------------------------------------------------
def text_cases(tok_dir: Path, vocab: dict, merges_lines: list):
    """Normaliser output (dalle-mini TextNormalizer), HF BartTokenizerFast ids, min-dalle ids."""
    import ftfy
    from transformers import BartTokenizerFast
    _, _, _, TextTokenizer = import_min_dalle()
    dm = text_module()

    class NoHashtags:  # the real one downloads a word list from the hub; no case has a '#'
        def __call__(self, s):
            return s

    dm.HashtagProcessor = NoHashtags
    norm = dm.TextNormalizer()
    hf = BartTokenizerFast(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges_lines])  # transformers 5 API
    md = TextTokenizer(vocab, merges_lines)
    steps = [("ftfy", ftfy.fix_text), ("fix_html", dm.fix_html), ("demojize", dm.emoji.demojize),
             ("unidecode", dm.unidecode)]
    out = []
    for text in TEXT_CASES:
        random.seed(0)
        n = norm(text)
        enc = hf([n], padding="max_length", truncation=True, max_length=TEXT_LEN)
        md_ids = md.tokenize(text)
        case = {"text": text, "normalized": n,
                "input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0],
                "min_dalle_ids": md_ids,
                "ftfy_changes_it": ftfy.fix_text(text) != text,
                "steps": {name: fn(text) for name, fn in steps}}
        out.append(case)
    unc = hf([""], padding="max_length", truncation=True, max_length=TEXT_LEN)
    extra = {"uncond_input_ids": unc["input_ids"][0], "uncond_attention_mask": unc["attention_mask"][0]}
    # every step of the normaliser on the examples of dalle-mini.md §5.1 and a few more
    fns = ["fix_html", "replace_person_token", "remove_wiki_ref", "remove_html_tags", "remove_urls",
           "remove_comma_numbers", "pre_process_dot_numbers", "pre_process_quotes", "pre_process_dates",
           "handle_special_chars", "ignore_chars", "simplify_quotes", "replace_punctuation_with_commas",
           "post_process_dot_numbers", "post_process_quotes", "post_process_dates", "remove_repeating_chars",
           "merge_quotes", "merge_commas", "remove_extra_spaces", "remove_first_last_commas"]
    step_inputs = ["Sunset over a lake, in the mountains!", "an avocado-armchair 3d render", "1,000,000 and 3,50",
                   "it's 3.5 on 12/25 a.b", "<person>, <person> and <person> at <b>x</b>", "[3] wiki [12]",
                   "http://x.y/z see https://a.b", "sooooo!!!! viii \"\" '' ``", "a-b 50% a&b $5 *x* c/d",
                   "_x#y\\z", "x , , ,y ,, z", "  a \t b\n c  ", ",a,", "don't we'll they've i'm he'd",
                   "x=y+z~w|v{u}[t](s):r;q?p!o.n,m-l/k", "fish &amp;amp; chips"]
    per_step = {f: [{"input": t, "output": getattr(dm, f)(t)} for t in step_inputs if "person" not in t or f == "replace_person_token"]
                for f in fns}
    extra["per_step"] = per_step
    return out, extra


def make_tiny(args):
    DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer, TextTokenizer = import_min_dalle()
    from safetensors.numpy import save_file as save_np
    out = Path(args.out)
    L, d, H, F, Vt = args.layers, args.d_model, args.heads, args.ffn, args.text_vocab
    codebook = VQGAN_TINY["n_embed"]
    Vi = args.image_vocab
    start, gn_eps = codebook, 1e-6  # dalle-mini's decoder_start_token_id and taming's GroupNorm eps

    vocab, merges = train_toy_bpe(TOY_CORPUS, args.toy_vocab)
    md_dir, fx_dir = out / "mindalle" / "dalle_bart_tiny", out / "flax"
    for dd in (md_dir, fx_dir):
        write_tokenizer(dd, vocab, merges)
    merges_lines = (md_dir / "merges.txt").read_text(encoding="utf8").split("\n")[1:-1]
    tokenizer = TextTokenizer(vocab, merges_lines)

    gen = torch.Generator().manual_seed(args.seed)
    enc = DalleBartEncoder(layer_count=L, embed_count=d, attention_head_count=H, text_vocab_count=Vt,
                           text_token_count=TEXT_LEN, glu_embed_count=F, device="cpu").eval()
    dec = DalleBartDecoder(image_vocab_count=Vi, embed_count=d, attention_head_count=H, glu_embed_count=F,
                           layer_count=L, device="cpu").eval()
    vq = VqDetokenizer(VQGAN_TINY, gn_eps).eval()
    randomize_(enc, gen, is_scaleless)
    randomize_(dec, gen, is_scaleless)
    randomize_(vq, gen)

    enc_sd = {k: v.contiguous() for k, v in enc.state_dict().items() if not is_scaleless(k)}
    dec_sd = {k: v.contiguous() for k, v in dec.state_dict().items() if not is_scaleless(k)}
    vq_sd = {k: v.contiguous() for k, v in vq.state_dict().items()}
    cfg = bart_config(L, d, H, F, Vt, Vi, start, codebook)
    for dd in (md_dir, fx_dir):
        (dd / "config.json").write_text(json.dumps(cfg, indent=1))
    torch.save({k: v.half() for k, v in enc_sd.items()}, md_dir / "encoder.pt")
    torch.save({k: v.half() for k, v in dec_sd.items()}, md_dir / "decoder.pt")
    (out / "mindalle" / "vqgan").mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in vq_sd.items()}, out / "mindalle" / "vqgan" / "detoker.pt")
    (out / "mindalle" / "vqgan" / "config.json").write_text(json.dumps(vqgan_config(VQGAN_TINY), indent=1))
    flax_bart = dallebart_to_flax({k: v.numpy() for k, v in enc_sd.items()}, {k: v.numpy() for k, v in dec_sd.items()}, L)
    # fp32 DalleBart and fp16 VQGAN here (the published files are the other way round for mega):
    # both dtypes of the msgpack reader are covered and the fixture stays under 6 MB
    write_flax_msgpack(fx_dir / "flax_model.msgpack", nest(flax_bart))
    vq_flax = vqgan_to_flax({k: v.numpy() for k, v in vq_sd.items()})
    write_flax_msgpack(fx_dir / "vqgan" / "flax_model.msgpack", nest({k: v.astype(np.float16) for k, v in vq_flax.items()}))
    (fx_dir / "vqgan" / "config.json").write_text(json.dumps(vqgan_config(VQGAN_TINY), indent=1))

    refs, desc = {}, {}

    def put(name, arr, text):
        a = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
        refs[name] = np.ascontiguousarray(a)
        desc[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "what": text}

    # --- encoder: row 0 unconditional, row 1 the prompt (min-dalle's tokenisation) ---
    ids = tokenizer.tokenize(args.prompt)[:TEXT_LEN]
    text_tokens = np.ones((2, TEXT_LEN), dtype=np.int64)
    text_tokens[0, :2] = [0, 2]
    text_tokens[1, :len(ids)] = ids
    tt = torch.tensor(text_tokens)
    caps = {}
    hooks = [tap(enc.layernorm_embedding, caps, "enc_embed_ln")] + [tap(l, caps, f"enc_layer{i}") for i, l in enumerate(enc.layers)]
    enc_state = enc.forward(tt)
    for undo in hooks:
        undo()
    put("text_tokens", tt, "row 0 = unconditional ('<s></s>' + pad 1), row 1 = prompt (min-dalle tokenizer)")
    put("enc_embed_ln", caps["enc_embed_ln"], "layernorm_embedding(embed_tokens + embed_positions)")
    for i in range(L):
        put(f"enc_layer{i}", caps[f"enc_layer{i}"], f"output of encoder layer {i}")
    put("encoder_state", enc_state, "encoder output after final_ln")

    # --- decoder, cached, one image (rows: uncond, cond) ---
    mask = tt.not_equal(1)[:, None, None, :]
    rng = np.random.default_rng(args.seed)
    uniforms = rng.random(IMAGE_LEN)

    def run_decoder(pick, capture=False):
        state = torch.zeros((L, 4, IMAGE_LEN, d))
        seq = torch.full((1, IMAGE_LEN + 1), start, dtype=torch.long)
        all_logits = np.zeros((IMAGE_LEN, 2, Vi + 1), dtype=np.float32)
        step_caps, hk = {}, []
        if capture:
            hk.append(tap(dec.layernorm_embedding, step_caps, "dec_step0_embed_ln"))
            hk += [tap(l, step_caps, f"dec_step0_layer{i}", pick=lambda o: o[0]) for i, l in enumerate(dec.layers)]
        for t in range(IMAGE_LEN):
            logits, state = dec.forward(attention_mask=mask, encoder_state=enc_state, attention_state=state,
                                        prev_tokens=seq[:, [t]], token_index=torch.tensor([t]))
            if t == 0:
                for undo in hk:
                    undo()
            lg = logits[:, -1].float().numpy()
            all_logits[t] = lg
            seq[:, t + 1] = pick(t, lg)
        return seq[0, 1:], all_logits, step_caps

    s, k, T = args.supercondition, args.top_k, args.temperature
    seq, logits_all, step_caps = run_decoder(lambda t, lg: sample_token(lg, codebook, s, k, 1.0, T, uniforms[t]), True)
    put("decoder_start_token", np.array([start], dtype=np.int64), "token fed at step 0")
    put("uniforms", uniforms, "u_t of the inverse-CDF sampler at step t (float64)")
    put("logits_first", logits_all[:args.logit_steps],
        f"[step, row, rows] lm_head output of the first {args.logit_steps} cached steps (row 0 uncond, row 1 cond); "
        "step t was fed token image_tokens[t-1] (the start token at t = 0)")
    put("image_tokens", seq, f"256 tokens sampled with s={s}, top_k={k}, T={T} from `uniforms`")
    put("dec_step0_embed_ln", step_caps["dec_step0_embed_ln"], "decoder layernorm_embedding output at step 0")
    for i in range(L):
        put(f"dec_step0_layer{i}", step_caps[f"dec_step0_layer{i}"], f"decoder layer {i} output at step 0")

    def greedy(t, lg):
        comb = lg[0, :codebook] * (1 - s) + lg[1, :codebook] * s  # min-dalle's sample_tokens with top_k = 1
        return int(np.argmax(comb))

    gseq, _, _ = run_decoder(greedy)
    put("greedy_tokens", gseq, f"argmax of the super-conditioned logits (s={s}, top_k=1)")
    s2 = dict(s=10.0, top_k=50, top_p=0.9, temperature=0.7)
    seq2, _, _ = run_decoder(lambda t, lg: sample_token(lg, codebook, s2["s"], s2["top_k"], s2["top_p"], s2["temperature"], uniforms[t]))
    put("image_tokens2", seq2, f"256 tokens sampled with {s2} from `uniforms`")

    # --- VQGAN ---
    taps = {}
    raw = vq.forward(seq[None, :], taps)
    img = (raw.permute(0, 2, 3, 1).clip(0.0, 1.0) * 255)[0]
    for key in ("vq_post_quant", "vq_mid", "vq_up4"):
        put(key, taps[key], f"VQGAN intermediate {key} (NCHW) for image_tokens")
    put("vq_out_raw", raw, "conv_out output for image_tokens, NCHW, before clipping")
    put("image_u8", img.to(torch.uint8), "trunc(clip(raw,0,1)*255) as HWC uint8")
    graw = vq.forward(gseq[None, :])
    put("greedy_image_u8", (graw.permute(0, 2, 3, 1).clip(0.0, 1.0) * 255)[0].to(torch.uint8), "image of greedy_tokens")
    save_np(refs, str(out / "refs.safetensors"))

    cases, extra = text_cases(md_dir, vocab, merges_lines)
    (out / "text_cases.json").write_text(json.dumps({"cases": cases, **extra}, indent=1, ensure_ascii=False))
    meta = {"generator": "models/make_dalle_fixtures.py tiny", "seed": args.seed, "prompt": args.prompt,
            "layers": L, "d_model": d, "heads": H, "ffn_dim": F, "text_vocab": Vt, "image_vocab": Vi,
            "codebook": codebook, "decoder_start_token": start, "vqgan_groupnorm_eps": gn_eps,
            "sampling": {"s": s, "top_k": k, "temperature": T}, "sampling2": s2, "vqgan": VQGAN_TINY,
            "tensors": desc}
    (out / "refs.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({"out": str(out), "image_tokens[:16]": seq[:16].tolist(), "greedy[:16]": gseq[:16].tolist(),
                      "tokens2[:16]": seq2[:16].tolist()}))


# ---------------------------------------------------------------------------------------------
# checks, manifests, full-size weights, timing
# ---------------------------------------------------------------------------------------------
def check_vqgan(args):
    """Our parametric VQGAN at the published size == min-dalle's VQGanDetokenizer (same weights)."""
    _, _, VQGanDetokenizer, _ = import_min_dalle()
    md = VQGanDetokenizer().eval()
    gen = torch.Generator().manual_seed(1)
    randomize_(md, gen)
    ours = VqDetokenizer(VQGAN_FULL, 1e-5).eval()
    missing, unexpected = ours.load_state_dict(md.state_dict(), strict=True), None
    z = torch.randint(0, 16384, (1, 256), generator=gen)
    a = md.forward(False, z)
    b = (ours.forward(z).permute(0, 2, 3, 1).clip(0, 1) * 255)[0]
    print(json.dumps({"keys_equal": True, "max_abs_diff_0_255": float((a - b).abs().max())}))


def module_manifest(named):
    return {k: {"shape": list(v.shape), "dtype": "float16"} for k, v in named}


def make_manifests(args):
    DalleBartEncoder, DalleBartDecoder, _, _ = import_min_dalle()
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    for name, c in SHAPES.items():
        with torch.device("meta"):
            enc = DalleBartEncoder(layer_count=c["layers"], embed_count=c["d_model"], attention_head_count=c["heads"],
                                   text_vocab_count=c["text_vocab"], text_token_count=TEXT_LEN,
                                   glu_embed_count=c["ffn"], device="meta")
            dec = DalleBartDecoder(image_vocab_count=c["image_vocab"], embed_count=c["d_model"],
                                   attention_head_count=c["heads"], glu_embed_count=c["ffn"],
                                   layer_count=c["layers"], device="meta")
        enc_sd = {k: v for k, v in enc.state_dict().items() if not is_scaleless(k)}
        dec_sd = {k: v for k, v in dec.state_dict().items() if not is_scaleless(k)}
        cfg = bart_config(c["layers"], c["d_model"], c["heads"], c["ffn"], c["text_vocab"], c["image_vocab"],
                          c["codebook"], c["codebook"])
        md = {"what": f"min-dalle's converted dalle_bart_{name}/encoder.pt and decoder.pt (fp16 torch state dicts)",
              "config": cfg,
              "files": {"encoder.pt": module_manifest(enc_sd.items()), "decoder.pt": module_manifest(dec_sd.items())}}
        (MANIFESTS / f"dalle-{name}-min-dalle.json").write_text(json.dumps(md, indent=1))
        flat = {}
        for side, sd in (("encoder", enc_sd), ("decoder", dec_sd)):
            for k, v in sd.items():
                key, shape = flax_name(side, k, tuple(v.shape))
                if k.startswith("layers."):
                    shape = (c["layers"],) + shape
                flat[key] = {"shape": list(shape), "dtype": "float16" if name == "mega" else "float32"}
        fx = {"what": f"flax_model.msgpack of dalle-mini/dalle-{name} (scanned layers, kernels [in, out]); "
                      "dtype: mega-1-fp16 is float16, mini not verified (float32 assumed)",
              "config": cfg, "files": {"flax_model.msgpack": dict(sorted(flat.items()))}}
        (MANIFESTS / f"dalle-{name}-flax.json").write_text(json.dumps(fx, indent=1))
    with torch.device("meta"):
        vq = VqDetokenizer(VQGAN_FULL, 1e-6)
    vq_sd = vq.state_dict()
    md = {"what": "min-dalle's vqgan/detoker.pt (decoder half of the VQGAN, taming key names)",
          "config": vqgan_config(VQGAN_FULL), "files": {"detoker.pt": module_manifest(vq_sd.items())}}
    (MANIFESTS / "vqgan-f16-16384-min-dalle.json").write_text(json.dumps(md, indent=1))
    flat = {}
    for k, v in vq_sd.items():
        key, shape = vqgan_flax_name(k, tuple(v.shape))
        flat[key] = {"shape": list(shape), "dtype": "float32"}
    flat.update(vqgan_encoder_flax_keys(VQGAN_FULL))
    fx = {"what": "flax_model.msgpack of dalle-mini/vqgan_imagenet_f16_16384 (vqgan-jax names, conv kernels HWIO); "
                  "includes the encoder and quant_conv, which decoding does not use",
          "config": vqgan_config(VQGAN_FULL), "files": {"flax_model.msgpack": dict(sorted(flat.items()))}}
    (MANIFESTS / "vqgan-f16-16384-flax.json").write_text(json.dumps(fx, indent=1))
    print("manifests written to", MANIFESTS)


def vqgan_encoder_flax_keys(cfg):
    """Encoder half of the taming VQGAN in vqgan-jax naming (unused by decoding, present in the file)."""
    keys = {}

    def conv(name, cin, cout, k):
        keys[f"{name}.kernel"] = {"shape": [k, k, cin, cout], "dtype": "float32"}
        keys[f"{name}.bias"] = {"shape": [cout], "dtype": "float32"}

    def norm(name, c):
        keys[f"{name}.scale"] = {"shape": [c], "dtype": "float32"}
        keys[f"{name}.bias"] = {"shape": [c], "dtype": "float32"}

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin); conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout); conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    ch, mult = cfg["ch"], cfg["ch_mult"]
    conv("encoder.conv_in", cfg["in_channels"], ch, 3)
    res_, block_in = cfg["resolution"], ch
    in_mult = [1] + mult
    for i in range(len(mult)):
        block_in, block_out = ch * in_mult[i], ch * mult[i]
        for j in range(cfg["num_res_blocks"]):
            res(f"encoder.down_{i}.block_{j}", block_in, block_out)
            block_in = block_out
            if res_ in cfg["attn_resolutions"]:
                attn(f"encoder.down_{i}.attn_{j}", block_in)
        if i != len(mult) - 1:
            conv(f"encoder.down_{i}.downsample.conv", block_in, block_in, 3)
            res_ //= 2
    res("encoder.mid.block_1", block_in, block_in)
    attn("encoder.mid.attn_1", block_in)
    res("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, cfg["z_channels"], 3)
    conv("quant_conv", cfg["z_channels"], cfg["embed_dim"], 1)
    return keys


def make_full(args):
    """Full-size random weights in min-dalle's layout (fp16 .pt), for timing; never committed.

    The modules are built on the meta device (their default init, which randomize_ overwrites, is
    skipped; the CPU values are those of randomize_ as before); --device cuda draws the same
    distributions on the GPU instead (other values, same keys and shapes). On 2 busy cores mini took
    77 s wall / 15 s CPU / 1.9 GB RSS before, 48 s / 9 s / 1.3 GB so (byte-identical files); mega
    123 s / 25 s / 3.7 GB (was ~20 min, ~9 GB)."""
    DalleBartEncoder, DalleBartDecoder, _, _ = import_min_dalle()
    c = SHAPES[args.model]
    out = Path(args.out or REPO / ".cache" / f"dalle-{args.model}-random")
    bart = out / f"dalle_bart_{args.model}"
    bart.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gen = torch.Generator(device=args.device).manual_seed(0)
    dev = "meta"  # the modules are only shapes (random_half_state)
    make_enc = lambda: DalleBartEncoder(layer_count=c["layers"], embed_count=c["d_model"], attention_head_count=c["heads"],
                                        text_vocab_count=c["text_vocab"], text_token_count=TEXT_LEN,
                                        glu_embed_count=c["ffn"], device=dev)
    make_dec = lambda: DalleBartDecoder(image_vocab_count=c["image_vocab"], embed_count=c["d_model"],
                                        attention_head_count=c["heads"], glu_embed_count=c["ffn"],
                                        layer_count=c["layers"], device=dev)
    make_vq = lambda: VqDetokenizer(VQGAN_FULL, 1e-6)
    saved = lambda k: not is_scaleless(k)
    for make, path, scaleless, keep in ((make_enc, bart / "encoder.pt", is_scaleless, saved),
                                        (make_dec, bart / "decoder.pt", is_scaleless, saved),
                                        (make_vq, out / "vqgan" / "detoker.pt", lambda n: False, lambda n: True)):
        sd = random_half_state(make, gen, scaleless, keep)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, path)
        print(f"  {path.relative_to(out)}: {sum(v.numel() for v in sd.values()) / 1e6:.1f} M params "
              f"({time.time() - t0:.1f}s)", flush=True)
        del sd
    cfg = bart_config(c["layers"], c["d_model"], c["heads"], c["ffn"], c["text_vocab"], c["image_vocab"],
                      c["codebook"], c["codebook"])
    (bart / "config.json").write_text(json.dumps(cfg, indent=1))
    vocab, merges = train_toy_bpe(TOY_CORPUS, 400)
    write_tokenizer(bart, vocab, merges)
    (out / "vqgan" / "config.json").write_text(json.dumps(vqgan_config(VQGAN_FULL), indent=1))
    print("written", out, f"in {time.time() - t0:.1f}s")


def bench(args):
    """min-dalle's modules at the real size, random weights, this CPU (2 threads)."""
    DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer, _ = import_min_dalle()
    c = SHAPES[args.model]
    L, d = c["layers"], c["d_model"]
    enc = DalleBartEncoder(layer_count=L, embed_count=d, attention_head_count=c["heads"], text_vocab_count=c["text_vocab"],
                           text_token_count=TEXT_LEN, glu_embed_count=c["ffn"], device="cpu").eval()
    dec = DalleBartDecoder(image_vocab_count=c["image_vocab"], embed_count=d, attention_head_count=c["heads"],
                           glu_embed_count=c["ffn"], layer_count=L, device="cpu").eval()
    tt = torch.ones((2, TEXT_LEN), dtype=torch.long)
    tt[:, 0], tt[0, 1] = 0, 2
    tt[1, 1:6] = torch.tensor([10, 11, 12, 13, 2])
    t0 = time.time()
    es = enc.forward(tt)
    t_enc = time.time() - t0
    mask = tt.not_equal(1)[:, None, None, :]
    state = torch.zeros((L, 4, IMAGE_LEN, d))
    prev = torch.full((1, 1), 16384, dtype=torch.long)
    settings = torch.tensor([1.0, 256.0, 16.0])
    steps = []
    for t in range(args.steps):
        t0 = time.time()
        tok, state = dec.sample_tokens(settings=settings, attention_mask=mask, encoder_state=es, attention_state=state,
                                       prev_tokens=prev, token_index=torch.tensor([t]))
        steps.append(time.time() - t0)
        prev = tok[:, None]
    detok = VQGanDetokenizer().eval()
    z = torch.randint(0, 16384, (1, 256))
    t0 = time.time()
    detok.forward(False, z)
    t_vq = time.time() - t0
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
                      "encoder_s": t_enc, "decode_step_s": steps, "decode_step_median_s": float(np.median(steps)),
                      "vqgan_s": t_vq, "per_image_s": t_enc + 256 * float(np.median(steps)) + t_vq}, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("tiny")
    m.add_argument("--out", default=str(TINY_OUT))
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--d-model", type=int, default=64)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--ffn", type=int, default=96)
    m.add_argument("--text-vocab", type=int, default=512)
    m.add_argument("--image-vocab", type=int, default=1024, help="codebook size (mini) or more (mega-like padding)")
    m.add_argument("--toy-vocab", type=int, default=400)
    m.add_argument("--logit-steps", type=int, default=16)
    m.add_argument("--prompt", default="a photo of a cat sitting on a red chair")
    m.add_argument("--supercondition", type=float, default=16.0)
    m.add_argument("--top-k", type=int, default=256)
    m.add_argument("--temperature", type=float, default=1.0)
    sub.add_parser("manifests")
    sub.add_parser("check-vqgan")
    f = sub.add_parser("full")
    f.add_argument("--model", choices=["mini", "mega"], default="mini")
    f.add_argument("--out", default=None)
    f.add_argument("--device", default="cpu",
                   help="where to draw the weights: cpu (default, the reference values) or cuda[:N] (fast, other values)")
    f.add_argument("--threads", type=int, default=2)
    b = sub.add_parser("bench")
    b.add_argument("--model", choices=["mini", "mega"], default="mini")
    b.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    {"tiny": make_tiny, "manifests": make_manifests, "check-vqgan": check_vqgan, "full": make_full,
     "bench": bench}[args.mode](args)


if __name__ == "__main__":
    main()
