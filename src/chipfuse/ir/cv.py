"""Vision models in the IR: a graph of ONNX-style ops, each op's work and bytes per frame, and where it can be cut.

A `CVModel` is what a front end (ONNX, torch.fx) hands over: nodes in execution order, the constant
tensors (weights) by name, the input and outputs. `shapes(model, input_shape)` walks the nodes once
with shape rules (and the values of the small integer tensors that compute shapes), so a frame size
gives every tensor's shape; `cv_costs` turns those into the per-op arrays the one roofline reads
(`ir.graph.OpCosts`). An op this module has no rule for is never costed as zero: `KNOWN_OPS` is the
list, and the front end refuses a file with anything else, by name. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from ..quant.formats import Format
from .graph import OpCosts

# op -> the kind it is reported as (the families) and the FLOP it does per output element where
# that is all it costs (None: a rule of its own below)
OP_RULES: dict[str, tuple[str, float | None]] = {
    "Conv": ("conv", None), "ConvTranspose": ("conv", None), "MatMul": ("matmul", None), "Gemm": ("matmul", None),
    "BatchNormalization": ("norm", 2.0), "LayerNormalization": ("norm", 8.0), "InstanceNormalization": ("norm", 8.0),
    "GlobalAveragePool": ("pool", None), "AveragePool": ("pool", None), "MaxPool": ("pool", None),
    "ReduceMean": ("norm", None), "Softmax": ("activation", 5.0), "Resize": ("resize", None),
    "Relu": ("activation", 1.0), "Clip": ("activation", 2.0), "Sigmoid": ("activation", 4.0),
    "HardSigmoid": ("activation", 3.0), "HardSwish": ("activation", 4.0), "Tanh": ("activation", 4.0),
    "Erf": ("activation", 8.0), "Sqrt": ("activation", 4.0), "Pow": ("activation", 4.0), "Exp": ("activation", 4.0),
    "Add": ("elementwise", 1.0), "Sub": ("elementwise", 1.0), "Mul": ("elementwise", 1.0), "Div": ("elementwise", 1.0),
    "Cast": ("data", 0.0), "Identity": ("data", 0.0), "Reshape": ("data", 0.0), "Flatten": ("data", 0.0),
    "Squeeze": ("data", 0.0), "Unsqueeze": ("data", 0.0), "Transpose": ("data", 0.0), "Concat": ("data", 0.0),
    "Slice": ("data", 0.0), "Shape": ("data", 0.0), "Constant": ("data", 0.0), "Gather": ("data", 0.0),
}
KNOWN_OPS = tuple(sorted(OP_RULES))
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # their constant operand is held in the weight format
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int8": 1,
               "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class CVNode:
    """One op: its type, input and output tensor names ("" for an absent optional input), attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def kind(self) -> str:
        return OP_RULES[self.op][0]


@dataclass
class CVModel:
    """A vision model: nodes in execution order, constants by name (numpy arrays), one image input.

    `input_shape` has None for the dimensions a frame sets (batch, height, width); `frame_shape` is the
    one it is costed and run at unless told otherwise."""

    name: str
    nodes: list[CVNode]
    constants: dict[str, np.ndarray]
    input_name: str
    input_shape: tuple[int | None, ...]
    outputs: tuple[str, ...]
    frame_shape: tuple[int, ...]
    meta: dict[str, str] = field(default_factory=dict)
    source: str = ""
    opset: int = 13  # the ONNX opset the ops follow (Softmax's axis semantics changed at 13)

    def weight_names(self) -> list[str]:
        """The float constants the ops read (what a die holds), in first-use order, each once."""
        seen: dict[str, None] = {}
        for n in self.nodes:
            for i in n.inputs:
                c = self.constants.get(i)
                if c is not None and c.dtype.kind == "f" and i not in seen:
                    seen[i] = None
        return list(seen)

    def param_count(self) -> int:
        return int(sum(self.constants[n].size for n in self.weight_names()))


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    value: np.ndarray | None = field(default=None, compare=False)  # small integer tensors: their values

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    def nbytes(self, float_bytes: float) -> float:
        """Bytes at `float_bytes` per float element (the die's activation precision), integers as they are."""
        return self.elements * (float_bytes if self.dtype in ("float32", "float16", "bfloat16") else
                                DTYPE_BYTES.get(self.dtype, 4))


class ShapeError(SpecError):
    """A model's shapes do not work out for a frame size."""


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 16: "bfloat16"}


def onnx_dtype(code: int) -> str:
    return _ONNX_DTYPES.get(code, f"onnx-{code}")


def _conv_out(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool = False) -> int:
    span = size + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if out < 1:
        raise ShapeError(f"a window of {k} (dilation {d}) does not fit {size} pixels with padding {pb}+{pe}")
    return out


def _pads(attrs: dict, rank: int) -> tuple[list[int], list[int]]:
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        raise ShapeError(f"auto_pad {attrs['auto_pad']!r} is not supported (only explicit pads)")
    p = list(attrs.get("pads", [0] * 2 * rank))
    return p[:rank], p[rank:]


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def _vals(info: dict[str, TensorInfo], name: str, what: str) -> np.ndarray:
    t = info.get(name)
    if t is None or t.value is None:
        raise ShapeError(f"{what} ({name}) must be a constant or computed from shapes")
    return t.value


def shapes(model: CVModel, input_shape: tuple[int, ...] | None = None) -> dict[str, TensorInfo]:
    """Every tensor's shape and dtype for one input of `input_shape` (default: the model's frame)."""
    shape = tuple(input_shape or model.frame_shape)
    want = model.input_shape
    if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)):
        raise ShapeError(f"{model.name}: input {shape} does not match the model's {want} (None: any)")
    if any(s < 1 for s in shape):
        raise ShapeError(f"{model.name}: input {shape} has an empty dimension")
    info: dict[str, TensorInfo] = {model.input_name: TensorInfo(shape, "float32")}
    for name, c in model.constants.items():
        info[name] = TensorInfo(tuple(c.shape), str(c.dtype), c if c.dtype.kind in "iub" and c.size <= 64 else None)
    for n in model.nodes:
        try:
            outs = _rule(n, info, model.constants)
        except ShapeError as e:
            raise ShapeError(f"{model.name}: node {n.name} ({n.op}): {e}") from None
        for o, t in zip(n.outputs, outs):
            info[o] = t
    return info


def _rule(n: CVNode, info: dict[str, TensorInfo], consts: dict[str, np.ndarray]) -> list[TensorInfo]:
    a = n.attrs
    ins: list[Any] = [info[i] if i else None for i in n.inputs]  # None: an absent optional input
    x: Any = ins[0] if ins else None
    out: Any  # a shape, built as a list or a tuple by each rule
    axes: Any
    op = n.op
    if op == "Constant":
        v = a["value"]
        return [TensorInfo(tuple(v.shape), str(v.dtype), v if v.dtype.kind in "iub" and v.size <= 64 else None)]
    if op in ("Conv", "ConvTranspose"):
        w = ins[1]
        k = w.shape[2:]
        r = len(k)
        s, d = a.get("strides", [1] * r), a.get("dilations", [1] * r)
        pb, pe = _pads(a, r)
        g = a.get("group", 1)
        if op == "Conv":
            if x.shape[1] != w.shape[1] * g:
                raise ShapeError(f"{x.shape[1]} input channels, the weight expects {w.shape[1]} x group {g}")
            sp = [_conv_out(x.shape[2 + i], k[i], s[i], d[i], pb[i], pe[i]) for i in range(r)]
            return [TensorInfo((x.shape[0], w.shape[0], *sp), x.dtype)]
        op_pad = a.get("output_padding", [0] * r)
        sp = [s[i] * (x.shape[2 + i] - 1) + op_pad[i] + (k[i] - 1) * d[i] + 1 - pb[i] - pe[i] for i in range(r)]
        return [TensorInfo((x.shape[0], w.shape[1] * g, *sp), x.dtype)]
    if op in ("MatMul", "Gemm"):
        b = ins[1]
        if op == "Gemm":
            m = x.shape[::-1] if a.get("transA") else x.shape
            nn = b.shape[::-1] if a.get("transB") else b.shape
            return [TensorInfo((m[0], nn[1]), x.dtype)]
        if x.shape[-1] != b.shape[-2 if len(b.shape) > 1 else 0]:
            raise ShapeError(f"MatMul of {x.shape} by {b.shape}")
        lead = _broadcast(x.shape[:-2], b.shape[:-2]) if len(b.shape) > 1 else x.shape[:-2]
        return [TensorInfo((*lead, x.shape[-2], *(b.shape[-1:] if len(b.shape) > 1 else ())), x.dtype)]
    if op in ("GlobalAveragePool",):
        return [TensorInfo((*x.shape[:2], *([1] * (len(x.shape) - 2))), x.dtype)]
    if op in ("AveragePool", "MaxPool"):
        k = a["kernel_shape"]
        r = len(k)
        s, d = a.get("strides", [1] * r), a.get("dilations", [1] * r)
        pb, pe = _pads(a, r)
        sp = [_conv_out(x.shape[2 + i], k[i], s[i], d[i], pb[i], pe[i], bool(a.get("ceil_mode", 0)))
              for i in range(r)]
        return [TensorInfo((*x.shape[:2], *sp), x.dtype)]
    if op == "Resize":
        scales = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].elements else None
        if len(ins) > 3 and ins[3] is not None and ins[3].elements:
            return [TensorInfo(tuple(int(v) for v in _vals(info, n.inputs[3], "sizes")), x.dtype)]
        if scales is None:
            raise ShapeError("Resize needs scales or sizes")
        sc = consts.get(n.inputs[2])
        if sc is None:
            raise ShapeError("Resize scales must be a constant")
        return [TensorInfo(tuple(int(math.floor(dim * float(f))) for dim, f in zip(x.shape, sc)), x.dtype)]
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        y = ins[1]
        out = _broadcast(x.shape, y.shape)
        val = None
        if x.value is not None and y.value is not None:
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.floor_divide, "Pow": np.power}[op]
            val = f(x.value, y.value)
        dt = x.dtype if x.dtype.startswith("float") or not y.dtype.startswith("float") else y.dtype
        return [TensorInfo(out, dt, val)]
    if op in ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Sqrt", "Exp", "Identity",
              "Softmax", "BatchNormalization", "LayerNormalization", "InstanceNormalization"):
        return [TensorInfo(x.shape, x.dtype, x.value if op == "Identity" else None)]
    if op == "Cast":
        dt = onnx_dtype(a["to"])
        val = x.value.astype(np.float32 if dt.startswith("float") else np.int64) if x.value is not None else None
        return [TensorInfo(x.shape, dt, val)]
    if op == "Shape":
        v = np.array(x.shape, dtype=np.int64)
        start, end = a.get("start", 0), a.get("end", len(x.shape))
        v = v[start:end]
        return [TensorInfo(v.shape, "int64", v)]
    if op == "Concat":
        axis = a["axis"] % len(x.shape)
        parts = [t for t in ins if t is not None]
        size = sum(t.shape[axis] for t in parts)
        out = list(x.shape)
        out[axis] = size
        val = np.concatenate([t.value for t in parts], axis) if all(t.value is not None for t in parts) else None
        return [TensorInfo(tuple(out), x.dtype, val)]
    if op == "Slice":
        starts = _vals(info, n.inputs[1], "starts")
        ends = _vals(info, n.inputs[2], "ends")
        axes = _vals(info, n.inputs[3], "axes") if len(n.inputs) > 3 and n.inputs[3] else range(len(starts))
        steps = _vals(info, n.inputs[4], "steps") if len(n.inputs) > 4 and n.inputs[4] else [1] * len(starts)
        out = list(x.shape)
        index: list[slice] = [slice(None)] * len(out)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = int(ax) % len(out)
            sl = slice(int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp))
            out[ax] = len(range(*sl.indices(out[ax])))
            index[ax] = sl
        val = x.value[tuple(index)] if x.value is not None else None
        return [TensorInfo(tuple(out), x.dtype, val)]
    if op == "Reshape":
        target = [int(v) for v in _vals(info, n.inputs[1], "the new shape")]
        out = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        if out.count(-1) > 1:
            raise ShapeError(f"Reshape to {target}: more than one -1")
        if -1 in out:
            known = math.prod(v for v in out if v != -1)
            if known == 0 or x.elements % known:
                raise ShapeError(f"Reshape of {x.shape} to {target}")
            out[out.index(-1)] = x.elements // known
        if math.prod(out) != x.elements:
            raise ShapeError(f"Reshape of {x.shape} ({x.elements} elements) to {out}")
        return [TensorInfo(tuple(out), x.dtype, x.value.reshape(out) if x.value is not None else None)]
    if op == "Flatten":
        ax = a.get("axis", 1) % max(len(x.shape), 1)
        return [TensorInfo((math.prod(x.shape[:ax]), math.prod(x.shape[ax:])), x.dtype)]
    if op == "Transpose":
        perm = a.get("perm", list(range(len(x.shape)))[::-1])
        return [TensorInfo(tuple(x.shape[p] for p in perm), x.dtype)]
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None and len(n.inputs) > 1 and n.inputs[1]:
            axes = [int(v) for v in _vals(info, n.inputs[1], "axes")]
        out = list(x.shape)
        if op == "Squeeze":
            axes = [ax % len(out) for ax in axes] if axes is not None else [i for i, v in enumerate(out) if v == 1]
            if any(out[ax] != 1 for ax in axes):
                raise ShapeError(f"Squeeze of {x.shape} on axes {axes}: not 1")
            out = [v for i, v in enumerate(out) if i not in axes]
        else:
            for ax in sorted(ax % (len(out) + len(axes)) for ax in axes):
                out.insert(ax, 1)
        val = x.value.reshape(out) if x.value is not None else None
        return [TensorInfo(tuple(out), x.dtype, val)]
    if op == "ReduceMean":
        axes = a.get("axes", list(range(len(x.shape))))
        axes = [ax % len(x.shape) for ax in axes]
        keep = a.get("keepdims", 1)
        out = [1 if i in axes else v for i, v in enumerate(x.shape)] if keep else \
            [v for i, v in enumerate(x.shape) if i not in axes]
        return [TensorInfo(tuple(out), x.dtype)]
    if op == "Gather":
        idx = ins[1]
        ax = a.get("axis", 0) % len(x.shape)
        out = (*x.shape[:ax], *idx.shape, *x.shape[ax + 1:])
        val = np.take(x.value, idx.value, axis=ax) if x.value is not None and idx.value is not None else None
        return [TensorInfo(tuple(out), x.dtype, val)]
    raise ShapeError(f"no shape rule for {op}")


def fold_batch_norms(model: CVModel) -> CVModel:
    """The model with every BatchNormalization that follows a convolution (its only reader) folded into that
    convolution's weights and bias, as deployment compilers do: one op less per pair, and no subtraction of
    a large mean from a large value in 16-bit or 8-bit arithmetic (which loses the result entirely)."""
    readers: dict[str, int] = {}
    for n in model.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    consts = dict(model.constants)
    made_by = {o: k for k, n in enumerate(model.nodes) for o in n.outputs}
    nodes: list[CVNode | None] = list(model.nodes)
    for k, n in enumerate(model.nodes):
        if n.op != "BatchNormalization" or len(n.inputs) < 5:
            continue
        src = made_by.get(n.inputs[0], -1)
        conv = nodes[src] if src >= 0 else None
        params = [consts.get(i) for i in n.inputs[1:5]]
        if (conv is None or conv.op != "Conv" or readers.get(n.inputs[0]) != 1 or n.inputs[0] in model.outputs
                or conv.inputs[1] not in consts or any(p is None for p in params)
                or (len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in consts)):
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
        scale = gamma / np.sqrt(var + float(n.attrs.get("epsilon", 1e-5)))
        w = np.asarray(consts[conv.inputs[1]], np.float64)
        b = np.asarray(consts[conv.inputs[2]], np.float64) if len(conv.inputs) > 2 and conv.inputs[2] else 0.0
        wname, bname = conv.inputs[1] + ".bnfold", conv.name + ".bnfold.bias"
        consts[wname] = (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        consts[bname] = ((b - mean) * scale + beta).astype(np.float32)
        nodes[src] = CVNode(conv.name, "Conv", (conv.inputs[0], wname, bname), n.outputs, conv.attrs)
        nodes[k] = None
    kept = [n for n in nodes if n is not None]
    used = {i for n in kept for i in n.inputs}
    return CVModel(model.name, kept, {k: v for k, v in consts.items() if k in used}, model.input_name,
                   model.input_shape, model.outputs, model.frame_shape, model.meta, model.source, model.opset)


def checked(model: CVModel, fold: bool, where: str) -> CVModel:
    """What a front end hands over: batch norms folded (if `fold`), and every shape worked out at the model's
    frame, or a SpecError naming `where` (the file or module) and the node."""
    if fold:
        model = fold_batch_norms(model)
    try:
        shapes(model)
    except ShapeError as e:
        raise SpecError(f"{where}: at frame {tuple(model.frame_shape)}: {e}") from None
    return model


@dataclass(frozen=True)
class CVCosts:
    """Per-op work of one frame, aligned with `model.nodes`, and where the model can be cut."""

    costs: OpCosts
    out_bytes: np.ndarray  # bytes each node writes (activations)
    live_bytes: np.ndarray  # [len(nodes) + 1]: bytes of the tensors crossing a cut before node i (i = 0: the input)
    kinds: tuple[str, ...]

    @property
    def flop(self) -> float:
        return float((self.costs.weight_flop + self.costs.act_flop).sum())


def _weight_bytes(c: np.ndarray, fmt: Format, act_bytes: float, held: bool) -> float:
    """A constant's bytes on a die: a conv/matmul weight in the die's weight format (one scale per output
    channel), anything else (biases, norm parameters) at the activation precision."""
    if held and c.ndim >= 2:
        rows = c.shape[0]
        return float(fmt.matrix_bytes(rows, c.size // rows))
    return float(c.size * act_bytes)


def cv_costs(model: CVModel, info: dict[str, TensorInfo], fmt: Format, act_bytes: float) -> CVCosts:
    """FLOP, weight bytes and DRAM bytes of every node for one input whose tensors are `info` (see `shapes`).

    Conv and matmul FLOP run at the weight format's precision; everything else at the activation
    precision. Each op reads its inputs and writes its output once (no fusion), and reads its weights
    once per frame (a die that keeps them on chip is faster than this)."""
    n = len(model.nodes)
    wf, af, rb, wb, ob = (np.zeros(n) for _ in range(5))
    held: set[str] = set()
    for node in model.nodes:
        if node.op in WEIGHT_OPS:
            held.update(i for i in node.inputs[1:2] if i in model.constants)
    counted: set[str] = set()
    for i, node in enumerate(model.nodes):
        out = info[node.outputs[0]]
        x: Any = info[node.inputs[0]] if node.inputs and node.inputs[0] else None
        kind, per_el = OP_RULES[node.op]
        if node.op in ("Conv", "ConvTranspose"):
            w = info[node.inputs[1]]
            macs_per_out = math.prod(w.shape[1:])  # Cin/group x kernel
            if node.op == "Conv":
                wf[i] = 2.0 * out.elements * macs_per_out
            else:  # each input element scatters into Cout/group x kernel outputs
                wf[i] = 2.0 * x.elements * math.prod(w.shape[1:])
            if len(node.inputs) > 2 and node.inputs[2]:
                af[i] = out.elements
        elif node.op in ("MatMul", "Gemm"):
            k = x.shape[-1] if node.op == "MatMul" or not node.attrs.get("transA") else x.shape[0]
            (wf if node.inputs[1] in held else af)[i] = 2.0 * out.elements * k
        elif node.op == "GlobalAveragePool":
            af[i] = x.elements
        elif node.op in ("AveragePool", "MaxPool"):
            af[i] = out.elements * math.prod(node.attrs["kernel_shape"])
        elif node.op == "ReduceMean":
            af[i] = x.elements
        elif node.op == "Resize":
            mode = node.attrs.get("mode", "nearest")
            af[i] = out.elements * (1.0 if mode in ("nearest", b"nearest") else 8.0)
        else:
            af[i] = (per_el or 0.0) * out.elements
        # bytes: inputs read, output written, constants (weights) read once per frame
        for name in node.inputs:
            if not name:
                continue
            c = model.constants.get(name)
            if c is not None:
                if c.dtype.kind == "f":
                    cb = _weight_bytes(c, fmt, act_bytes, name in held)
                    rb[i] += cb
                    if name not in counted:
                        wb[i] += cb
                        counted.add(name)
            elif kind != "data" or node.op in ("Transpose", "Concat", "Slice", "Gather"):
                rb[i] += info[name].nbytes(act_bytes)
        ob[i] = sum(info[o].nbytes(act_bytes) for o in node.outputs if o)
        if kind != "data" or node.op in ("Transpose", "Concat", "Slice", "Gather"):
            rb[i] += ob[i]
    costs = OpCosts(wf, af, rb, wb, np.zeros(n))
    return CVCosts(costs, ob, live_bytes(model, info, act_bytes), tuple(nd.kind for nd in model.nodes))


def _live_spans(model: CVModel) -> dict[str, tuple[int, int]]:
    """Each activation tensor's (cut after which it exists, last cut it must cross): live at cuts [a, b]."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(model.nodes):
        for name in node.inputs:
            if name and name not in model.constants:
                last_use[name] = i
    for o in model.outputs:
        last_use[o] = len(model.nodes)
    made = {model.input_name: 0}
    for i, node in enumerate(model.nodes):
        for o in node.outputs:
            made[o] = i + 1
    return {t: (m, last_use[t]) for t, m in made.items() if t in last_use and last_use[t] >= m}


def live_sets(model: CVModel) -> list[list[str]]:
    """For each cut position i (0..len(nodes)): the tensors made before node i (or the input) and read at or
    after it, or among the outputs: what a die ending before node i sends to the next."""
    out: list[list[str]] = [[] for _ in range(len(model.nodes) + 1)]
    for t, (a, b) in _live_spans(model).items():
        for cut in range(a, b + 1):
            out[cut].append(t)
    return out


def live_bytes(model: CVModel, info: dict[str, TensorInfo], act_bytes: float) -> np.ndarray:
    diff = np.zeros(len(model.nodes) + 2)
    for t, (a, b) in _live_spans(model).items():
        nb = info[t].nbytes(act_bytes)
        diff[a] += nb
        diff[b + 1] -= nb
    return np.cumsum(diff)[:-1]


__all__ = ["CVModel", "CVNode", "CVCosts", "TensorInfo", "ShapeError", "KNOWN_OPS", "OP_RULES", "shapes",
           "cv_costs", "checked", "fold_batch_norms", "live_sets", "live_bytes", "onnx_dtype"]
