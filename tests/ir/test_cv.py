"""The vision IR: shapes for any frame, each op's FLOP from its definition, cuts and their live tensors, and
batch norms folded into convolutions without changing the numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from cv_helpers import small_cnn  # noqa: E402

from chipfuse.errors import SpecError  # noqa: E402
from chipfuse.frontends.onnx_model import load_onnx  # noqa: E402
from chipfuse.ir.cv import cv_costs, live_sets, shapes  # noqa: E402
from chipfuse.quant.formats import get_format  # noqa: E402
from chipfuse.runtime.cv import CVProgram  # noqa: E402


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return small_cnn(tmp_path_factory.mktemp("cnn") / "small.onnx")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(4, 64), st.integers(4, 64))
def test_shapes_and_flop_follow_the_ops_definitions(cnn, n, h, w):
    m = load_onnx(cnn, frame_shape=(1, 3, 32, 32))
    info = shapes(m, (n, 3, h, w))
    # conv 3x3 pad 1 keeps h x w (its output is the folded batch norm's, n1); the depthwise conv halves (rounding up); the pool halves (rounding down)
    h2, w2 = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    assert info["n1"].shape == (n, 8, h, w) and info["c2"].shape == (n, 8, h2, w2)
    assert info["p"].shape == (n, 8, h2 // 2, w2 // 2) and info["y"].shape == (n, 5)
    if h2 < 2 or w2 < 2:
        return
    c = cv_costs(m, info, get_format("fp32"), 4.0)
    flop = dict(zip((nd.name for nd in m.nodes), c.costs.weight_flop + c.costs.act_flop))
    assert flop["conv1"] == 2 * n * 8 * h * w * 3 * 9 + n * 8 * h * w  # MACs x 2, and the folded bias
    assert flop["dw"] == 2 * n * 8 * h2 * w2 * 9  # depthwise: one input channel per output
    assert flop["fc"] == 2 * n * 5 * 8
    assert flop["pool"] == n * 8 * (h2 // 2) * (w2 // 2) * 4
    # weights: every float constant once; conv1's is [8, 27] + bias, the depthwise [8, 9], the fc [8, 5] + bias
    assert c.costs.weight_bytes.sum() == 4 * (8 * 27 + 8 + 8 * 9 + 8 * 5 + 5)


def test_int8_weights_are_one_byte_each_with_a_scale_per_output_channel(cnn):
    m = load_onnx(cnn, frame_shape=(1, 3, 16, 16))
    c = cv_costs(m, shapes(m), get_format("int8"), 2.0)
    held = 8 * 27 + 8 * 2 + 8 * 9 + 8 * 2 + 8 * 5 + 8 * 2  # data + fp16 scale per row (conv1, dw, fc rows)
    assert c.costs.weight_bytes.sum() == held + 2 * (8 + 5)  # biases at the activation precision


def test_batch_norm_is_folded_and_the_numbers_do_not_move(cnn):
    folded, plain = load_onnx(cnn, frame_shape=(1, 3, 20, 24)), load_onnx(cnn, frame_shape=(1, 3, 20, 24), fold=False)
    assert "BatchNormalization" not in {n.op for n in folded.nodes}
    assert len(plain.nodes) == len(folded.nodes) + 1
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 20, 24)).astype(np.float32))
    a, b = CVProgram(folded).run({"x": x})["y"], CVProgram(plain).run({"x": x})["y"]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_cut_carries_exactly_the_tensors_used_on_both_sides(cnn):
    m = load_onnx(cnn, frame_shape=(1, 3, 16, 16))
    lives = live_sets(m)
    assert lives[0] == ["x"] and lives[-1] == ["y"]
    names = [n.name for n in m.nodes]
    # between the depthwise conv and the hard sigmoid, its output is read twice (hsig and swish): one tensor
    assert lives[names.index("hsig")] == ["c2"]
    # between hsig and swish both c2 and hs are live
    assert sorted(lives[names.index("swish")]) == ["c2", "hs"]
    x = torch.randn(1, 3, 16, 16)
    whole = CVProgram(m).run({"x": x})["y"]
    for cut in range(1, len(m.nodes)):
        mid = CVProgram(m, start=0, end=cut).run({"x": x})
        assert sorted(mid) == sorted(lives[cut])
        assert torch.equal(CVProgram(m, start=cut).run(mid)["y"], whole)


def test_an_unknown_op_is_named_and_refused(cnn, tmp_path):
    odd = small_cnn(tmp_path / "odd.onnx", extra_op="Celu")
    with pytest.raises(SpecError, match=r"ops chipfuse cannot cost or run: Celu x1"):
        load_onnx(odd)


def test_files_that_are_not_onnx_models_get_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xff not a protobuf at all" * 10)
    with pytest.raises(SpecError, match="not a readable ONNX model"):
        load_onnx(bad)
    with pytest.raises(SpecError, match="it is a folder"):
        load_onnx(tmp_path)
    with pytest.raises(SpecError, match="no such ONNX file"):
        load_onnx(tmp_path / "missing.onnx")


def test_a_frame_the_model_cannot_take_names_the_node(cnn):
    m = load_onnx(cnn, frame_shape=(1, 3, 16, 16))
    with pytest.raises(SpecError, match="does not match the model's"):
        shapes(m, (1, 4, 16, 16))
    with pytest.raises(SpecError, match=r"node pool \(MaxPool\)"):
        shapes(m, (1, 3, 2, 2))
