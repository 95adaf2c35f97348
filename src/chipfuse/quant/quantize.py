"""Round-to-nearest quantizers for every format, and their inverse.

Conventions (one for all INT4 variants, so one kernel runs them): a weight [N, K] is split
along K into groups; w ~= (q - 8) * scale + zero with q in 0..15. Symmetric: zero = 0 and
scale = absmax / 7 (q - 8 in -7..7). Asymmetric: scale = (max - min) / 15, q = round((w - min)
/ scale), zero = min + 8 * scale — the grid of GGUF Q4_1 when groups are 32. INT8: per output
channel, symmetric, scale = absmax / 127. FP8: one per-tensor scale mapping absmax to the
format's largest finite value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import Format

FP8_DTYPES = {"fp8-e4m3": torch.float8_e4m3fn, "fp8-e5m2": torch.float8_e5m2}
FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class QuantizedInt4:
    q: torch.Tensor  # int32 [N, K], values 0..15
    scale: torch.Tensor  # float32 [N, K // group]
    zero: torch.Tensor  # float32 [N, K // group]
    group: int


@dataclass
class QuantizedInt8:
    """Per-output-channel symmetric INT8 codes: w = q * scale[:, None]."""

    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N]


def dequantize(t: QuantizedInt4 | QuantizedInt8) -> torch.Tensor:
    """FP32 values of INT4 (padded width) or INT8 codes."""
    if isinstance(t, QuantizedInt8):
        return t.q.float() * t.scale[:, None]
    return dequantize_int4(t)


def pad_to_group(w: torch.Tensor, group: int) -> torch.Tensor:
    """Widen [N, K] to a multiple of `group` columns by repeating the last column: the last,
    shorter group keeps its own min and max (the packed kernel needs whole groups)."""
    k = w.shape[1]
    extra = -k % group
    return w if extra == 0 else torch.cat([w, w[:, -1:].expand(-1, extra)], 1)


def _range_grid(g: torch.Tensor, symmetric: bool, ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, low) of groups g [..., group] whose range is shrunk by `ratio`: symmetric absmax / 7
    (low 0), or asymmetric (max - min) / 15 from the minimum; an all-zero group gets scale 1."""
    if symmetric:
        scale = g.abs().amax(-1) * ratio / 7.0
        low = torch.zeros_like(scale)
    else:
        low = g.amin(-1) * ratio
        scale = (g.amax(-1) * ratio - low) / 15.0
    return torch.where(scale == 0, torch.ones_like(scale), scale), low


def _with_zero(scale: torch.Tensor, low: torch.Tensor, symmetric: bool):
    """(scale, zero, low) with zero the value of code 8: 0 for symmetric grids, low + 8 * scale otherwise."""
    return scale, (torch.zeros_like(scale) if symmetric else low + 8 * scale), low


def int4_grid(w: torch.Tensor, group: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group (scale, zero, low) of a weight [N, K] (K a multiple of `group`), [N, K // group] each;
    `low` is the value code 0 stands for (the group minimum; 0 for symmetric grids, whose code 8 is 0)."""
    n, k = w.shape
    return _with_zero(*_range_grid(w.reshape(n, k // group, group), symmetric), symmetric)


def int4_grid_search(w: torch.Tensor, group: int, symmetric: bool, col_weight: torch.Tensor | None = None,
                     ratios: tuple[float, ...] = tuple(1.0 - 0.025 * i for i in range(13))
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like `int4_grid`, but each group's range is shrunk by the ratio (1.0 down to 0.7) that gives
    the least squared rounding error, each column weighted by `col_weight` (for example the
    input energy diag(X^T X), so the error that matters to the layer's output counts most).
    Clipping a few outliers buys a finer step for every other weight of the group."""
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    cw = (torch.ones(k) if col_weight is None else col_weight.float()).reshape(1, k // group, group)
    shift = 8 if symmetric else 0
    best = best_err = None
    for r in ratios:
        scale, low = _range_grid(g, symmetric, r)
        q = int4_codes(g, scale[..., None], low[..., None], symmetric, shift=shift)
        err = (((g - ((q - shift) * scale[..., None] + low[..., None])) ** 2) * cw).sum(-1)
        if best is None:
            best, best_err = (scale, low), err
        else:
            better = err < best_err
            best = (torch.where(better, scale, best[0]), torch.where(better, low, best[1]))
            best_err = torch.where(better, err, best_err)
    return _with_zero(*best, symmetric)


def int4_codes(w: torch.Tensor, scale: torch.Tensor, origin: torch.Tensor, symmetric: bool, shift: int = 8) -> torch.Tensor:
    """Codes 0..15 (1..15 symmetric) of values `w`: round((w - origin) / scale) + shift, clamped.
    With origin = zero the shift is 8; with origin = low (asymmetric) it is 0."""
    return torch.clamp(torch.round((w - origin) / scale) + shift, 1 if symmetric else 0, 15)


def quantize_int4(w: torch.Tensor, group: int, symmetric: bool) -> QuantizedInt4:
    """Quantize [N, K]; when K is not a multiple of `group` the result covers the padded width."""
    w = pad_to_group(w.float(), group)
    n, k = w.shape
    scale, zero, low = int4_grid(w, group, symmetric)
    q = int4_codes(w.reshape(n, k // group, group), scale[..., None], low[..., None], symmetric,
                   shift=8 if symmetric else 0)
    return QuantizedInt4(q.reshape(n, k).to(torch.int32), scale, zero, group)


def dequantize_int4(t: QuantizedInt4) -> torch.Tensor:
    n, k = t.q.shape
    g = (t.q.reshape(n, k // t.group, t.group).float() - 8) * t.scale[..., None] + t.zero[..., None]
    return g.reshape(n, k)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric INT8: (q int8 [N, K], scale float32 [N])."""
    scale = w.float().abs().amax(1) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(w.float() / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def quantize_fp8(w: torch.Tensor, name: str) -> tuple[torch.Tensor, float]:
    """Per-tensor scaled FP8: (values in the fp8 dtype, scale as a float)."""
    dtype = FP8_DTYPES[name]
    amax = float(w.abs().max()) or 1.0
    scale = amax / torch.finfo(dtype).max
    return (w.float() / scale).to(dtype), scale


def fake_quantize(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Quantize then dequantize to FP32: what the format keeps of `w`."""
    if fmt.precision == "int4":
        return dequantize_int4(quantize_int4(w, fmt.group_size or 32, fmt.symmetric))[:, : w.shape[1]]
    if fmt.name == "int8":
        q, s = quantize_int8(w)
        return q.float() * s[:, None]
    if fmt.name in FP8_DTYPES:
        v, s = quantize_fp8(w, fmt.name)
        return v.float() * s
    return w.to(FLOAT_DTYPES[fmt.name]).float()
