"""ONNX files -> `ir.cv.CVModel`: the nodes in order, weights as numpy arrays, the image input and outputs.

`onnx` is imported here only (lazily), and only to read the protobuf: nothing of onnxruntime. Constant
nodes and initializers both become named constants. A file with an op the IR has no rule for is
refused with every such op named and counted, never costed as zero.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..ir.cv import KNOWN_OPS, CVModel, CVNode, checked

MAX_ONNX_BYTES = 2 * 2**30  # protobuf's own limit for one file


def _attr_value(a):
    """An attribute as plain Python (ints, floats, strings, lists) or a numpy array (tensors)."""
    from onnx import AttributeProto, numpy_helper

    t = a.type
    if t == AttributeProto.INT:
        return int(a.i)
    if t == AttributeProto.FLOAT:
        return float(a.f)
    if t == AttributeProto.STRING:
        return a.s.decode("utf-8", "replace")
    if t == AttributeProto.INTS:
        return [int(v) for v in a.ints]
    if t == AttributeProto.FLOATS:
        return [float(v) for v in a.floats]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if t == AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t)
    raise SpecError(f"attribute {a.name}: type {t} is not read by chipfuse")


def load_onnx(path: str | Path, name: str | None = None, frame_shape: tuple[int, ...] | None = None,
              fold: bool = True) -> CVModel:
    """Read an ONNX file. `frame_shape` fixes the dimensions the file leaves open (batch 1, and 224 for any
    other open one, when not given). `fold`: batch norms after convolutions folded into them (as deployed)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such ONNX file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size} bytes is over ONNX's 2 GiB limit for one file")
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise SpecError("reading ONNX files needs the `onnx` package: pip install onnx") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: the file is not ONNX
        raise SpecError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    g = proto.graph
    if not g.node:
        raise SpecError(f"{path}: the graph has no nodes")
    domains = {n.domain for n in g.node} - {"", "ai.onnx"}
    unknown = Counter(n.op_type for n in g.node if n.op_type not in KNOWN_OPS or n.domain not in ("", "ai.onnx"))
    if unknown:
        listed = ", ".join(f"{op} x{k}" for op, k in unknown.most_common())
        raise SpecError(f"{path}: ops chipfuse cannot cost or run: {listed}"
                        + (f" (custom domains: {', '.join(sorted(domains))})" if domains else "")
                        + f". Known: {', '.join(KNOWN_OPS)}. Export without them, or open an issue with the file")
    constants: dict[str, np.ndarray] = {}
    for t in g.initializer:
        constants[t.name] = numpy_helper.to_array(t)
    nodes: list[CVNode] = []
    for i, n in enumerate(g.node):
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        if n.op_type == "Constant":
            if "value" not in attrs:
                raise SpecError(f"{path}: Constant node {n.name or i} has no tensor `value` (other forms are not read)")
            constants[n.output[0]] = np.asarray(attrs["value"])
            continue
        nodes.append(CVNode(n.name or f"{n.op_type}_{i}", n.op_type, tuple(n.input), tuple(n.output), attrs))
    inputs = [v for v in g.input if v.name not in constants]
    if len(inputs) != 1:
        raise SpecError(f"{path}: {len(inputs)} graph inputs ({', '.join(v.name for v in inputs)}); chipfuse runs "
                        "models with one image input")
    inp = inputs[0]
    dims: list[int | None] = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    if frame_shape is None:
        frame_shape = tuple(1 if i == 0 and v is None else (v if v is not None else 224) for i, v in enumerate(dims))
    meta = {p.key: p.value for p in proto.metadata_props}
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    model = CVModel(name or path.stem, nodes, constants, inp.name, tuple(dims), tuple(o.name for o in g.output),
                    tuple(frame_shape), meta, str(path), opset)
    return checked(model, fold, str(path))


__all__ = ["load_onnx"]
