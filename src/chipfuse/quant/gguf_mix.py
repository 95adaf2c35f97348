"""llama.cpp's quantisation mixes (Q4_K_M, Q5_K_M, ...) as recipes: which GGUF block type each tensor gets.

A mix is a base type plus llama.cpp's per-tensor rules (src/llama-quant.cpp, llama_tensor_get_type), for dense
decoder models: the LM head (and a tied embedding) at Q6_K unless the mix is Q8_0; attention V and FFN down
at more bits in some layers (`use_more_bits`: the first and last eighth, and every third layer between); a
tensor whose input width is not a whole number of blocks falls back to a type whose block divides it (Q4_K to
Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K/Q3_K to Q4_0), else F16. Mixture-of-experts and Falcon special cases,
imatrix-dependent choices and the 70B attention-V rule are not modelled. The result plans and predicts with
the file's real bytes; the runtime does not execute these types.
"""

from __future__ import annotations

from ..errors import SpecError
from .formats import FORMATS, Recipe

# mix -> its base type
MIXES = {"q2_k": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_0": "q4_0", "q4_1": "q4_1",
         "q4_k_s": "q4_k", "q4_k_m": "q4_k", "q5_0": "q5_0", "q5_1": "q5_1", "q5_k_s": "q5_k", "q5_k_m": "q5_k",
         "q6_k": "q6_k", "q8_0": "q8_0"}
_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def is_mix(name: object) -> bool:
    return isinstance(name, str) and name.lower() in MIXES


def _more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(fmt: str, cols: int) -> str:
    """The type a tensor of `cols` inputs gets: `fmt`, its fallback, or fp16."""
    f = FORMATS[fmt]
    if f.block is None or cols % f.block[0] == 0:
        return fmt
    alt = _FALLBACK.get(fmt, "fp16")
    block = FORMATS[alt].block
    return alt if block is not None and cols % block[0] == 0 else "fp16"


def _layer_type(mix: str, base: str, role: str, i: int, n: int, gqa: int) -> str:
    """The type of one layer tensor: role is attn_v, ffn_down, attn_output or other."""
    if role == "attn_v":
        rules = {"q2_k": "q4_k" if gqa >= 4 else "q3_k", "q3_k_m": "q5_k" if i < 2 else "q4_k", "q3_k_l": "q5_k",
                 "q4_k_m": "q6_k" if _more_bits(i, n) else base, "q5_k_m": "q6_k" if _more_bits(i, n) else base,
                 "q4_k_s": "q5_k" if i < 4 else base}
        return rules.get(mix, base)
    if role == "ffn_down":
        rules = {"q2_k": "q3_k", "q3_k_m": "q5_k" if i < n // 16 else "q4_k", "q3_k_l": "q5_k",
                 "q4_k_m": "q6_k" if _more_bits(i, n) else base, "q5_k_m": "q6_k" if _more_bits(i, n) else base,
                 "q4_k_s": "q5_k" if i < n // 8 else base}
        return rules.get(mix, base)
    if role == "attn_output":
        return {"q2_k": "q3_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}.get(mix, base)
    return base


def mix_recipe(name: str, graph) -> Recipe:
    """The recipe of llama.cpp mix `name` for the model behind `graph` (ir.Graph): every tensor's GGUF type."""
    mix = name.lower()
    if mix not in MIXES:
        raise SpecError(f"unknown llama.cpp mix {name!r}; known: {', '.join(MIXES)}")
    base = MIXES[mix]
    n = sum(1 for b in graph.blocks if b.kind == "layer")
    gqa = int(graph.meta.get("heads_per_kv", 1))
    head_type = "q8_0" if base == "q8_0" else "q6_k"
    tied = {o.tied_to for o in graph.ops if o.tied_to}
    ops: list[tuple[str, str]] = []  # only the tensors whose type differs from what the recipe gives by default
    for op in graph.ops:
        if op.kind not in ("matmul", "embedding"):
            continue
        if op.kind == "embedding":  # a tied table is the output's; an untied one keeps the base type
            t, cols, usual = (head_type if op.name in tied else base), op.out_features, head_type
        elif op.last_token_only:
            t, cols, usual = head_type, op.in_features, head_type
        else:
            layer = graph.blocks[op.block].layer
            role = ("attn_v" if op.name.endswith("v_proj") else "ffn_down" if op.name.endswith("down_proj")
                    else "attn_output" if op.name.endswith("o_proj") else "other")
            t, cols, usual = _layer_type(mix, base, role, layer, n, gqa), op.in_features, base
        got = _fits(t, cols)
        if got != usual:
            ops.append((op.name, got))
    return Recipe(FORMATS[base], FORMATS[head_type], (), tuple(ops), mix)


__all__ = ["MIXES", "is_mix", "mix_recipe"]
