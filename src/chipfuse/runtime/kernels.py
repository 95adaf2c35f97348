"""Linear layers held in a die's precision, executed by PyTorch's packed CPU kernels or our own GEMV.

INT4 uses `_weight_int4pack_mm_for_cpu` and INT8 `_weight_int8pack_mm`, both fed bfloat16
activations (they are fast only then). Decode-sized inputs of INT8, FP8, BF16 and FP16 run the
compiled path's GEMV instead (FP32 activations, weights streamed near DRAM bandwidth); for
prefill, BF16/FP16 use a half-precision GEMM and FP8 is widened to bf16 per call. FP32 is the
dense reference. Every layer reports the bytes it holds, which the runtime compares with the plan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant.formats import Format
from ..quant.quantize import FP8_DTYPES, quantize_fp8, quantize_int4, quantize_int8

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


class Linear:
    """y = x @ W^T for x of shape [T, K] (float32 in, float32 out)."""

    resident_bytes: int = 0
    out_features: int = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def cpp_spec(self) -> tuple:
        """(kind, weight, scales, group, pad, scale) for the compiled decode path (csrc/decode.cpp)."""
        raise NotImplementedError

    def rows(self, idx: torch.Tensor) -> torch.Tensor | None:
        """FP32 values of the weight rows `idx` as held (for exact re-scoring), if the layout allows."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors this layer holds, already packed, so a cache can skip quantizing (prepared.py)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, st: dict[str, torch.Tensor]) -> Linear:
        """The layer holding exactly the tensors `state()` gave."""
        raise NotImplementedError


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
    def __init__(self, w: torch.Tensor, dtype: torch.dtype):
        self.w = w.to(dtype).contiguous()
        self.dtype = dtype
        self.out_features = w.shape[0]
        self.resident_bytes = _nbytes(self.w)

    def __call__(self, x):
        if self.dtype == torch.float32:
            return F.linear(x, self.w)
        y = _decode_gemv(x, self.w, self.w, 1.0)
        return y if y is not None else F.linear(x.to(self.dtype), self.w).float()

    def cpp_spec(self):
        return (0 if self.dtype == torch.float32 else 1, self.w, None, 0, 0, 1.0)

    def rows(self, idx):
        return self.w[idx].float()

    def state(self):
        return {"w": self.w}

    @classmethod
    def from_state(cls, st):
        self = cls.__new__(cls)
        self.w, self.dtype = st["w"], st["w"].dtype
        self.out_features, self.resident_bytes = self.w.shape[0], _nbytes(self.w)
        return self


class Int8Linear(Linear):
    def __init__(self, w: torch.Tensor | None, quantized=None):
        """From an FP32 weight (round-to-nearest), or from codes a calibration method chose."""
        q, s = (quantized.q, quantized.scale) if quantized is not None else quantize_int8(w)
        self.q = q.contiguous()
        self.s = s.to(torch.bfloat16)
        self.out_features = q.shape[0]
        self.resident_bytes = _nbytes(self.q, self.s)

    def __call__(self, x):
        y = _decode_gemv(x, self.q, self.s, 1.0)
        return y if y is not None else torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.s).float()

    def cpp_spec(self):
        return (2, self.q, self.s, 0, 0, 1.0)

    def rows(self, idx):
        return self.q[idx].float() * self.s[idx].float()[:, None]

    def state(self):
        return {"q": self.q, "s": self.s}

    @classmethod
    def from_state(cls, st):
        self = cls.__new__(cls)
        self.q, self.s = st["q"], st["s"]
        self.out_features, self.resident_bytes = self.q.shape[0], _nbytes(self.q, self.s)
        return self


class Int4Linear(Linear):
    def __init__(self, w: torch.Tensor | None, group: int, symmetric: bool, quantized=None, in_features: int = 0):
        """From an FP32 weight (round-to-nearest), or from codes a calibration method chose."""
        t = quantized if quantized is not None else quantize_int4(w, group, symmetric)
        self.pad = t.q.shape[1] - (w.shape[1] if w is not None else in_features)  # zero activations meet padding
        self.packed = torch._convert_weight_to_int4pack_for_cpu(t.q, 1)
        # kernel layout: [K / group, N, 2] holding (scale, zero) with w = (q - 8) * scale + zero
        self.sz = torch.stack([t.scale.t(), t.zero.t()], -1).contiguous().to(torch.bfloat16)
        self.group = t.group
        self.out_features = t.q.shape[0]
        self.resident_bytes = _nbytes(self.packed, self.sz)

    def __call__(self, x):
        xb = x.to(torch.bfloat16)
        if self.pad:
            xb = F.pad(xb, (0, self.pad))
        return torch._weight_int4pack_mm_for_cpu(xb, self.packed, self.group, self.sz).float()

    def cpp_spec(self):
        return (3, self.packed, self.sz, self.group, self.pad, 1.0)

    def state(self):
        return {"packed": self.packed, "sz": self.sz, "group": _scalar(self.group), "pad": _scalar(self.pad),
                "out_features": _scalar(self.out_features)}

    @classmethod
    def from_state(cls, st):
        self = cls.__new__(cls)
        self.packed, self.sz = st["packed"], st["sz"]
        self.group, self.pad, self.out_features = int(st["group"]), int(st["pad"]), int(st["out_features"])
        self.resident_bytes = _nbytes(self.packed, self.sz)
        return self


class Fp8Linear(Linear):
    def __init__(self, w: torch.Tensor, name: str):
        self.w, self.scale = quantize_fp8(w, name)
        self.out_features = w.shape[0]
        self.resident_bytes = _nbytes(self.w) + 4

    def __call__(self, x):
        y = _decode_gemv(x, self.w, self.w, self.scale)
        return y if y is not None else F.linear(x.to(torch.bfloat16), self.w.to(torch.bfloat16)).float() * self.scale

    def cpp_spec(self):
        return (4, self.w, None, 0, 0, float(self.scale))

    def state(self):
        return {"w": self.w, "scale": _scalar(float(self.scale))}

    @classmethod
    def from_state(cls, st):
        self = cls.__new__(cls)
        self.w, self.scale = st["w"], float(st["scale"])
        self.out_features, self.resident_bytes = self.w.shape[0], _nbytes(self.w) + 4
        return self


LINEARS = {c.__name__: c for c in (DenseLinear, Int8Linear, Int4Linear, Fp8Linear)}


def make_linear(w: torch.Tensor, fmt: Format) -> Linear:
    """Quantize an FP32 weight [N, K] into `fmt` and return the layer that runs it."""
    if fmt.precision == "int4":
        return Int4Linear(w, fmt.group_size or 32, fmt.symmetric)
    if fmt.name == "int8":
        return Int8Linear(w)
    if fmt.name in FP8_DTYPES:
        return Fp8Linear(w, fmt.name)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[fmt.name]
    return DenseLinear(w, dtype)


class Embedding:
    """A token-embedding table held in a format, read by row (the die reads one row per token)."""

    def __init__(self, w: torch.Tensor, fmt: Format):
        self.fmt = fmt
        self.width = w.shape[1]
        if fmt.precision == "int4":
            t = quantize_int4(w, fmt.group_size or 32, fmt.symmetric)
            q = t.q.to(torch.uint8)
            self.packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()  # two weights per byte
            self.scale, self.zero, self.group = t.scale.to(torch.float16), t.zero.to(torch.float16), t.group
            self.resident_bytes = _nbytes(self.packed, self.scale) + (0 if fmt.symmetric else _nbytes(self.zero))
        elif fmt.name == "int8":
            q, s = quantize_int8(w)
            self.q, self.s = q, s.to(torch.bfloat16)  # the same values Int8Linear.rows gives
            self.resident_bytes = _nbytes(self.q, self.s)
        elif fmt.name in FP8_DTYPES:
            self.v, self.fscale = quantize_fp8(w, fmt.name)
            self.resident_bytes = _nbytes(self.v) + 4
        else:
            self.table = w.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[fmt.name])
            self.resident_bytes = _nbytes(self.table)

    FIELDS = ("packed", "scale", "zero", "q", "s", "v", "table")

    def state(self) -> dict[str, torch.Tensor]:
        """The table as held (packed codes, scales...), so a cache can skip quantizing (prepared.py)."""
        st = {k: getattr(self, k) for k in self.FIELDS if hasattr(self, k)}
        st["width"] = _scalar(self.width)
        st["resident_bytes"] = _scalar(self.resident_bytes)
        if hasattr(self, "group"):
            st["group"] = _scalar(self.group)
        if hasattr(self, "fscale"):
            st["fscale"] = _scalar(float(self.fscale))
        return st

    @classmethod
    def from_state(cls, st: dict[str, torch.Tensor], fmt: Format) -> Embedding:
        self = cls.__new__(cls)
        self.fmt = fmt
        for k in cls.FIELDS:
            if k in st:
                setattr(self, k, st[k])
        self.width, self.resident_bytes = int(st["width"]), int(st["resident_bytes"])
        if "group" in st:
            self.group = int(st["group"])
        if "fscale" in st:
            self.fscale = float(st["fscale"])
        return self

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.fmt.precision == "int4":
            p = self.packed[ids]
            q = torch.stack([p & 0xF, p >> 4], -1).reshape(len(ids), -1).float()
            n, k = q.shape
            g = (q.view(n, k // self.group, self.group) - 8) * self.scale[ids].float()[..., None] + \
                self.zero[ids].float()[..., None]
            return g.reshape(n, k)[:, : self.width]
        if self.fmt.name == "int8":
            return self.q[ids].float() * self.s[ids].float()[:, None]
        if self.fmt.name in FP8_DTYPES:
            return self.v[ids].float() * self.fscale
        return self.table[ids].float()


def make_embedding(w: torch.Tensor, fmt: Format) -> Embedding:
    return Embedding(w, fmt)
