"""Run a vision model (`ir.cv.CVModel`) with torch, whole or a range of its nodes, at a die's precision.

Our own interpreter of the ONNX ops the IR knows, so that a die runs what the plan gives it and
onnxruntime stays the independent reference. Precisions, as a die of each kind holds them:
- fp32: everything in float32;
- fp16 / bf16: weights and every op's output rounded to that type, arithmetic in float32 (an NPU that
  stores 16-bit values and accumulates wider);
- int8: convolution and matmul weights symmetric int8 with one scale per output channel, their
  inputs symmetric int8 with one scale per tensor taken from the tensor itself (dynamic), the other
  ops' outputs rounded to fp16.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ChipfuseError
from ..ir.cv import WEIGHT_OPS, CVModel, CVNode, live_sets

CV_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_ROUND = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float16}
_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
           16: torch.bfloat16, 2: torch.uint8, 3: torch.int8}


def _int8_rows(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8, one scale per output channel (row), dequantised back to float32."""
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    return (torch.round(flat / scale).clamp(-127, 127) * scale).reshape(w.shape)


def _int8_tensor(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax().clamp_min(1e-12) / 127.0
    return torch.round(x / scale).clamp(-127, 127) * scale


def _pad_for(x: torch.Tensor, attrs: dict, value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads as torch wants them; asymmetric ones applied here with F.pad (then none left)."""
    r = x.dim() - 2
    p = list(attrs.get("pads", [0] * 2 * r))
    begin, end = p[:r], p[r:]
    if begin == end:
        return x, begin
    spec: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        spec += [b, e]
    return F.pad(x, spec, value=value), [0] * r


def _slice(x: torch.Tensor, starts, ends, axes, steps) -> torch.Tensor:
    index: list[slice] = [slice(None)] * x.dim()
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % x.dim()
        st, en, sp = int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp)
        if sp < 0:
            idx = list(range(*slice(st, en, sp).indices(x.shape[ax])))
            x = x.index_select(ax, torch.tensor(idx, dtype=torch.long)) if idx else x.narrow(ax, 0, 0)
            continue
        index[ax] = slice(st, en, sp)
    return x[tuple(index)]


def _resize(x: torch.Tensor, out_shape: list[int], attrs: dict) -> torch.Tensor:
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    size = out_shape[2:]
    if mode == "nearest":
        if ctm != "asymmetric" or attrs.get("nearest_mode", "round_prefer_floor") != "floor":
            raise ChipfuseError(f"Resize nearest with {ctm}/{attrs.get('nearest_mode')}: only asymmetric/floor "
                                "is run")
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "linear":
        if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise ChipfuseError(f"Resize linear with {ctm}: only half_pixel and align_corners are run")
        return F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "linear",
                             align_corners=ctm == "align_corners")
    raise ChipfuseError(f"Resize mode {mode!r} is not run")


def _softmax(x: torch.Tensor, axis: int, opset: int) -> torch.Tensor:
    axis %= x.dim()
    if opset >= 13 or axis == x.dim() - 1:
        return torch.softmax(x, axis)
    shape = x.shape  # opset < 13: the input is coerced to 2D at `axis`
    return torch.softmax(x.reshape(math.prod(shape[:axis]), -1), 1).reshape(shape)


class CVProgram:
    """Nodes [start, end) of a model, ready to run: its weights as torch tensors at the precision.

    `run(tensors)` takes the tensors live at `start` (the input when start is 0) by name and returns
    the ones live at `end` (the outputs when end is the last), so consecutive programs chain."""

    def __init__(self, model: CVModel, precision: str = "fp32", start: int = 0, end: int | None = None):
        if precision not in CV_PRECISIONS:
            raise ChipfuseError(f"precision {precision!r}: vision models run at {', '.join(CV_PRECISIONS)}")
        self.model, self.precision, self.opset = model, precision, model.opset
        self.start, self.end = start, len(model.nodes) if end is None else end
        if not 0 <= self.start < self.end <= len(model.nodes):
            raise ChipfuseError(f"nodes [{start}, {end}) of {model.name}: not a range of its {len(model.nodes)} nodes")
        lives = live_sets(model)
        self.inputs, self.outputs = lives[self.start], lives[self.end]
        self.nodes = model.nodes[self.start:self.end]
        held = {n.inputs[1] for n in self.nodes if n.op in WEIGHT_OPS and len(n.inputs) > 1}
        used = {i for n in self.nodes for i in n.inputs if i in model.constants}
        self.consts: dict[str, torch.Tensor] = {}
        for name in used:
            arr = model.constants[name]
            t = torch.from_numpy(np.ascontiguousarray(arr).copy())
            if t.is_floating_point():
                t = t.float()
                if precision == "int8" and name in held and t.dim() >= 2:
                    t = _int8_rows(t)
                elif precision in _ROUND:
                    t = t.to(_ROUND[precision]).float()
            self.consts[name] = t
        self.resident_bytes = sum(model.constants[n].nbytes for n in used)
        self._round = _ROUND.get(precision)

    @torch.inference_mode()
    def run(self, tensors: dict[str, torch.Tensor], times: list[float] | None = None) -> dict[str, torch.Tensor]:
        """The outputs for `tensors`; with `times`, each node's wall seconds appended to it (for calibration)."""
        missing = [n for n in self.inputs if n not in tensors]
        if missing:
            raise ChipfuseError(f"{self.model.name} nodes [{self.start}, {self.end}): missing inputs {missing}")
        env: dict[str, torch.Tensor] = dict(self.consts)
        env.update({k: v for k, v in tensors.items() if k in self.inputs})
        last_use: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for name in n.inputs:
                last_use[name] = i
        keep = set(self.outputs)
        for i, n in enumerate(self.nodes):
            t0 = time.perf_counter() if times is not None else 0.0
            outs = self._op(n, [env[x] if x else None for x in n.inputs])
            for name, t in zip(n.outputs, outs):
                if self._round is not None and t.is_floating_point():
                    t = t.to(self._round).float()
                env[name] = t
            if times is not None:
                times.append(time.perf_counter() - t0)
            for name in n.inputs:  # free what nothing later reads (activations of a big frame add up)
                if name and last_use.get(name) == i and name not in keep and name not in self.consts:
                    env.pop(name, None)
        return {k: env[k] for k in self.outputs}

    def _op(self, n: CVNode, x: list[torch.Tensor | None]) -> list[torch.Tensor]:
        fn = _OPS.get(n.op)
        if fn is None:
            raise ChipfuseError(f"{self.model.name}: node {n.name}: op {n.op} has no kernel")
        if self.precision == "int8" and n.op in WEIGHT_OPS:
            x = [_int8_tensor(x[0])] + x[1:]  # type: ignore[list-item]
        out = fn(self, n.attrs, x)
        return out if isinstance(out, list) else [out]


def _conv(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    inp, w, b = x[0], x[1], x[2] if len(x) > 2 else None
    if inp.dim() != 4:
        raise ChipfuseError(f"Conv of a {inp.dim()}-D tensor: 2-D convolutions are run")
    inp, pad = _pad_for(inp, a)
    return F.conv2d(inp, w, b, a.get("strides", [1, 1]), pad, a.get("dilations", [1, 1]), a.get("group", 1))


def _conv_t(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    inp, w, b = x[0], x[1], x[2] if len(x) > 2 else None
    r = inp.dim() - 2
    pads = list(a.get("pads", [0] * 2 * r))
    if pads[:r] != pads[r:]:
        raise ChipfuseError("ConvTranspose with asymmetric pads is not run")
    return F.conv_transpose2d(inp, w, b, a.get("strides", [1, 1]), pads[:r], a.get("output_padding", [0] * r),
                              a.get("group", 1), a.get("dilations", [1, 1]))


def _pool(kind: str) -> Callable:
    def run(p: CVProgram, a: dict, x: list) -> torch.Tensor:
        k = a["kernel_shape"]
        s = a.get("strides", [1] * len(k))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            inp, pad = _pad_for(x[0], a, float("-inf"))
            return F.max_pool2d(inp, k, s, pad, a.get("dilations", [1] * len(k)), ceil)
        inp, pad = _pad_for(x[0], a)
        return F.avg_pool2d(inp, k, s, pad, ceil, bool(a.get("count_include_pad", 0)))
    return run


def _binary(fn: Callable) -> Callable:
    return lambda p, a, x: fn(x[0], x[1])


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _clip(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    return x[0].clamp(lo, hi)


def _reshape(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    target = [int(v) for v in x[1].tolist()]
    shape = [x[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x[0].reshape(shape)


def _squeeze(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    axes = a.get("axes")
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = x[1].tolist()
    if axes is None:
        return x[0].squeeze()
    return x[0].squeeze(tuple(ax % x[0].dim() for ax in axes))


def _unsqueeze(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    axes = a.get("axes")
    if axes is None:
        axes = x[1].tolist()
    out = x[0]
    rank = out.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        out = out.unsqueeze(ax)
    return out


def _gemm(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    A = x[0].T if a.get("transA") else x[0]
    B = x[1].T if a.get("transB") else x[1]
    out = a.get("alpha", 1.0) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        out = out + a.get("beta", 1.0) * x[2]
    return out


def _slice_op(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    starts, ends = x[1].tolist(), x[2].tolist()
    axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
    return _slice(x[0], starts, ends, axes, steps)


def _resize_op(p: CVProgram, a: dict, x: list) -> torch.Tensor:
    inp = x[0]
    if len(x) > 3 and x[3] is not None and x[3].numel():
        size = [int(v) for v in x[3].tolist()]
    else:
        size = [int(math.floor(d * float(f))) for d, f in zip(inp.shape, x[2].tolist())]
    return _resize(inp, size, a)


_OPS: dict[str, Callable] = {
    "Conv": _conv, "ConvTranspose": _conv_t,
    "MatMul": lambda p, a, x: torch.matmul(x[0], x[1]), "Gemm": _gemm,
    "BatchNormalization": lambda p, a, x: F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0,
                                                       a.get("epsilon", 1e-5)),
    "LayerNormalization": lambda p, a, x: F.layer_norm(
        x[0], x[0].shape[a.get("axis", -1) % x[0].dim():], x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5)),
    "InstanceNormalization": lambda p, a, x: F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5)),
    "GlobalAveragePool": lambda p, a, x: x[0].mean(tuple(range(2, x[0].dim())), keepdim=True),
    "AveragePool": _pool("avg"), "MaxPool": _pool("max"),
    "ReduceMean": lambda p, a, x: x[0].mean(tuple(a.get("axes", range(x[0].dim()))), keepdim=bool(a.get("keepdims", 1))),
    "Softmax": lambda p, a, x: _softmax(x[0], a.get("axis", -1 if p.opset >= 13 else 1), p.opset),
    "Resize": _resize_op,
    "Relu": lambda p, a, x: torch.relu(x[0]), "Clip": _clip, "Sigmoid": lambda p, a, x: torch.sigmoid(x[0]),
    "HardSigmoid": lambda p, a, x: (a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5)).clamp(0.0, 1.0),
    "HardSwish": lambda p, a, x: x[0] * (x[0] / 6.0 + 0.5).clamp(0.0, 1.0),
    "Tanh": lambda p, a, x: torch.tanh(x[0]), "Erf": lambda p, a, x: torch.erf(x[0]),
    "Sqrt": lambda p, a, x: torch.sqrt(x[0]), "Exp": lambda p, a, x: torch.exp(x[0]),
    "Pow": _binary(torch.pow), "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Cast": lambda p, a, x: x[0].to(_DTYPES[a["to"]]), "Identity": lambda p, a, x: x[0],
    "Reshape": _reshape, "Flatten": lambda p, a, x: x[0].reshape(math.prod(x[0].shape[:a.get("axis", 1)]), -1),
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": lambda p, a, x: x[0].permute(a.get("perm", list(range(x[0].dim()))[::-1])),
    "Concat": lambda p, a, x: torch.cat([t for t in x if t is not None], a["axis"]),
    "Slice": _slice_op, "Shape": lambda p, a, x: torch.tensor(x[0].shape[a.get("start", 0):a.get("end")],
                                                             dtype=torch.int64),
    "Gather": lambda p, a, x: torch.index_select(x[0], a.get("axis", 0) % x[0].dim(), x[1].reshape(-1).long()
                                                 ).reshape(*x[0].shape[:a.get("axis", 0) % x[0].dim()], *x[1].shape,
                                                           *x[0].shape[a.get("axis", 0) % x[0].dim() + 1:]),
}


def run_whole(model: CVModel, frame: np.ndarray, precision: str = "fp32") -> dict[str, np.ndarray]:
    """The model on one input, in this process (the reference path the dies are checked against too)."""
    prog = CVProgram(model, precision)
    out = prog.run({model.input_name: torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32))})
    return {k: v.float().numpy() for k, v in out.items()}


__all__ = ["CVProgram", "CV_PRECISIONS", "run_whole"]
