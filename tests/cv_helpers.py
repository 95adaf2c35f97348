"""Small ONNX models built in code, and rendered text, for the vision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def small_cnn(path: Path, seed: int = 0, extra_op: str | None = None) -> Path:
    """conv(3->8, 3x3, pad 1) -> batchnorm -> relu -> depthwise conv(8, stride 2) -> hardsigmoid*x -> maxpool 2
    -> global average pool -> flatten -> matmul(8->5) + bias -> softmax, at any input size; written to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 1, 3, 3), init("fc", 8, 5), init("fcb", 5),
             numpy_helper.from_array((rng.uniform(0.5, 1.5, 8)).astype(np.float32), "g"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "beta"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "mean"),
             numpy_helper.from_array((rng.uniform(0.5, 1.5, 8)).astype(np.float32), "var")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], epsilon=1e-5, name="bn"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=8, strides=[2, 2], pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("HardSigmoid", ["c2"], ["hs"], alpha=1 / 6, beta=0.5, name="hsig"),
        helper.make_node("Mul", ["c2", "hs"], ["sw"], name="swish"),
        helper.make_node("MaxPool", ["sw"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("GlobalAveragePool", ["p"], ["g1"], name="gap"),
        helper.make_node("Flatten", ["g1"], ["f"], axis=1, name="flat"),
        helper.make_node("MatMul", ["f", "fc"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fcb"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1, name="softmax"),
    ]
    if extra_op:
        nodes.insert(3, helper.make_node(extra_op, ["r1"], ["r1b"], name="odd"))
        nodes[4] = helper.make_node("Conv", ["r1b", "w2"], ["c2"], group=8, strides=[2, 2], pads=[1, 1, 1, 1],
                                    name="dw")
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def render_lines(lines: list[str], size: int = 36, width: int = 760) -> np.ndarray:
    """Black text on white, one line every 2.5 x size pixels, with Pillow's own font (no system fonts)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (width, int(size * (1 + 2.5 * len(lines)))), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((20, int(size * (0.5 + 2.5 * i))), line, fill="black", font=font)
    return np.asarray(img)
