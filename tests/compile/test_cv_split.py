"""The vision split is the best cut: brute force over every cut of a small model agrees, and the pieces cover the
model once, in order."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import make_system  # noqa: E402
from cv_helpers import small_cnn  # noqa: E402

from chipfuse.compile.cv import on_die, split_cv  # noqa: E402
from chipfuse.frontends.onnx_model import load_onnx  # noqa: E402
from chipfuse.hw.spec import HOST  # noqa: E402
from chipfuse.sim.perf import transfer_s  # noqa: E402


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return load_onnx(small_cnn(tmp_path_factory.mktemp("cnn") / "small.onnx"), frame_shape=(1, 3, 64, 64))


def _brute(model, system, dies, precision, frame):
    per = [on_die(model, system, d, precision, frame) for d in dies]
    live = per[0].costs.live_bytes
    n = len(model.nodes)
    best = float("inf")
    for inner in itertools.combinations(range(1, n), len(dies) - 1):
        cuts = (0, *inner, n)
        parts = []
        for k, d in enumerate(dies):
            parts.append(float(per[k].node_s[cuts[k]:cuts[k + 1]].sum()))
            src = HOST if k == 0 else dies[k - 1]
            parts.append(transfer_s(system, src, d, float(live[cuts[k]])))
        parts.append(transfer_s(system, dies[-1], HOST, float(live[n])))
        best = min(best, max(parts))
    return best


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.sampled_from([8, 32, 96, 160]), st.sampled_from(["fp32", "fp16", "int8"]),
       st.sampled_from(["chain", "star"]))
def test_the_split_equals_brute_force(cnn, k, side, precision, topology):
    system = make_system(3, topology=topology)
    dies = [f"die{i}" for i in range(k)]
    frame = (1, 3, side, side)
    got = split_cv(cnn, system, dies, precision, frame)
    assert got.bottleneck_s == pytest.approx(_brute(cnn, system, dies, precision, frame), rel=1e-12)
    assert [p.start for p in got.pieces][0] == 0 and got.pieces[-1].end == len(cnn.nodes)
    assert all(a.end == b.start and a.start < a.end for a, b in zip(got.pieces, got.pieces[1:]))


def test_a_die_with_its_own_vision_figures_is_costed_by_them(cnn):
    """`vision:` in a die type (chipfuse probe writes it for emulated dies): each op takes the fixed cost plus the
    longer of its FLOP at the vision rate and its bytes at the vision bandwidth."""
    plain = make_system(1)
    fitted = make_system(1, vision={"tops": {"fp32": 0.05}, "gb_per_s": {"fp32": 2.0}, "node_overhead_s": 1e-5})
    a, b = on_die(cnn, plain, "die0", "fp32"), on_die(cnn, fitted, "die0", "fp32")
    c = b.costs.costs
    want = 1e-5 + np.maximum((c.weight_flop + c.act_flop) / 0.05e12, c.read_bytes / 2e9)
    assert np.allclose(b.node_s, want, rtol=1e-12)
    assert not np.allclose(a.node_s, b.node_s)
