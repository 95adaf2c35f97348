"""Round-to-nearest quantizers for every format, their inverse, and their checkpoint packing.

`CODECS` holds one entry per format family (quant.formats.FAMILIES): what turns an FP32 weight
into the family's codes, the codes back into FP32, and the codes into named tensors for a
safetensors checkpoint and back. The kernels (runtime.kernels.KERNELS) are built from these codes.

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


def held_dtype(fmt: Format) -> torch.dtype:
    """The torch dtype a format's values are held in (its registry entry names it)."""
    return getattr(torch, fmt.dtype)


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


@dataclass
class QuantizedFloat:
    """Values in a float dtype (fp32, fp16, bf16, fp8) times one tensor scale (1.0 but for fp8)."""

    v: torch.Tensor  # [N, K] in the format's dtype
    scale: float


Codes = QuantizedInt4 | QuantizedInt8 | QuantizedFloat


def dequantize(t: Codes) -> torch.Tensor:
    """FP32 values of any codes (INT4 at its padded width)."""
    return CODECS[family_of(t)].dequantize(t)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """INT4 codes [N, K] (K even, values 0..15) as bytes [N, K / 2], two per byte, low nibble first."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_nibbles`: codes [N, 2 * B] as uint8."""
    return torch.stack([p & 0xF, p >> 4], -1).reshape(p.shape[0], -1)


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


def quantize_fp8(w: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, float]:
    """Per-tensor scaled FP8: (values in the fp8 dtype, scale as a float)."""
    dtype = held_dtype(fmt)
    amax = float(w.abs().max()) or 1.0
    scale = amax / torch.finfo(dtype).max
    return (w.float() / scale).to(dtype), scale


class Codec:
    """One format family's codes: quantize an FP32 weight [N, K], dequantize, stack rows, and the
    named tensors a checkpoint stores (`marker` is the key suffix that says which family a stem holds)."""

    marker: str
    codes: type

    def quantize(self, w: torch.Tensor, fmt: Format) -> Codes:
        raise NotImplementedError

    def dequantize(self, c) -> torch.Tensor:
        raise NotImplementedError

    def cat(self, cs: list) -> Codes:
        """The codes of several weights' rows stacked (fused projections)."""
        raise NotImplementedError

    def fits(self, c, fmt: Format) -> bool:
        """Whether codes `c` are codes of `fmt` (a checkpoint's codes against the plan's format)."""
        return isinstance(c, self.codes)

    def pack(self, c) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def unpack(self, t: dict[str, torch.Tensor]) -> Codes:
        raise NotImplementedError

    def take_rows(self, c, idx: torch.Tensor) -> Codes:
        """The codes of output rows `idx` (a tensor-parallel shard of a column-parallel weight): exact."""
        raise NotImplementedError

    def take_cols(self, c, start: int, stop: int) -> tuple[Codes, int]:
        """The codes of input columns [start, stop) (a shard of a row-parallel weight), widened to whole scale
        groups where the format has them, and how many columns the widening added in front (their inputs
        must be zero). The values held are exactly the whole weight's."""
        raise NotImplementedError


class Int4Codec(Codec):
    """Grouped 4-bit codes; checkpoints hold them two per byte (`q4`) with FP32 scales and zero points."""

    marker, codes = "q4", QuantizedInt4

    def quantize(self, w, fmt):
        return quantize_int4(w, fmt.group_size or 32, fmt.symmetric)

    def dequantize(self, c):
        return dequantize_int4(c)

    def cat(self, cs):
        return QuantizedInt4(torch.cat([c.q for c in cs]), torch.cat([c.scale for c in cs]),
                             torch.cat([c.zero for c in cs]), cs[0].group)

    def fits(self, c, fmt):
        return isinstance(c, QuantizedInt4) and c.group == (fmt.group_size or 32)

    def pack(self, c):
        return {"q4": pack_nibbles(c.q), "zero": c.zero.float().contiguous(), "scale": c.scale.float().contiguous()}

    def unpack(self, t):
        q = unpack_nibbles(t["q4"]).to(torch.int32)
        return QuantizedInt4(q, t["scale"], t["zero"], q.shape[1] // t["scale"].shape[1])

    def take_rows(self, c, idx):
        return QuantizedInt4(c.q[idx], c.scale[idx], c.zero[idx], c.group)

    def take_cols(self, c, start, stop):
        g = c.group
        first, last = start // g, -(-stop // g)
        return QuantizedInt4(c.q[:, first * g: last * g], c.scale[:, first:last], c.zero[:, first:last], g), \
            start - first * g


class Int8Codec(Codec):
    """Per-output-channel symmetric INT8 codes (`q8`) with FP32 row scales."""

    marker, codes = "q8", QuantizedInt8

    def quantize(self, w, fmt):
        return QuantizedInt8(*quantize_int8(w))

    def dequantize(self, c):
        return c.q.float() * c.scale[:, None]

    def cat(self, cs):
        return QuantizedInt8(torch.cat([c.q for c in cs]), torch.cat([c.scale for c in cs]))

    def pack(self, c):
        return {"q8": c.q.to(torch.int8).contiguous(), "scale": c.scale.float().contiguous()}

    def unpack(self, t):
        return QuantizedInt8(t["q8"], t["scale"])

    def take_rows(self, c, idx):
        return QuantizedInt8(c.q[idx], c.scale[idx])

    def take_cols(self, c, start, stop):
        return QuantizedInt8(c.q[:, start:stop], c.scale), 0  # the row's scale, from the whole row


class FloatCodec(Codec):
    """Values cast to the format's dtype (fp32, fp16, bf16); FP8 adds a per-tensor scale."""

    marker, codes = "v", QuantizedFloat

    def quantize(self, w, fmt):
        if fmt.per_tensor_scale:
            return QuantizedFloat(*quantize_fp8(w, fmt))
        return QuantizedFloat(w.to(held_dtype(fmt)), 1.0)

    def dequantize(self, c):
        return c.v.float() * c.scale

    def cat(self, cs):
        if len({c.scale for c in cs}) != 1:
            raise ValueError("stacked float codes need one tensor scale")
        return QuantizedFloat(torch.cat([c.v for c in cs]), cs[0].scale)

    def fits(self, c, fmt):
        return isinstance(c, QuantizedFloat) and c.v.dtype == held_dtype(fmt)

    def pack(self, c):
        return {"v": c.v.contiguous(), "scale": torch.tensor(float(c.scale), dtype=torch.float64)}

    def unpack(self, t):
        return QuantizedFloat(t["v"], float(t["scale"]))

    def take_rows(self, c, idx):
        return QuantizedFloat(c.v[idx], c.scale)

    def take_cols(self, c, start, stop):
        return QuantizedFloat(c.v[:, start:stop], c.scale), 0


# One entry per family of quant.formats.FAMILIES (fp8 shares the float codec: a cast and a scale).
CODECS: dict[str, Codec] = {"int4": Int4Codec(), "int8": Int8Codec(), "float": FloatCodec(), "fp8": FloatCodec()}


def family_of(c: Codes) -> str:
    """The family whose codec made codes `c`."""
    for fam, codec in CODECS.items():
        if isinstance(c, codec.codes):
            return fam
    raise TypeError(f"not quantized codes: {type(c).__name__}")


def quantize(w: torch.Tensor, fmt: Format) -> Codes:
    """`w` [N, K] in `fmt`, by round-to-nearest: the codes its family's kernel is built from."""
    return CODECS[fmt.family].quantize(w, fmt)


def fake_quantize(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Quantize then dequantize to FP32: what the format keeps of `w`."""
    return CODECS[fmt.family].dequantize(quantize(w, fmt))[:, : w.shape[1]]
