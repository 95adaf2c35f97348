"""`chipfuse run --trace`: a recorded run laid out on the predicted trace's tracks, checked on a synthetic
recording (exact figures) and on real runs of the dies (pipeline with two requests, tensor via `api.run`)."""

from __future__ import annotations

import json

import pytest

from chipfuse.api.measured import measured_trace
from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.runtime.executor import DeviceError
from chipfuse.runtime.recorder import ALL_REDUCE, COMPUTE, HOST, SEND, WAIT_IN, Batch, Interval, Recording
from chipfuse.sim import trace as tr
from tests.conftest import make_system


def _plan(dies: int, split: str = "pipeline"):
    return compile_plan(load_model_config("smollm2-135m"), make_system(dies, topology="star"), "int4", context=256,
                        batch=1, prompt_tokens=16, split=split)


def test_a_synthetic_two_die_pipeline_lays_out_exactly():
    """Host sends at 0, die0 computes 1..3, die1 4..6, host samples 7..8; a second step from 8 to 16."""
    plan = _plan(2)
    assert [st.die for st in plan.stages] == ["die0", "die1"]

    def step(mb, t):
        host = [Interval(SEND, mb, t, t + 0.5, 8), Interval(WAIT_IN, mb, t + 0.5, t + 7), Interval(HOST, mb, t + 7, t + 8)]
        d0 = [Interval(WAIT_IN, mb, t - 1, t + 1, 8), Interval(COMPUTE, mb, t + 1, t + 3),
              Interval(SEND, mb, t + 3, t + 3.5, 2304)]
        d1 = [Interval(WAIT_IN, mb, t + 2, t + 4), Interval(COMPUTE, mb, t + 4, t + 6), Interval(SEND, mb, t + 6, t + 6.5)]
        return host, d0, d1

    parts = [step(0, 0.0), step(1, 8.0)]
    rec = Recording(tuple(x for p in parts for x in p[0]), (tuple(x for p in parts for x in p[1]),
                                                            tuple(x for p in parts for x in p[2])),
                    (Batch(0, True, (0,), 5), Batch(1, False, (0,), 1)), (0.0, 0.0))
    t = measured_trace(plan, rec)
    assert t.source == "measured" and t.prefill.length_s == 8.0 and t.decode.length_s == 8.0
    assert t.round_trip_s == 7.0 and t.micro_batches == 1
    names = {s.track for s in t.decode.spans}
    assert names <= {x.name for x in tr.route_tracks([["die0"], ["die1"]])}
    link = [s for s in t.decode.spans if s.track == "die0 -> die1"]
    assert [(s.start_s, s.dur_s) for s in link] == [(3.0, 1.0)]  # the send at 3 until die1 has it at 4
    shares = dict(t.decode.shares)
    assert shares[tr.DIE_WORK] == 4.0 and shares[tr.COLLECTIVES] == 0.0
    assert shares[tr.LINKS] == 1.0 + 1.0 + 1.0  # ids in (0..1), die0 -> die1 (3..4), logits out (6..7)
    assert shares[tr.HOST_BOUND] == 1.0
    doc = tr.to_chrome(t)
    assert doc["otherData"]["source"] == "measured" and "predicted_ttft_us" not in doc["otherData"]
    assert {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"} >= {
        "whole run (2 micro-batches, measured)"}


def test_a_forward_pass_is_cut_around_its_collectives():
    plan = _plan(2, "tensor")
    d = [Interval(WAIT_IN, 0, 0, 1), Interval(COMPUTE, 0, 1, 5), Interval(ALL_REDUCE, 0, 2, 3, 64)]
    host = (Interval(SEND, 0, 0, 0.5), Interval(WAIT_IN, 0, 0.5, 6), Interval(HOST, 0, 6, 7))
    rec = Recording(host, (tuple(d), tuple(d)), (Batch(0, True, (0,), 3),), (0.0, 0.0))
    t = measured_trace(plan, rec)
    die0 = [(s.kind, s.start_s, s.end_s) for s in t.prefill.track_spans("die0")]
    assert (tr.COMPUTE, 1, 2) in die0 and (tr.COLLECTIVE, 2, 3) in die0 and (tr.COMPUTE, 3, 5) in die0
    assert t.decode.length_s == 0  # one token only: no decode step
    assert [s.start_s for s in t.prefill.track_spans(tr.allreduce_track(["die0", "die1"]))] == [2]


def test_a_recording_without_a_prompt_is_refused_in_words():
    with pytest.raises(ValueError, match="no prompt"):
        measured_trace(_plan(1), Recording((), ((),), (), (0.0,)))


def test_a_traced_pipeline_with_two_requests_is_recorded_on_every_die():
    """Three dies, two requests in flight: each die computes in the median decode step, the step is no longer
    than the run's per-token time says, and the tracks are the predicted trace's."""
    from chipfuse.api import open_device

    with open_device(make_system(3, topology="star"), None, "int4", context=256, max_batch=2, trace=True) as dev:
        gens = [dev.submit(p, 10, stop_ids=set()) for p in ("The sea is", "Once upon a time")]
        for g in gens:
            list(g)
        rec = dev.recording()
    with pytest.raises(DeviceError, match="closed"):
        dev.recording()
    assert len(rec.dies) == 3 and all(any(r.kind == COMPUTE for r in rows) for rows in rec.dies)
    assert sum(b.prefill for b in rec.batches) == 2 and len(rec.batches) >= 2 + 9
    t = measured_trace(dev.plan, rec, dev.plan.prediction)
    predicted = {x.name for x in tr.build_trace(dev.plan).decode.tracks}
    assert {s.track.split(" #")[0] for s in t.decode.spans} <= predicted
    for die in ("die0", "die1", "die2"):
        assert any(s.kind == tr.COMPUTE for s in t.decode.track_spans(die))
    for tl in (t.prefill, t.decode):
        assert all(0 <= s.start_s and s.end_s <= tl.length_s + 1e-9 for s in tl.spans)
    per_token = max(g.req.t_last - g.req.t_first for g in gens) / 9  # two requests share each interval
    assert 0 < t.decode.length_s < 3 * per_token


def test_run_trace_writes_a_perfetto_file_of_a_tensor_split(tmp_path):
    from chipfuse import api

    out = tmp_path / "run.trace.json"
    res = api.run(make_system(2, topology="star"), max_tokens=12, split="tensor", trace=out)
    assert "Paris" in res.text and res.trace is not None and res.trace.path == out
    doc = json.loads(out.read_text())
    assert doc["otherData"]["source"] == "measured"
    cats = {e.get("cat") for e in doc["traceEvents"] if e["ph"] == "X"}
    assert {"compute", "collective", "transfer"} <= cats
    assert res.trace.decode_step_s > 0 and "%" in res.trace.bottleneck
    assert res.to_json()["trace"] == str(out)


def test_plot_trace_draws_predicted_and_measured_steps_and_refuses_an_empty_one(tmp_path):
    from chipfuse import api
    from chipfuse.errors import ChipfuseError

    plan = _plan(2, "tensor")
    out = api.plot_trace(api.trace(plan), tmp_path / "predicted.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    d = [Interval(WAIT_IN, 0, 0, 1), Interval(COMPUTE, 0, 1, 5), Interval(ALL_REDUCE, 0, 2, 3, 64)]
    host = (Interval(SEND, 0, 0, 0.5), Interval(WAIT_IN, 0, 0.5, 6), Interval(HOST, 0, 6, 7))
    measured = measured_trace(plan, Recording(host, (tuple(d), tuple(d)), (Batch(0, True, (0,), 3),), (0.0, 0.0)))
    assert api.plot_trace(measured, tmp_path / "m.png", which="prefill").exists()
    with pytest.raises(ChipfuseError, match="no decode step"):
        api.plot_trace(measured, tmp_path / "none.png")
