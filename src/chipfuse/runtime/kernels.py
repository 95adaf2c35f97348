"""Linear layers held in a die's precision, executed by PyTorch's packed CPU kernels or our own GEMV.

INT4 uses `_weight_int4pack_mm_for_cpu` and INT8 `_weight_int8pack_mm`, both fed bfloat16
activations (they are fast only then). Decode-sized inputs of INT8, FP8, BF16 and FP16 run the
compiled path's GEMV instead (FP32 activations, weights streamed near DRAM bandwidth); for
prefill, BF16/FP16 use a half-precision GEMM and FP8 is widened to bf16 per call. FP32 is the
dense reference. A tensor shard's INT4 input-column cut (`Int4Partial`) sums in fp32 by a GEMV of ours
so the group's sum can be rounded as the whole layer's would be. Every layer reports the bytes it
holds, which the runtime compares with the plan.
`KERNELS` gives each format family (quant.formats.FAMILIES) its linear layer and its embedding
table, both built from the family's codes (quant.quantize.CODECS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..quant.formats import Format
from ..quant.quantize import Codes, QuantizedFloat, QuantizedInt4, QuantizedInt8, pack_nibbles, quantize, unpack_nibbles

DECODE_ROWS = 16  # up to this many rows (one token per sequence) INT8 runs the compiled GEMV, not the packed GEMM


def _decode_gemv(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, scale: float) -> torch.Tensor | None:
    """y = x @ (w * scale)^T by the compiled path's GEMV (INT8, FP8, BF16 or FP16 weights, FP32 sums) for
    decode-sized inputs, so the Python and compiled paths add the same numbers; None where it does not apply."""
    if x.shape[0] > DECODE_ROWS:
        return None
    from . import fastpath

    mod = fastpath.load()
    return mod.mm_bytes(x, w, s, float(scale)) if mod is not None else None


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _scalar(x: int | float) -> torch.Tensor:
    """A Python number as a 0-d tensor that round-trips exactly (int64 or float64)."""
    return torch.tensor(x, dtype=torch.float64 if isinstance(x, float) else torch.int64)


class Held:
    """Weights a die holds as named tensors (TENSORS) and numbers (SCALARS): `state()` gives them
    already packed, so the prepared cache (prepared.py) can skip quantizing; `from_state` restores them."""

    TENSORS: tuple[str, ...] = ()
    SCALARS: tuple[str, ...] = ()

    def state(self) -> dict[str, torch.Tensor]:
        return {**{k: getattr(self, k) for k in self.TENSORS}, **{k: _scalar(getattr(self, k)) for k in self.SCALARS}}

    @classmethod
    def from_state(cls, st: dict[str, torch.Tensor]):
        self = cls.__new__(cls)
        for k in cls.TENSORS:
            setattr(self, k, st[k])
        for k in cls.SCALARS:
            setattr(self, k, st[k].item())
        return self


class Linear(Held):
    """y = x @ W^T for x of shape [T, K] (float32 in, float32 out), built from its family's codes."""

    SCALARS = ("kind",)  # the compiled path's kernel kind, from the format's registry entry

    def __init__(self, codes: Codes, fmt: Format, in_features: int):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def resident_bytes(self) -> int:
        return _nbytes(*(getattr(self, k) for k in self.TENSORS))

    @property
    def out_features(self) -> int:
        return getattr(self, self.TENSORS[0]).shape[0]

    def cpp_spec(self) -> tuple:
        """(kind, weight, scales, group, pad, scale) for the compiled decode path (csrc/decode.cpp)."""
        raise NotImplementedError

    def rows(self, idx: torch.Tensor) -> torch.Tensor | None:
        """FP32 values of the weight rows `idx` as held (for exact re-scoring), if the layout allows."""
        return None

    @staticmethod
    def round_sum(y: torch.Tensor) -> torch.Tensor:
        """A tensor group's sum of this kernel's partial outputs, rounded as the whole layer's output would be
        (identity for kernels that return fp32)."""
        return y


def refine_top(lin: Linear, x: torch.Tensor, logits: torch.Tensor, k: int = 64) -> torch.Tensor:
    """Recompute in FP32, from the held weights, every logit that could be its row's true maximum.

    The packed kernels return bfloat16 (8 significant bits: steps of 0.125 near 25), which
    turns near-ties between the best tokens into exact ties. Rounding moves a logit by at most
    |logit| * 2^-9, so the true best lies within 2^-8 * |best| of the rounded best; those few
    candidates (at most k) are re-scored at full precision, so greedy decoding picks what the
    held weights say. Sampling sees the other logits to bf16 precision (0.4% relative).
    """
    best = logits.amax(-1, keepdim=True)  # amax: max() with indices is ~8x slower here
    keep = logits >= best - (best.abs() + 1e-6) * 2.0 ** -7
    for i in range(logits.shape[0]):
        idx = keep[i].nonzero().squeeze(1)
        if idx.numel() > k:
            idx = logits[i].topk(k).indices
        w = lin.rows(idx)
        if w is None:
            return logits
        logits[i, idx] = w @ x[i]
    return logits


class DenseLinear(Linear):
    """FP32, FP16 or BF16 weights as they are."""

    TENSORS = ("w",)

    def __init__(self, codes: QuantizedFloat, fmt: Format, in_features: int):
        self.w, self.kind = codes.v.contiguous(), fmt.kind

    def __call__(self, x):
        if self.w.dtype == torch.float32:
            return F.linear(x, self.w)
        y = _decode_gemv(x, self.w, self.w, 1.0)
        return y if y is not None else F.linear(x.to(self.w.dtype), self.w).float()

    def cpp_spec(self):
        return (self.kind, self.w, None, 0, 0, 1.0)

    def rows(self, idx):
        return self.w[idx].float()


class Int8Linear(Linear):
    """Per-channel INT8 codes with bfloat16 row scales."""

    TENSORS = ("q", "s")

    def __init__(self, codes: QuantizedInt8, fmt: Format, in_features: int):
        self.q, self.s, self.kind = codes.q.contiguous(), codes.scale.to(torch.bfloat16), fmt.kind

    def __call__(self, x):
        y = _decode_gemv(x, self.q, self.s, 1.0)
        return y if y is not None else torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.s).float()

    def cpp_spec(self):
        return (self.kind, self.q, self.s, 0, 0, 1.0)

    def rows(self, idx):
        return self.q[idx].float() * self.s[idx].float()[:, None]


class Int4Linear(Linear):
    """Grouped INT4 codes in PyTorch's packed CPU layout, scales and zero points in bfloat16."""

    TENSORS = ("packed", "sz")
    SCALARS = ("kind", "group", "pad", "n_out", "lpad")

    def __init__(self, codes: QuantizedInt4, fmt: Format, in_features: int, lpad: int = 0):
        # zero activations meet the columns a tensor shard's whole groups add in front (lpad) and the padding
        self.lpad = lpad
        self.pad = codes.q.shape[1] - in_features - lpad
        self.packed = torch._convert_weight_to_int4pack_for_cpu(codes.q, 1)
        # kernel layout: [K / group, N, 2] holding (scale, zero) with w = (q - 8) * scale + zero
        self.sz = torch.stack([codes.scale.t(), codes.zero.t()], -1).contiguous().to(torch.bfloat16)
        self.group, self.n_out, self.kind = codes.group, codes.q.shape[0], fmt.kind

    @property
    def out_features(self) -> int:
        return self.n_out

    def __call__(self, x):
        xb = x.to(torch.bfloat16)
        if self.pad or self.lpad:
            xb = F.pad(xb, (self.lpad, self.pad))
        return torch._weight_int4pack_mm_for_cpu(xb, self.packed, self.group, self.sz).float()

    @staticmethod
    def round_sum(y: torch.Tensor) -> torch.Tensor:
        """A tensor group's sum of `Int4Partial` outputs rounded as this kernel rounds its output (bfloat16)."""
        return y.to(torch.bfloat16).float()

    def cpp_spec(self):
        if self.lpad:
            raise ValueError("the packed int4 kernel takes no leading padding (a shard's column cut is Int4Partial)")
        return (self.kind, self.packed, self.sz, self.group, self.pad, 1.0)


KIND_INT4_PARTIAL = 100  # csrc/decode.cpp's kernel for Int4Partial (a kernel of ours, not a format)


class Int4Partial(Linear):
    """A tensor shard's input-column cut of an INT4 layer (its part of the o or down projection). The packed
    kernel would round this part to bfloat16, and the group's sum of rounded parts differs from the whole
    layer's output; so this part is summed in fp32 unrounded and the group's sum is rounded once
    (`Int4Linear.round_sum`), which gives the whole layer's values. Same bytes as Int4Linear: codes two per byte,
    (scale, zero) in bfloat16 per group, laid out by output row for the compiled GEMV."""

    TENSORS = ("codes", "sz")
    SCALARS = ("kind", "group", "pad", "lpad")

    def __init__(self, codes: QuantizedInt4, fmt: Format, in_features: int, lpad: int = 0):
        self.lpad, self.pad = lpad, codes.q.shape[1] - in_features - lpad
        self.codes = pack_nibbles(codes.q)
        self.sz = torch.stack([codes.scale, codes.zero], -1).contiguous().to(torch.bfloat16)
        self.group, self.kind = codes.group, KIND_INT4_PARTIAL

    def __call__(self, x):
        from . import fastpath

        mod = fastpath.load()
        if mod is not None:
            return mod.int4_partial(x, self.codes, self.sz, self.group, self.lpad, self.pad)
        q = unpack_nibbles(self.codes).float()  # no compiled path: the same sums, slowly
        n, k = q.shape
        w = ((q.view(n, k // self.group, self.group) - 8) * self.sz[..., 0].float()[..., None]
             + self.sz[..., 1].float()[..., None]).reshape(n, k)
        xb = F.pad(x.to(torch.bfloat16).float(), (self.lpad, self.pad))
        return xb @ w.t()

    def cpp_spec(self):
        return (self.kind, self.codes, self.sz, self.group, self.pad, 1.0, True, self.lpad)


class Fp8Linear(Linear):
    """FP8 values with one FP32 tensor scale."""

    TENSORS = ("w",)
    SCALARS = ("kind", "scale")

    def __init__(self, codes: QuantizedFloat, fmt: Format, in_features: int):
        self.w, self.scale, self.kind = codes.v, float(codes.scale), fmt.kind

    @property
    def resident_bytes(self) -> int:
        return _nbytes(self.w) + 4

    def __call__(self, x):
        y = _decode_gemv(x, self.w, self.w, self.scale)
        return y if y is not None else F.linear(x.to(torch.bfloat16), self.w.to(torch.bfloat16)).float() * self.scale

    def cpp_spec(self):
        return (self.kind, self.w, None, 0, 0, self.scale)


class Embedding(Held):
    """A token-embedding table held in a format, read by row (the die reads one row per token)."""

    resident_bytes: int

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class FloatEmbedding(Embedding):
    """FP32/FP16/BF16 rows, or FP8 rows with their tensor scale (4 more bytes)."""

    TENSORS = ("v",)
    SCALARS = ("scale", "scale_bytes")

    def __init__(self, codes: QuantizedFloat, fmt: Format, width: int):
        self.v, self.scale, self.scale_bytes = codes.v, float(codes.scale), 4 if fmt.per_tensor_scale else 0

    @property
    def resident_bytes(self) -> int:
        return _nbytes(self.v) + self.scale_bytes

    def lookup(self, ids):
        return self.v[ids].float() * self.scale


class Int8Embedding(Embedding):
    """INT8 rows with bfloat16 row scales (the values Int8Linear.rows gives)."""

    TENSORS = ("q", "s")

    def __init__(self, codes: QuantizedInt8, fmt: Format, width: int):
        self.q, self.s = codes.q, codes.scale.to(torch.bfloat16)

    @property
    def resident_bytes(self) -> int:
        return _nbytes(self.q, self.s)

    def lookup(self, ids):
        return self.q[ids].float() * self.s[ids].float()[:, None]


class Int4Embedding(Embedding):
    """INT4 rows two codes per byte, FP16 group scales and zero points (none counted when symmetric)."""

    TENSORS = ("packed", "scale", "zero")
    SCALARS = ("group", "width", "symmetric")

    def __init__(self, codes: QuantizedInt4, fmt: Format, width: int):
        self.packed = pack_nibbles(codes.q)
        self.scale, self.zero = codes.scale.to(torch.float16), codes.zero.to(torch.float16)
        self.group, self.width, self.symmetric = codes.group, width, int(fmt.symmetric)

    @property
    def resident_bytes(self) -> int:
        return _nbytes(self.packed, self.scale) + (0 if self.symmetric else _nbytes(self.zero))

    def lookup(self, ids):
        q = unpack_nibbles(self.packed[ids]).float()
        n, k = q.shape
        g = (q.view(n, k // self.group, self.group) - 8) * self.scale[ids].float()[..., None] + \
            self.zero[ids].float()[..., None]
        return g.reshape(n, k)[:, : self.width]


@dataclass(frozen=True)
class Kernels:
    """What a die runs a format family with: its linear layer and its embedding table."""

    linear: type[Linear]
    embedding: type[Embedding]


# One entry per family of quant.formats.FAMILIES.
KERNELS = {"float": Kernels(DenseLinear, FloatEmbedding), "fp8": Kernels(Fp8Linear, FloatEmbedding),
           "int8": Kernels(Int8Linear, Int8Embedding), "int4": Kernels(Int4Linear, Int4Embedding)}
# kernel classes by name: the prepared cache's layout records which class holds each weight
HELD = {c.__name__: c for k in KERNELS.values() for c in (k.linear, k.embedding)}


def make_linear(w: torch.Tensor | None, fmt: Format, codes: Codes | None = None, in_features: int = 0,
                lpad: int = 0) -> Linear:
    """The layer holding `w` [N, K] in `fmt`: round-to-nearest codes, or `codes` a calibration method chose
    (a tensor shard's, with `lpad` leading columns that meet zero inputs)."""
    codes = quantize(w, fmt) if codes is None else codes
    kernel = KERNELS[fmt.family].linear
    n_in = w.shape[1] if w is not None else in_features
    return kernel(codes, fmt, n_in, lpad) if lpad else kernel(codes, fmt, n_in)


def make_embedding(w: torch.Tensor, fmt: Format) -> Embedding:
    """The embedding table `w` [V, D] held in `fmt`."""
    return KERNELS[fmt.family].embedding(quantize(w, fmt), fmt, w.shape[1])
