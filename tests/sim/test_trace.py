"""The timeline trace adds up the predictor's own figures: its decode step is the prediction's, span by span."""

from __future__ import annotations

import json

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.sim.trace import (
    CATEGORIES,
    COLLECTIVE,
    COMPUTE,
    GANTT_CHARS,
    LINK_BW,
    LINK_LATENCY,
    WAIT,
    WEIGHTS_BW,
    bottleneck,
    build_trace,
    gantt,
    step_shares,
    to_chrome,
)
from tests.conftest import make_system

REL = 1e-6


@pytest.fixture(scope="module")
def cfg():
    return load_model_config("llama-3.2-3b")


def _plan(cfg, system, split, batch=1, **kw):
    return compile_plan(cfg, system, "int4", context=1024, prompt_tokens=128, batch=batch, split=split, **kw)


@pytest.fixture(scope="module")
def plans(cfg):
    four, two_star = make_system(4), make_system(2, topology="star")
    return {
        "pipeline": _plan(cfg, four, "pipeline"),
        "tensor": _plan(cfg, four, "tensor"),
        "hybrid": _plan(cfg, four, "hybrid"),
        "tensor-star": _plan(cfg, two_star, "tensor"),
        "pipeline-batch4": _plan(cfg, four, "pipeline", batch=4),
        "pipeline-batch8": _plan(cfg, four, "pipeline", batch=8),
        "one-die": _plan(cfg, make_system(1, capacity_gib=16), "pipeline"),
    }


def test_the_plans_have_the_splits_they_were_asked_for(plans):
    kinds = {name: {st.kind for st in p.stages} for name, p in plans.items()}
    assert kinds["pipeline"] == {"layers"} and len(plans["pipeline"].stages) == 4
    assert kinds["tensor"] == {"shard"} and kinds["hybrid"] == {"layers", "shard"}
    assert plans["pipeline-batch4"].prediction.micro_batches == 4


@pytest.mark.parametrize("name", ["pipeline", "tensor", "hybrid", "tensor-star", "pipeline-batch4",
                                  "pipeline-batch8", "one-die"])
def test_decode_step_and_prefill_are_the_predictions(plans, name):
    p = plans[name]
    tr = build_trace(p)
    assert tr.decode.length_s == pytest.approx(p.prediction.decode_step_s, rel=REL)
    assert tr.prefill.length_s == pytest.approx(p.prediction.ttft_s, rel=REL)
    # and what the JSON says, read back: the decode process spans exactly one step
    doc = json.loads(json.dumps(to_chrome(tr)))
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["pid"] == 2]
    span_us = max(e["ts"] + e["dur"] for e in xs) - min(e["ts"] for e in xs)
    assert span_us == pytest.approx(p.prediction.decode_step_s * 1e6, rel=REL)
    assert min(e["ts"] for e in xs) == pytest.approx(p.prediction.ttft_s * 1e6, rel=REL)  # after the prefill
    assert doc["otherData"]["decode_step_us"] == pytest.approx(doc["otherData"]["predicted_decode_step_us"], rel=REL)


def test_batch1_decode_step_within_1e6_for_a_pipeline_and_a_tensor_plan(plans):
    for name in ("pipeline", "tensor"):
        p = plans[name]
        assert p.workload.batch == 1
        got = build_trace(p).decode.length_s
        assert abs(got - p.prediction.decode_step_s) <= 1e-6 * p.prediction.decode_step_s


@pytest.mark.parametrize("name", ["pipeline", "tensor", "hybrid", "pipeline-batch8"])
def test_chrome_json_is_well_formed(plans, name, tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(to_chrome(build_trace(plans[name]))))
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    xs = [e for e in events if e["ph"] == "X"]
    assert xs and len(meta) + len(xs) == len(events)
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert processes[1].startswith("prefill") and processes[2].startswith("decode step")
    for e in xs:
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(e)
        assert e["dur"] >= 0 and e["ts"] >= 0, e
        assert (e["pid"], e["tid"]) in threads, e
    tracks: dict = {}
    for e in xs:
        tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    for key, evs in tracks.items():
        ts = [e["ts"] for e in evs]
        assert ts == sorted(ts), threads[key]
        for a, b in zip(evs, evs[1:]):  # a track is a sequence: no span starts before the previous one ends
            assert b["ts"] >= a["ts"] + a["dur"] - 1e-6, (threads[key], a, b)
    names = set(threads.values())
    dies = {st.die for st in plans[name].stages}
    assert dies <= names and "host" in names
    assert any(n.startswith("host -> ") for n in names) and any(n.endswith("-> host") for n in names)


def test_every_die_track_covers_the_step_and_its_compute_is_the_predictors(plans):
    for name in ("pipeline", "tensor", "hybrid"):
        p = plans[name]
        tr = build_trace(p)
        known = {t.name for t in tr.decode.tracks}
        assert {s.track for s in tr.decode.spans} <= known
        for sp in p.prediction.stages:
            mine = tr.decode.track_spans(sp.die)
            assert sum(s.dur_s for s in mine) == pytest.approx(tr.decode.length_s, rel=REL)
            busy = sum(s.dur_s for s in mine if s.kind in (COMPUTE, COLLECTIVE))
            waits_in_group = sum(s.dur_s for s in mine if s.kind == WAIT and s.name.startswith("wait for"))
            # the die's part of the step: its own work (a layers stage), or the group's step (a shard)
            assert busy + waits_in_group == pytest.approx(sp.decode_s, rel=REL, abs=1e-12), (name, sp.die)


def test_a_tensor_group_has_two_allreduces_per_layer_on_every_die(plans, cfg):
    p = plans["tensor"]
    tr = build_trace(p)
    dies = [st.die for st in p.stages]
    track = f"all-reduce {'+'.join(dies)}"
    ars = tr.decode.track_spans(track)
    assert len(ars) == 2 * cfg.num_layers
    for d in dies:
        mine = [s for s in tr.decode.track_spans(d) if s.kind == COLLECTIVE]
        assert [(s.start_s, s.dur_s) for s in mine] == [(s.start_s, s.dur_s) for s in ars]
    phases = {s.name for s in tr.decode.track_spans(dies[0]) if s.kind == COMPUTE}
    assert {"embedding", "LM head", "layer 0 attention", "layer 0 MLP"} <= phases
    # the all-reduces' part of the step is what the predictor's reasons say they cost
    total = sum(s.dur_s for s in ars)
    shares = step_shares(tr.decode)
    assert shares[LINK_LATENCY] + shares[LINK_BW] >= total * (1 - REL)


def test_pipeline_at_batch1_takes_turns(plans):
    tr = build_trace(plans["pipeline"])
    first_compute = []
    for st in plans["pipeline"].stages:
        mine = [s for s in tr.decode.track_spans(st.die) if s.kind == COMPUTE]
        first_compute.append(mine[0].start_s)
        assert not [s for s in tr.decode.track_spans(st.die) if s.kind == COLLECTIVE]
    assert first_compute == sorted(first_compute) and len(set(first_compute)) == 4


def test_micro_batches_wrap_into_one_step_without_overlap(plans):
    p = plans["pipeline-batch8"]
    tr = build_trace(p)
    assert tr.micro_batches == 4 and tr.notes
    for st in p.stages:
        mine = tr.decode.track_spans(st.die)
        assert len({dict(s.args).get("micro_batch") for s in mine if s.kind == COMPUTE}) == 4
        assert all(0 <= s.start_s and s.end_s <= tr.decode.length_s * (1 + REL) for s in mine)


def test_shares_sum_to_the_step_and_layers_stages_agree_with_their_bound(plans):
    for name, p in plans.items():
        tr = build_trace(p)
        for tl in (tr.decode, tr.prefill):
            shares = step_shares(tl)
            assert set(shares) == set(CATEGORIES)
            assert sum(shares.values()) == pytest.approx(tl.length_s, rel=REL), name
        if {st.kind for st in p.stages} == {"layers"} and all(sp.bound == "memory" for sp in p.prediction.stages):
            assert bottleneck(step_shares(tr.decode)).kind == WEIGHTS_BW


def test_bottleneck_words():
    b = bottleneck({WEIGHTS_BW: 0.7, "compute": 0.0, LINK_LATENCY: 0.2, LINK_BW: 0.05, "host": 0.05})
    assert b.kind == WEIGHTS_BW and b.share == pytest.approx(0.7)
    assert b.words.startswith("weights bandwidth: 70% of the step") and "then link latency (20%)" in b.words
    b = bottleneck({WEIGHTS_BW: 0.1, "compute": 0.0, LINK_LATENCY: 0.92, LINK_BW: 0.0, "host": 0.0})
    assert b.kind == LINK_LATENCY and "then" not in b.words  # the runner-up shows only from a tenth of the step
    assert bottleneck({"host": 3.0, LINK_BW: 1.0}).kind == "host"
    with pytest.raises(ValueError):
        bottleneck({WEIGHTS_BW: 0.0})


def test_slow_links_make_the_tensor_groups_step_link_bound(cfg):
    """Over a link with a millisecond per transfer, the all-reduces dominate and are named as latency."""
    from chipfuse.hw.load import parse_system

    sysm = make_system(2, topology="star")
    data = sysm.model_dump(mode="json")
    for lk in data["links"]:
        lk["latency_us"] = 1000
    slow = parse_system(data, "slow")
    p = _plan(cfg, slow, "tensor")
    tr = build_trace(p)
    assert bottleneck(step_shares(tr.decode)).kind == LINK_LATENCY
    rows = {r.label: r for r in gantt(tr.decode, 40)}
    assert GANTT_CHARS[COLLECTIVE] in rows[p.stages[0].die].bar


def test_gantt_rows(plans):
    tr = build_trace(plans["pipeline"])
    rows = gantt(tr.decode, 48)
    assert [r.label for r in rows] == [st.die for st in plans["pipeline"].stages] + ["links", "host"]
    assert all(len(r.bar) == 48 for r in rows)
    firsts = [r.bar.index(GANTT_CHARS[COMPUTE]) for r in rows[:4]]
    assert firsts == sorted(firsts) and firsts[0] == 0  # the dies take turns, die0 first
    for r, sp in zip(rows, plans["pipeline"].prediction.stages):
        compute = dict(r.seconds)[COMPUTE]
        # characters in proportion to time (error diffusion): within one character per kind
        assert abs(r.bar.count(GANTT_CHARS[COMPUTE]) - 48 * compute / tr.decode.length_s) <= 1
        assert compute == pytest.approx(sp.decode_s, rel=REL)
    with pytest.raises(ValueError):
        gantt(tr.decode, 0)


def test_a_plan_the_predictor_refuses_is_refused_the_same_way(plans):
    from chipfuse.errors import ChipfuseError

    bad = plans["pipeline"].model_copy(deep=True)
    bad.stages[1].blocks = (5, 6)
    with pytest.raises(ChipfuseError, match="cannot predict an invalid plan"):
        build_trace(bad)
