#!/usr/bin/env python3
"""kiln fixture generator for issue 24: prompts as people write them (A1111 emphasis syntax, BREAK,
prompts longer than 77 tokens) and textual-inversion embeddings, on the tiny SD 1.5 model.

Run by hand only (never by CI), after models/make_sd15_fixtures.py --tiny, with the reference venv:

    .venv-ref/bin/python models/make_sd15_prompt_fixtures.py

Writes (nothing else is touched):
  models/fixtures/embeddings-tiny/   textual-inversion files for the tiny (32-d) text encoder
      kittyemb.safetensors   diffusers `learned_embeds.safetensors` layout: {"<kittyemb>": [32]} (one vector)
      threevec.safetensors   A1111 safetensors layout: {"emb_params": [3, 32]} (three vectors)
      twopt.pt               A1111 pickle: torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": [2, 32]},
                             "name": "twopt", "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None})
  models/fixtures/embeddings-tiny-old/oldmodule.pt   string_to_param pickled as an nn.ParameterDict (torch <= 1.11
                             A1111 files): kiln refuses it with a hint
  models/fixtures/sd15-tiny/refs/prompts.safetensors + prompts.json
      prompts.json lists every case (prompt, syntax, clip_skip, what the parser returned) and says how each tensor was made;
      the safetensors file holds, per case `c<i>`: ids [k,77] (int64; embedding slots hold 0 as in A1111),
      multipliers [k,77], hidden [1,k*77,32]; and the two pipeline runs (keys `lpw.*`, `ti.*`).

The A1111 reference below is written from the behaviour A1111 documents and implements
(modules/prompt_parser.py parse_prompt_attention; modules/sd_hijack_clip.py
FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line / process_tokens; sd_emphasis.EmphasisOriginal;
sd_hijack.EmbeddingsWithFixes), not copied from it. One deliberate deviation, applied here and in kiln:
when the comma backtrack moves the tail of a full chunk into the next one, A1111 leaves the moved
embeddings' placement records ("fixes") in the old chunk (so their vectors land on padding and the new
chunk keeps placeholder token 0); here they move with their tokens.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models/fixtures/sd15-tiny"
EMB_DIR = REPO / "models/fixtures/embeddings-tiny"
CHUNK = 75  # prompt tokens per chunk (77 with BOS/EOS)
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
LAT_H, LAT_W, STEPS, GUIDANCE, SEED = 16, 12, 4, 7.5, 2424


# ----------------------------------------------------------------------------------------------
# A1111 emphasis parser
# ----------------------------------------------------------------------------------------------
def _lex(text: str):
    """Lexemes of the attention syntax: ('esc', char), ('open', '('/'['), ('weight', str),
    ('close', ')'/']'), ('text', str), ('colon', ':')."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt in ("(", ")", "[", "]", "\\"):
                yield ("esc", nxt)
                i += 2
            else:
                yield ("esc", "")  # a lone backslash is dropped
                i += 1
        elif c in "([":
            yield ("open", c)
            i += 1
        elif c == ":":
            j = i + 1
            if j < n and text[j] in "+-":
                j += 1
            k = j
            while k < n and (text[k] == "." or text[k].isdigit() and text[k].isascii()):
                k += 1
            if k > j and k < n and text[k] == ")":
                yield ("weight", text[i + 1:k])
                i = k + 1
            else:
                yield ("colon", ":")
                i += 1
        elif c in ")]":
            yield ("close", c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in "\\()[]:":
                j += 1
            yield ("text", text[i:j])
            i = j


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _split_break(text: str) -> list[str]:
    """text split at BREAK (a whole word), the whitespace around each BREAK removed."""
    parts, start, i = [], 0, 0
    while True:
        i = text.find("BREAK", i)
        if i < 0:
            break
        end = i + 5
        if (i > 0 and _is_word(text[i - 1])) or (end < len(text) and _is_word(text[end])):
            i += 1
            continue
        a = i
        while a > start and text[a - 1].isspace():
            a -= 1
        b = end
        while b < len(text) and text[b].isspace():
            b += 1
        parts.append(text[start:a])
        start, i = b, b
    parts.append(text[start:])
    return parts


def parse_attention(text: str) -> list[list]:
    res: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def mul(start: int, m: float):
        for p in range(start, len(res)):
            res[p][1] *= m

    for kind, val in _lex(text):
        if kind == "esc":
            res.append([val, 1.0])
        elif kind == "open":
            (rounds if val == "(" else squares).append(len(res))
        elif kind == "weight" and rounds:
            mul(rounds.pop(), float(val))
        elif kind == "close" and val == ")" and rounds:
            mul(rounds.pop(), 1.1)
        elif kind == "close" and val == "]" and squares:
            mul(squares.pop(), 1 / 1.1)
        else:
            lit = {"weight": ":" + val + ")"}.get(kind, val)
            for i, part in enumerate(_split_break(lit)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for p in rounds:
        mul(p, 1.1)
    for p in squares:
        mul(p, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ----------------------------------------------------------------------------------------------
# A1111 chunking (tokenize_line) and encoding (process_tokens)
# ----------------------------------------------------------------------------------------------
def tokenize_line(tok, line: str, embs: dict, emphasis: bool = True):
    """-> list of chunks (tokens[77], multipliers[77], fixes[(offset in the 77, name)])."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    comma = tok.get_vocab()[",</w>"]
    parsed = parse_attention(line) if emphasis else [[line, 1.0]]
    by_first: dict[int, list] = {}
    for name in sorted(embs):
        ids = tok(name, add_special_tokens=False).input_ids
        by_first.setdefault(ids[0], []).append((ids, name))
    for v in by_first.values():
        v.sort(key=lambda x: len(x[0]), reverse=True)

    chunks = []
    cur = {"t": [], "m": [], "f": []}
    last_comma = -1

    def flush():
        nonlocal cur, last_comma
        pad = CHUNK - len(cur["t"])
        cur["t"] += [eos] * pad
        cur["m"] += [1.0] * pad
        chunks.append(([bos] + cur["t"] + [eos], [1.0] + cur["m"] + [1.0], [(o + 1, n) for o, n in cur["f"]]))
        cur = {"t": [], "m": [], "f": []}
        last_comma = -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            flush()
            continue
        ids = tok(text, add_special_tokens=False).input_ids
        pos = 0
        while pos < len(ids):
            t = ids[pos]
            if t == comma:
                last_comma = len(cur["t"])
            elif (COMMA_BACKTRACK and len(cur["t"]) == CHUNK and last_comma != -1
                  and len(cur["t"]) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved_t, moved_m = cur["t"][cut:], cur["m"][cut:]
                moved_f = [(o - cut, n) for o, n in cur["f"] if o >= cut]
                cur["t"], cur["m"] = cur["t"][:cut], cur["m"][:cut]
                cur["f"] = [(o, n) for o, n in cur["f"] if o < cut]
                flush()
                cur = {"t": moved_t, "m": moved_m, "f": moved_f}
            if len(cur["t"]) == CHUNK:
                flush()
            hit = None
            for eids, name in by_first.get(t, []):
                if ids[pos:pos + len(eids)] == eids:
                    hit = (eids, name)
                    break
            if hit is None:
                cur["t"].append(t)
                cur["m"].append(weight)
                pos += 1
                continue
            n = embs[hit[1]].shape[0]
            if len(cur["t"]) + n > CHUNK:
                flush()
            cur["f"].append((len(cur["t"]), hit[1]))
            cur["t"] += [0] * n
            cur["m"] += [weight] * n
            pos += len(hit[0])
    if cur["t"] or not chunks:
        flush()
    return chunks


def encode_chunks(te, chunks, embs: dict, clip_skip: int = 1, emphasis: bool = True) -> torch.Tensor:
    """[1, k*77, D]: each chunk through CLIP on its own (A1111's process_tokens), embedding vectors put
    in place of the token embeddings (EmbeddingsWithFixes), then emphasis with the mean restored."""
    zs = []
    for toks, mults, fixes in chunks:
        def hook(_m, _inp, out, fixes=fixes):
            out = out.clone()
            for off, name in fixes:
                v = embs[name].to(out.dtype)
                out[0, off:off + v.shape[0]] = v
            return out

        h = te.embeddings.token_embedding.register_forward_hook(hook)
        try:
            o = te(torch.tensor([toks]), output_hidden_states=True)
        finally:
            h.remove()
        z = o.last_hidden_state if clip_skip <= 1 else te.final_layer_norm(o.hidden_states[-clip_skip])
        if emphasis:
            m = torch.asarray([mults])
            orig = z.mean()
            z = z * m.reshape(m.shape + (1,)).expand(z.shape)
            z = z * (orig / z.mean())
        zs.append(z)
    return torch.hstack(zs)


def pad_chunks(a: torch.Tensor, b: torch.Tensor, empty: torch.Tensor):
    """Pads the shorter of two [1, k*77, D] conditionings with the empty prompt's chunk (A1111's
    pad_cond_uncond; lpw_stable_diffusion pads with the same all-EOS chunk)."""
    while a.shape[1] < b.shape[1]:
        a = torch.cat([a, empty], 1)
    while b.shape[1] < a.shape[1]:
        b = torch.cat([b, empty], 1)
    return a, b


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
LONG = ("a (masterpiece:1.2), best quality, highly detailed photograph of an old lighthouse on a rocky "
        "[cliff], stormy sea, crashing waves, dramatic clouds, golden hour light, seagulls, moss on the "
        "stones, a small red boat, fishermen in yellow coats, nets, ropes, barrels, wooden pier, "
        "lanterns, rain, mist, reflections, wet rocks, foam, spray, wind, ((cinematic)), 35mm, "
        "film grain, sharp focus")
VERY_LONG = ", ".join(f"detail number {i} ({'red' if i % 2 else 'blue'}:1.{i % 9})" for i in range(40))
NO_COMMA_LONG = " ".join(f"word{i}" for i in range(90))

A1111_CASES = [
    ("plain_short", "a photograph of an astronaut riding a horse", 1),
    ("weight", "a (red:1.3) cat", 1),
    ("nesting", "((nested)) and [less] and (((deep))) and [[deeper]]", 1),
    ("docstring", "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 1),
    ("escapes", r"a \(literal\) and \[x\] and \\ slash", 1),
    ("unbalanced", "(unbalanced [brackets and (more", 1),
    ("break", "a cat BREAK a (dog:1.2)", 1),
    ("break_first", "BREAK a cat", 1),
    ("break_in_parens", "(a BREAK b)", 1),
    ("empty", "", 1),
    ("long_commas", LONG, 1),
    ("very_long", VERY_LONG, 1),
    ("no_comma_long", NO_COMMA_LONG, 1),
    ("embeddings", "a photo of kittyemb, (threevec:1.2) and [twopt]", 1),
    ("embedding_backtracked", ", ".join(["word"] * 36) + ", threevec kittyemb end", 1),
    ("embedding_not_split", " ".join(["word"] * 73) + " threevec end", 1),
    ("clip_skip2", "a (red:1.3) cat BREAK blue sky", 2),
    ("negative_weight", "a (cat:-0.5) dog (x:0)", 1),
    ("plain_long", "plain " + LONG, 1),
]
PLAIN_CASES = {"plain_long"}  # encoded as kiln's `plain` syntax: A1111 with emphasis off (no parse, no BREAK)

LPW_PROMPT = LONG + " BREAK (stormy:1.4) [calm] sea"
LPW_NEGATIVE = "(blurry:1.3), [low quality]"
TI_PROMPT = "a photo of kittyemb riding threevec, by twopt"
TI_NEGATIVE = "twopt, blurry"


def make_embeddings(hidden: int) -> dict:
    from safetensors.torch import save_file

    EMB_DIR.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(2401)
    # token-embedding scale (the tiny CLIP's token_embedding has std ~0.02 x weights; use 0.5 so the
    # vectors clearly change the output)
    kitty = (torch.randn(hidden, generator=g) * 0.5).half().float()
    three = (torch.randn(3, hidden, generator=g) * 0.5).half().float()
    two = (torch.randn(2, hidden, generator=g) * 0.5).half().float()
    save_file({"<kittyemb>": kitty.contiguous()}, str(EMB_DIR / "kittyemb.safetensors"),
              metadata={"how": "diffusers learned_embeds layout, one 1-D vector, randn*0.5 (seed 2401) on the fp16 grid"})
    save_file({"emb_params": three.contiguous()}, str(EMB_DIR / "threevec.safetensors"),
              metadata={"how": "A1111 safetensors layout {'emb_params': [3, 32]}, randn*0.5 (seed 2401) on the fp16 grid"})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": two.clone().requires_grad_(True)},
                "name": "twopt", "step": 0, "sd_checkpoint": None, "sd_checkpoint_name": None},
               str(EMB_DIR / "twopt.pt"))
    # torch <= 1.11 A1111 files pickled string_to_param as an nn.ParameterDict module: kiln refuses it
    old = EMB_DIR.parent / "embeddings-tiny-old"
    old.mkdir(exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(two)}),
                "name": "oldmodule", "step": 0}, str(old / "oldmodule.pt"))
    return {"kittyemb": kitty.reshape(1, -1), "threevec": three, "twopt": two}


def main() -> int:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(str(TINY), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    tok, te = pipe.tokenizer, pipe.text_encoder.eval()
    # The tiny CLIP's final layer norm is weight 1, bias 0: every token's hidden state then averages
    # exactly 0 and A1111's mean restoration divides rounding noise by rounding noise. Give it a
    # random weight and bias (stored, the Rust test sets the same) so the means are well away from 0,
    # as they are with SD's real CLIP.
    g = torch.Generator().manual_seed(2402)
    ln = te.final_layer_norm
    with torch.no_grad():
        ln.weight.copy_((1 + 0.2 * torch.randn(ln.weight.shape, generator=g)).half().float())
        ln.bias.copy_((0.5 + 0.3 * torch.randn(ln.bias.shape, generator=g)).half().float())
    embs = make_embeddings(te.config.hidden_size)

    out: dict[str, torch.Tensor] = {"final_layer_norm.weight": ln.weight.detach().clone(),
                                    "final_layer_norm.bias": ln.bias.detach().clone()}
    cases = []
    with torch.inference_mode():
        # the plain short prompt through A1111's path equals diffusers' own encoding
        for i, (name, prompt, skip) in enumerate(A1111_CASES):
            emphasis = name not in PLAIN_CASES
            chunks = tokenize_line(tok, prompt, embs, emphasis)
            hidden = encode_chunks(te, chunks, embs, skip, emphasis)
            out[f"c{i}.ids"] = torch.tensor([c[0] for c in chunks], dtype=torch.int64)
            out[f"c{i}.multipliers"] = torch.tensor([c[1] for c in chunks], dtype=torch.float32)
            out[f"c{i}.hidden"] = hidden
            cases.append({"key": f"c{i}", "name": name, "prompt": prompt, "clip_skip": skip,
                          "syntax": "a1111" if emphasis else "plain", "chunks": len(chunks),
                          "parsed": parse_attention(prompt) if emphasis else [[prompt, 1.0]],
                          "fixes": [[[o, n] for o, n in c[2]] for c in chunks]})
            print(f"  {name}: {len(chunks)} chunk(s)")
        plain = encode_chunks(te, tokenize_line(tok, A1111_CASES[0][1], {}), {})
        want = pipe.encode_prompt(A1111_CASES[0][1], "cpu", 1, False)[0]
        assert torch.equal(plain, want), "A1111 path differs from diffusers on a short plain prompt"

        # one full run with a long weighted prompt and a shorter negative (padded with empty chunks)
        noise = torch.randn(1, 4, LAT_H, LAT_W, generator=torch.Generator().manual_seed(SEED))
        cond = encode_chunks(te, tokenize_line(tok, LPW_PROMPT, embs), embs)
        uncond = encode_chunks(te, tokenize_line(tok, LPW_NEGATIVE, embs), embs)
        empty = encode_chunks(te, tokenize_line(tok, "", embs), embs)
        cond, uncond = pad_chunks(cond, uncond, empty)
        assert cond.shape[1] == 3 * 77, cond.shape
        lat = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=LAT_H * 8, width=LAT_W * 8,
                   num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise.clone(),
                   output_type="latent").images
        out.update({"lpw.init_noise": noise, "lpw.cond": cond, "lpw.uncond": uncond, "lpw.final_latents": lat})

    # textual inversion through diffusers' own loader (plain syntax in kiln)
    pipe.load_textual_inversion(str(EMB_DIR / "kittyemb.safetensors"), token="kittyemb")
    pipe.load_textual_inversion(str(EMB_DIR / "threevec.safetensors"), token="threevec")
    pipe.load_textual_inversion(str(EMB_DIR / "twopt.pt"), token="twopt")
    with torch.inference_mode():
        pe, ne = pipe.encode_prompt(TI_PROMPT, "cpu", 1, True, TI_NEGATIVE)
        # the A1111 port gives the same hidden states for these whole-word uses
        ref = encode_chunks(te, tokenize_line(tok, TI_PROMPT, embs), embs)
        assert (ref - pe).abs().max() < 1e-5, (ref - pe).abs().max()
        lat = pipe(TI_PROMPT, negative_prompt=TI_NEGATIVE, height=LAT_H * 8, width=LAT_W * 8,
                   num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise.clone(),
                   output_type="latent").images
        out.update({"ti.prompt_embeds": pe, "ti.uncond_embeds": ne, "ti.final_latents": lat})

    how = ("issue 24 references; see prompts.json. Every tensor was made with sd15-tiny's text encoder whose "
           "final_layer_norm weight/bias are replaced by final_layer_norm.{weight,bias} (1+0.2*randn, 0.5+0.3*randn, "
           "seed 2402, fp16 grid; the fixture's own 1/0 make A1111's mean restoration 0/0). c<i>.*: A1111 port (this script) on sd15-tiny's CLIP; "
           "lpw.*: StableDiffusionPipeline(DDIM, 4 steps, guidance 7.5, 128x96, latents=lpw.init_noise) fed "
           "prompt_embeds/negative_prompt_embeds from the A1111 port; ti.*: diffusers load_textual_inversion of "
           "embeddings-tiny/* (token = file stem), encode_prompt and a full run from lpw.init_noise")
    save_file({k: v.contiguous() for k, v in out.items()}, str(TINY / "refs/prompts.safetensors"),
              metadata={"how": how})
    import diffusers
    import transformers
    doc = {"how": how, "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                    "transformers": transformers.__version__},
           "chunk": CHUNK, "comma_padding_backtrack": COMMA_BACKTRACK,
           "lpw": {"prompt": LPW_PROMPT, "negative": LPW_NEGATIVE, "steps": STEPS, "guidance": GUIDANCE,
                   "scheduler": "DDIM", "width": LAT_W * 8, "height": LAT_H * 8},
           "ti": {"prompt": TI_PROMPT, "negative": TI_NEGATIVE},
           "cases": cases}
    (TINY / "refs/prompts.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print("wrote", TINY / "refs/prompts.safetensors", "and prompts.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
