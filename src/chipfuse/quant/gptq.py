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
from .formats import Format
from .quantize import QuantizedInt4, int4_codes, int4_grid, pad_to_group

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


def gptq_int4(w: torch.Tensor, h: torch.Tensor, fmt: Format, damp: float = 0.01, block: int = 128,
              act_order: bool = True) -> torch.Tensor:
    """The weight [N, K] after GPTQ, dequantized: every value on the format's INT4 grid.

    Group grids (scale, zero) are fixed from the original weights; with `act_order` the columns
    are visited by decreasing input energy (diag H), so the most important ones are rounded
    first and the rest absorb their error."""
    group = fmt.group_size or 32
    k0 = w.shape[1]
    w = pad_to_group(w.float().clone(), group)
    n, k = w.shape
    hp = torch.zeros(k, k)
    hp[:k0, :k0] = h
    dead = torch.diag(hp) == 0
    hp[dead, dead] = 1.0
    w[:, dead] = 0
    scale, zero, _ = int4_grid(w, group, fmt.symmetric)
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
            g = gidx[b0 + j]
            qc = (int4_codes(wb[:, j], scale[:, g], zero[:, g], fmt.symmetric) - 8) * scale[:, g] + zero[:, g]
            q[:, b0 + j] = qc
            e = (wb[:, j] - qc) / hb[j, j]
            wb[:, j + 1:] -= e[:, None] * hb[j, j + 1:][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    out = torch.empty_like(q)
    out[:, perm] = q
    return out[:, :k0]


def gptq_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], hessians: dict, fmt: Format,
                 progress=None) -> dict[str, torch.Tensor]:
    """GPTQ every linear weight of every layer; returns {canonical name: dequantized weight}."""
    out = {}
    for i in range(cfg.num_layers):
        for name, inp in INPUT_OF.items():
            key = f"layers.{i}.{name}"
            out[key] = gptq_int4(weights[key], hessians[(i, inp)], fmt)
        if progress:
            progress()
    return out


def to_quantized(w: torch.Tensor, deq: torch.Tensor, fmt: Format) -> QuantizedInt4:
    """The integer codes behind a GPTQ result, on the static grid of the original weight `w`.

    Padded columns (K not a multiple of the group) get code 8, which with zero activations there
    contributes nothing."""
    group = fmt.group_size or 32
    wp = pad_to_group(w.float(), group)
    n, k = wp.shape
    scale, zero, _ = int4_grid(wp, group, fmt.symmetric)
    s_full = scale.repeat_interleave(group, 1)[:, : deq.shape[1]]
    z_full = zero.repeat_interleave(group, 1)[:, : deq.shape[1]]
    q = torch.full((n, k), 8, dtype=torch.int32)
    q[:, : deq.shape[1]] = int4_codes(deq, s_full, z_full, fmt.symmetric).to(torch.int32)
    return QuantizedInt4(q, scale, zero, group)
