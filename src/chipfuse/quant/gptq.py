"""GPTQ-style INT4 quantization with error compensation, written for chipfuse.

Method (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", 2022): quantize a weight's columns one at a time and spread each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs, H = X^T X, collected on calibration text. Group scales and zero points are set
from the updated weights when each group starts. Inputs are taken from the FP32 model (every
layer calibrated on unquantized activations).
"""

from __future__ import annotations

import torch

from ..frontends.config import ModelConfig
from .formats import Format, Recipe
from .quantize import QuantizedInt4, QuantizedInt8, dequantize, int4_codes, int4_grid, int4_grid_search, pad_to_group

INPUT_OF = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
            "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}


def collect_hessians(cfg: ModelConfig, weights: dict[str, torch.Tensor], wins: list[list[int]]) -> dict:
    """Sum of x x^T of every linear layer's input over the calibration windows (FP32 model)."""
    from ..runtime.stage import Segment, StageModel
    from .formats import get_format

    fp32 = get_format("fp32")
    model = StageModel(cfg, weights, (0, cfg.num_layers + 2), fp32, max(len(w) for w in wins), "fp32", fp32)
    hs: dict[tuple[int, str], torch.Tensor] = {}
    counts: dict[tuple[int, str], int] = {}

    def capture(li: int, name: str, x: torch.Tensor) -> None:
        x = x.double()
        key = (model.layer_ids[li], name)
        hs[key] = hs.get(key, 0) + x.t() @ x
        counts[key] = counts.get(key, 0) + x.shape[0]

    model.capture = capture
    with torch.inference_mode():
        for w in wins:
            model.free(0)
            model.forward(torch.tensor(w), [Segment(0, 0, len(w))])
    return {k: (v / counts[k]).float() for k, v in hs.items()}


def has_gptq(fmt: Format) -> bool:
    """GPTQ here makes INT4 (grouped) and INT8 (per-channel) codes; other formats round to nearest."""
    return fmt.family in ("int4", "int8")


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, fmt: Format, damp: float = 0.01, block: int = 128,
                  act_order: bool = True, clip: bool = True) -> QuantizedInt4 | QuantizedInt8:
    """GPTQ codes of a weight [N, K] in an INT4 (grouped) or INT8 (per-channel) format.

    The grid (each group's scale and zero, or each row's INT8 scale) is fixed before the sweep,
    from the original weights: with `clip`, INT4 groups take the range shrink that minimises the
    input-weighted rounding error (`int4_grid_search` with diag H). With `act_order` the columns
    are visited by decreasing input energy (diag H), so the most important ones are rounded
    first and the rest absorb their error."""
    int8 = fmt.family == "int8"
    group = w.shape[1] if int8 else (fmt.group_size or 32)
    k0 = w.shape[1]
    w = pad_to_group(w.float().clone(), group)
    n, k = w.shape
    hp = torch.zeros(k, k)
    hp[:k0, :k0] = h
    dead = torch.diag(hp) == 0
    hp[dead, dead] = 1.0
    w[:, dead] = 0
    if int8:
        s8 = w.abs().amax(1, keepdim=True) / 127.0
        s8 = torch.where(s8 == 0, torch.ones_like(s8), s8)
        scale, zero = s8, torch.zeros_like(s8)
    elif clip:
        scale, zero, _ = int4_grid_search(w, group, fmt.symmetric, torch.diag(hp))
    else:
        scale, zero, _ = int4_grid(w, group, fmt.symmetric)

    def rounded(col: torch.Tensor, g: int) -> torch.Tensor:
        if int8:
            return torch.clamp(torch.round(col / scale[:, 0]), -127, 127) * scale[:, 0]
        return (int4_codes(col, scale[:, g], zero[:, g], fmt.symmetric) - 8) * scale[:, g] + zero[:, g]

    perm = torch.argsort(torch.diag(hp), descending=True) if act_order else torch.arange(k)
    w, hp = w[:, perm], hp[perm][:, perm]
    hp += damp * torch.mean(torch.diag(hp)) * torch.eye(k)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hp)), upper=True)
    q = torch.zeros_like(w)
    gidx = perm // group
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for j in range(b1 - b0):
            qc = rounded(wb[:, j], int(gidx[b0 + j]))
            q[:, b0 + j] = qc
            e = (wb[:, j] - qc) / hb[j, j]
            wb[:, j + 1:] -= e[:, None] * hb[j, j + 1:][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    deq = torch.empty_like(q)
    deq[:, perm] = q
    if int8:
        return QuantizedInt8(torch.round(deq / scale).to(torch.int8), scale[:, 0])
    codes = int4_codes(deq, scale.repeat_interleave(group, 1), zero.repeat_interleave(group, 1), fmt.symmetric)
    codes[:, k0:] = 8  # padded columns meet zero activations: code 8 adds nothing
    return QuantizedInt4(codes.to(torch.int32), scale, zero, group)


def gptq_int4(w: torch.Tensor, h: torch.Tensor, fmt: Format, **kw) -> torch.Tensor:
    """The weight [N, K] after GPTQ, dequantized (FP32 values on the format's grid)."""
    return dequantize(gptq_quantize(w, h, fmt, **kw))[:, : w.shape[1]]


def gptq_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], hessians: dict, fmt: Format | Recipe,
                 progress=None, layers: set[int] | None = None) -> dict[str, QuantizedInt4 | QuantizedInt8]:
    """GPTQ codes of every linear weight of every layer (or of `layers`), each in its layer's format
    (a Recipe gives one per layer); layers whose format has no GPTQ (fp8, fp16...) are left out."""
    recipe = fmt if isinstance(fmt, Recipe) else Recipe.of(fmt)
    out = {}
    for i in range(cfg.num_layers):
        f = recipe.for_block(i + 1)
        if (layers is not None and i not in layers) or not has_gptq(f):
            continue
        for name, inp in INPUT_OF.items():
            key = f"layers.{i}.{name}"
            out[key] = gptq_quantize(weights[key], hessians[(i, inp)], f)
        if progress:
            progress()
    return out


def dequantized(codes: dict, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FP32 values of GPTQ codes, cut to each original weight's width (for scoring)."""
    return {k: dequantize(v)[:, : weights[k].shape[1]] for k, v in codes.items()}
