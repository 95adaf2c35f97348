"""PyTorch modules -> `ir.cv.CVModel`, through torch.fx: the same IR, costs and runtime as an ONNX file.

The module is traced symbolically (`torch.fx.symbolic_trace`); each call becomes the ONNX-style op the
IR knows (a Conv2d is Conv, `x + y` is Add, `F.relu` is Relu, ...) and each parameter a constant. A
call with no rule is refused with its name, as an ONNX file with an unknown op is. torch is imported
here only when a module is given (this is an input layer: the pure layers never see torch).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from ..errors import SpecError
from ..ir.cv import CVModel, CVNode, checked


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def from_torch(module, frame_shape: tuple[int, ...], name: str | None = None, fold: bool = True) -> CVModel:
    """A traceable `torch.nn.Module` with one image input, as the IR's vision model at `frame_shape`."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch import fx

    try:
        gm = fx.symbolic_trace(module.eval())
    except Exception as e:  # noqa: BLE001 - torch.fx's own message says what it could not trace
        raise SpecError(f"{type(module).__name__}: torch.fx cannot trace it ({type(e).__name__}: {e})") from None
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        ShapeProp(gm).propagate(torch.zeros(frame_shape))
    except Exception as e:  # noqa: BLE001 - the module's own error at this frame size
        raise SpecError(f"{type(module).__name__} at frame {tuple(frame_shape)}: {type(e).__name__}: {e}") from None

    def rank(node) -> int:
        return len(node.meta["tensor_meta"].shape)

    mods = dict(gm.named_modules())
    nodes: list[CVNode] = []
    consts: dict[str, np.ndarray] = {}
    names: dict[Any, str] = {}
    unknown: list[str] = []
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise SpecError(f"{type(module).__name__}: {len(inputs)} inputs; chipfuse runs models with one image input")

    def const(key: str, value) -> str:
        consts[key] = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=np.float32)
        return key

    def arg(a, node_name: str, k: int) -> str:
        if isinstance(a, fx.Node):
            return names[a]
        if isinstance(a, (int, float)):
            return const(f"{node_name}.const{k}", np.asarray(float(a), dtype=np.float32))
        raise SpecError(f"{node_name}: argument {a!r} is neither a tensor nor a number")

    def add(op: str, ins: list[str], out: str, **attrs) -> None:
        nodes.append(CVNode(out, op, tuple(ins), (out,), attrs))

    for n in gm.graph.nodes:
        out = n.name
        names[n] = out
        if n.op == "placeholder":
            continue
        if n.op == "output":
            result = n.args[0]
            outputs = tuple(names[r] for r in (result if isinstance(result, (tuple, list)) else [result]))
            continue
        if n.op == "get_attr":
            t = gm
            for part in n.target.split("."):
                t = getattr(t, part)
            const(out, _np(t))
            continue
        x = names.get(n.args[0]) if n.args and isinstance(n.args[0], fx.Node) else None
        if n.op == "call_module":
            m = mods[n.target]
            if isinstance(m, nn.Conv2d):
                if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
                    raise SpecError(f"{n.target}: Conv2d with padding {m.padding!r} / {m.padding_mode!r}: give "
                                    "explicit zero padding")
                ins = [x, const(f"{n.target}.weight", _np(m.weight))]
                if m.bias is not None:
                    ins.append(const(f"{n.target}.bias", _np(m.bias)))
                ph, pw = m.padding
                add("Conv", ins, out, strides=list(m.stride), pads=[ph, pw, ph, pw], dilations=list(m.dilation),
                    group=m.groups, kernel_shape=list(m.kernel_size))
            elif isinstance(m, nn.Linear):
                w = const(f"{n.target}.weight.T", _np(m.weight).T.copy())
                if m.bias is not None:
                    add("MatMul", [x, w], out + ".mm")
                    add("Add", [out + ".mm", const(f"{n.target}.bias", _np(m.bias))], out)
                else:
                    add("MatMul", [x, w], out)
            elif isinstance(m, nn.BatchNorm2d):
                add("BatchNormalization", [x, const(f"{n.target}.weight", _np(m.weight)),
                                           const(f"{n.target}.bias", _np(m.bias)),
                                           const(f"{n.target}.mean", _np(m.running_mean)),
                                           const(f"{n.target}.var", _np(m.running_var))], out, epsilon=m.eps)
            elif isinstance(m, nn.LayerNorm):
                axis = -len(m.normalized_shape)
                add("LayerNormalization", [x, const(f"{n.target}.weight", _np(m.weight)),
                                           const(f"{n.target}.bias", _np(m.bias))], out, axis=axis, epsilon=m.eps)
            elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.Tanh, nn.Identity,
                                nn.Dropout, nn.GELU)):
                if isinstance(m, nn.ReLU6):
                    add("Clip", [x, const(out + ".lo", np.float32(0)), const(out + ".hi", np.float32(6))], out)
                elif isinstance(m, nn.Hardsigmoid):
                    add("HardSigmoid", [x], out, alpha=1 / 6, beta=0.5)
                elif isinstance(m, nn.GELU):
                    _gelu(add, const, x, out)
                else:
                    op = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Hardswish: "HardSwish", nn.Tanh: "Tanh",
                          nn.Identity: "Identity", nn.Dropout: "Identity"}[type(m)]
                    add(op, [x], out)
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                k, s, p = (v if isinstance(v, tuple) else (v, v) for v in (m.kernel_size, m.stride or m.kernel_size,
                                                                         m.padding))
                attrs: dict = {"kernel_shape": list(k), "strides": list(s), "pads": [p[0], p[1], p[0], p[1]],
                               "ceil_mode": int(m.ceil_mode)}
                if isinstance(m, nn.AvgPool2d):
                    attrs["count_include_pad"] = int(m.count_include_pad)
                add("MaxPool" if isinstance(m, nn.MaxPool2d) else "AveragePool", [x], out, **attrs)
            elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                add("GlobalAveragePool", [x], out)
            elif isinstance(m, nn.Flatten):
                add("Flatten", [x], out, axis=m.start_dim)
            elif isinstance(m, nn.Softmax):
                add("Softmax", [x], out, axis=m.dim if m.dim is not None else -1)
            else:
                unknown.append(f"{n.target} ({type(m).__name__})")
        elif n.op in ("call_function", "call_method"):
            fn = n.target
            binary = {operator.add: "Add", torch.add: "Add", "add": "Add", operator.sub: "Sub", torch.sub: "Sub",
                      operator.mul: "Mul", torch.mul: "Mul", "mul": "Mul", operator.truediv: "Div", torch.div: "Div",
                      operator.matmul: "MatMul", torch.matmul: "MatMul"}
            unary = {F.relu: "Relu", torch.relu: "Relu", "relu": "Relu", torch.sigmoid: "Sigmoid",
                     "sigmoid": "Sigmoid", F.hardswish: "HardSwish", torch.tanh: "Tanh"}
            if fn in binary and len(n.args) == 2:
                add(binary[fn], [arg(n.args[0], out, 0), arg(n.args[1], out, 1)], out)
            elif fn in unary:
                add(unary[fn], [x], out)
            elif fn in (torch.flatten, "flatten"):
                add("Flatten", [x], out, axis=int(n.args[1]) if len(n.args) > 1 else int(n.kwargs.get("start_dim", 0)))
            elif fn in (torch.cat, torch.concat):
                parts = n.args[0]
                add("Concat", [names[p] for p in parts], out, axis=int(n.args[1] if len(n.args) > 1 else
                                                                       n.kwargs.get("dim", 0)))
            elif fn in (F.softmax, torch.softmax, "softmax"):
                add("Softmax", [x], out, axis=int(n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", -1)))
            elif fn in ("reshape", "view") and all(isinstance(v, int) for v in _flat(n.args[1:])):
                shape = np.asarray(list(_flat(n.args[1:])), dtype=np.int64)
                add("Reshape", [x, const(out + ".shape", shape)], out)
            elif fn in ("transpose", torch.transpose):
                r = rank(n.args[0])
                perm = list(range(r))
                a, b = int(n.args[1]) % r, int(n.args[2]) % r
                perm[a], perm[b] = perm[b], perm[a]
                add("Transpose", [x], out, perm=perm)
            elif fn in ("permute", torch.permute):
                add("Transpose", [x], out, perm=[int(v) for v in _flat(n.args[1:])])
            elif fn in (F.adaptive_avg_pool2d,) and n.args[1] in (1, (1, 1)):
                add("GlobalAveragePool", [x], out)
            elif fn in ("mean",) and tuple(n.args[1:] or n.kwargs.get("dim", ())) in ((2, 3), ((2, 3),), ((-2, -1),)):
                add("GlobalAveragePool", [x], out)
                if not n.kwargs.get("keepdim", False):
                    add("Flatten", [out], out + ".flat", axis=1)
                    names[n] = out + ".flat"
            else:
                unknown.append(f"{getattr(fn, '__name__', fn)} (a {n.op})")
        else:
            unknown.append(f"{n.name} ({n.op})")
    if unknown:
        raise SpecError(f"{type(module).__name__}: calls chipfuse cannot cost or run: {', '.join(unknown)}. Known: "
                        "Conv2d (any groups), Linear, BatchNorm2d, LayerNorm, ReLU, ReLU6, Sigmoid, Hardsigmoid, "
                        "Hardswish, Tanh, GELU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten, Softmax, "
                        "Dropout, + - * / @, cat, flatten, reshape/view to fixed sizes, transpose, permute, softmax, "
                        "mean over H and W")
    model = CVModel(name or type(module).__name__, nodes, consts, inputs[0].name, tuple(frame_shape), outputs,
                    tuple(frame_shape), {}, f"torch.fx:{type(module).__name__}", 13)
    return checked(model, fold, model.name)


def _flat(args) -> list:
    """reshape(1, 2, 3) and reshape((1, 2, 3)) alike."""
    return list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args)


def _gelu(add, const, x: str, out: str) -> None:
    """GELU as 0.5 x (1 + erf(x / sqrt 2)), in the IR's ops."""
    add("Div", [x, const(out + ".sqrt2", np.float32(np.sqrt(2.0)))], out + ".d")
    add("Erf", [out + ".d"], out + ".e")
    add("Add", [out + ".e", const(out + ".one", np.float32(1.0))], out + ".p")
    add("Mul", [x, out + ".p"], out + ".m")
    add("Mul", [out + ".m", const(out + ".half", np.float32(0.5))], out)


__all__ = ["from_torch"]
