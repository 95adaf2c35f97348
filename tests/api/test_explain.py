"""api.trace and api.scaling: frozen results, the file written, one row per die count and mode."""

from __future__ import annotations

import dataclasses
import json

import pytest

from chipfuse import api
from chipfuse.errors import ChipfuseError
from tests.conftest import make_system


@pytest.fixture(scope="module")
def four():
    return make_system(4)


def test_trace_writes_the_json_and_returns_the_step_lengths(four, tmp_path):
    p = api.plan("llama-3.2-3b", four, "int4", context=1024, prompt_tokens=128, split="tensor")
    res = api.trace(p, tmp_path / "t.json")
    assert isinstance(res, api.TraceResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.decode_step_s = 0.0
    assert res.path == tmp_path / "t.json"
    doc = json.loads(res.path.read_text())
    assert len(doc["traceEvents"]) == res.events
    assert res.decode_step_s == pytest.approx(p.prediction.decode_step_s, rel=1e-6)
    assert res.ttft_s == pytest.approx(p.prediction.ttft_s, rel=1e-6)
    assert res.micro_batches == 1 and res.round_trip_s == pytest.approx(res.decode_step_s)
    assert res.bottleneck.split(":")[0] in dict(res.shares)
    rows = res.gantt(30)
    assert [r.label for r in rows] == [st.die for st in p.stages] + ["links", "host"]
    assert api.trace(p).path is None  # no file asked for, none written


def test_trace_on_another_system(four):
    p = api.plan("llama-3.2-3b", four, "int4", context=1024, prompt_tokens=128, split="pipeline")
    faster = make_system(4, tops={"int4": 128, "int8": 64, "fp16": 16, "bf16": 16, "fp32": 2})
    res = api.trace(p, system=faster)
    assert res.decode_step_s == pytest.approx(api.predict(p, faster).decode_step_s, rel=1e-6)


def test_scaling_rows_efficiency_and_bottleneck(four):
    rep = api.scaling("llama-3.2-3b", four, "int4", context=1024, prompt_tokens=128)
    assert isinstance(rep, api.ScalingReport)
    assert [(r.dies, r.mode) for r in rep.rows] == [
        (1, "pipeline"), (2, "pipeline"), (2, "tensor"), (3, "pipeline"), (3, "tensor"), (3, "hybrid"),
        (4, "pipeline"), (4, "tensor"), (4, "hybrid")]
    one = rep.row(1, "pipeline")
    assert rep.baseline_dies == 1 and one.efficiency == pytest.approx(1.0)
    for r in rep.rows:
        assert r.problem is None and r.used_dies <= r.dies
        assert r.efficiency == pytest.approx(r.decode_tokens_per_s / (r.dies * one.decode_tokens_per_s))
        assert r.bottleneck in ("weights bandwidth", "compute", "link latency", "link bandwidth", "host")
        assert r.bottleneck_words.startswith(r.bottleneck) and r.prefill_bottleneck
        assert sum(s for _, s in r.shares) == pytest.approx(r.decode_step_s, rel=1e-6)
    # at batch 1 a pipeline adds dies that take turns: no faster; a tensor group reads in parallel: faster
    assert rep.row(4, "pipeline").efficiency < 0.3 < rep.row(4, "tensor").efficiency
    assert rep.best().mode in ("tensor", "hybrid")
    assert any("take turns" in n for n in rep.notes)
    assert json.loads(json.dumps(rep.to_json()))["rows"][0]["groups"] == [["die0"]]


def test_points_that_do_not_fit_are_rows_and_efficiency_starts_where_the_model_fits():
    small = make_system(4, capacity_gib=2)
    rep = api.scaling("llama-3.2-3b", small, "int8", context=1024, prompt_tokens=128, modes="pipeline,tensor")
    first = rep.row(1, "pipeline")
    assert first.decode_tokens_per_s is None and "does not fit" in first.problem
    assert rep.baseline_dies is not None and rep.baseline_dies > 1
    base = [r for r in rep.rows if r.dies == rep.baseline_dies and r.decode_tokens_per_s]
    assert max(r.efficiency for r in base) == pytest.approx(1.0)
    assert {r.mode for r in rep.rows} == {"pipeline", "tensor"}


def test_scaling_options_are_checked(four):
    with pytest.raises(ChipfuseError, match="--modes"):
        api.scaling("smollm2", four, modes="pipeline,diagonal")
    with pytest.raises(ChipfuseError, match="--dies 9"):
        api.scaling("smollm2", four, dies=9)
    rep = api.scaling("smollm2", four, dies=2, modes=["tensor"])
    assert [(r.dies, r.mode) for r in rep.rows] == [(2, "tensor")]


def test_plot_scaling_writes_a_png(four, tmp_path):
    rep = api.scaling("llama-3.2-3b", four, "int4", context=1024, prompt_tokens=128, dies=3)
    out = api.plot_scaling(rep, tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
