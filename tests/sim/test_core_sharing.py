"""Dies emulated on one host's CPU share its cores (sim/perf.core_sharing): a tensor group's dies compute at once,
so their threads together against the host's cores slow each of them down; dies with silicon of their own and
groups within the cores are untouched."""

from __future__ import annotations

import pytest

from chipfuse.api.hostfit import resize
from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system, parse_system
from chipfuse.sim.perf import core_sharing
from tests.api.test_hostfit import probed


def emulated(cores: int, threads: int | None, n: int = 4):
    d = probed(n)
    d["host"]["cpu"]["cores"] = cores
    if threads is not None:
        d["die_types"]["emulated"]["host_threads"] = threads
    return parse_system(d, "probe")


def test_one_when_the_busy_threads_fit_the_cores():
    s = emulated(cores=4, threads=2)
    assert core_sharing(s, ["die0"]) == 1.0
    assert core_sharing(s, ["die0", "die1"]) == 1.0  # 4 threads on 4 cores
    assert core_sharing(emulated(cores=8, threads=1), ["die0", "die1", "die2", "die3"]) == 1.0


def test_threads_over_cores_when_they_outnumber_them():
    s = emulated(cores=2, threads=2)
    assert core_sharing(s, ["die0", "die1"]) == pytest.approx(2.0)
    assert core_sharing(s, ["die0", "die1", "die2"]) == pytest.approx(3.0)
    assert core_sharing(emulated(cores=2, threads=1), ["die0", "die1", "die2", "die3"]) == pytest.approx(2.0)


def test_dies_with_their_own_silicon_do_not_share():
    assert core_sharing(emulated(cores=1, threads=None), ["die0", "die1", "die2", "die3"]) == 1.0
    for name in ("talk-4die-d2d", "talk-heavy-2die-pcie"):
        s = load_system(name)
        assert all(dt.host_threads is None for dt in s.die_types.values())
        assert core_sharing(s, s.die_names) == 1.0


def test_a_tensor_group_on_shared_cores_is_slower_and_a_pipeline_at_batch_1_is_not():
    cfg = load_model_config("smollm2-135m")

    def pred(threads, split, n):
        s = resize(emulated(cores=2, threads=threads), n)
        return compile_plan(cfg, s, "int4", context=256, batch=1, prompt_tokens=48, split=split).prediction

    own, shared = pred(None, "tensor", 2), pred(2, "tensor", 2)
    assert shared.decode_tokens_per_s < own.decode_tokens_per_s and shared.ttft_s > own.ttft_s
    within = pred(1, "tensor", 2)  # 2 dies x 1 thread on 2 cores: no sharing
    assert within.decode_tokens_per_s == pytest.approx(own.decode_tokens_per_s)
    for n in (1, 4):  # one die computes at a time
        assert pred(2, "pipeline", n).decode_tokens_per_s == pytest.approx(pred(None, "pipeline", n).decode_tokens_per_s)


def test_a_stage_step_pays_the_dies_step_overhead_once():
    """`DieType.step_overhead_s` (fitted by the probe on emulated dies; 0 for silicon) is paid once per stage step:
    a 2-die pipeline's decode step grows by two of them, its blocks' times untouched."""
    cfg = load_model_config("smollm2-135m")
    base = probed(2)
    slow = probed(2)
    slow["die_types"]["emulated"]["step_overhead_s"] = 5e-4

    def step(d):
        return compile_plan(cfg, parse_system(d, "probe"), "int4", context=128, batch=1, prompt_tokens=16,
                            split="pipeline").prediction

    a, b = step(base), step(slow)
    assert [s.decode_s for s in b.stages] == pytest.approx([s.decode_s + 5e-4 for s in a.stages])
    assert b.decode_step_s == pytest.approx(a.decode_step_s + 2 * 5e-4)
    assert all(dt.step_overhead_s == 0.0 for name in ("talk-4die-d2d", "rk3588") for dt in load_system(name).die_types.values())


def test_time_share_efficiency_divides_the_shared_time_only_when_threads_outnumber_cores():
    """`cpu.time_share_efficiency` (fitted by the probe on a 2-die tensor group): of the time-shared cores only that
    share does work, so an oversubscribed group takes 1/efficiency longer still; a group within the cores and a
    single die are untouched."""
    d = probed(4)
    d["host"]["cpu"]["cores"] = 2
    d["host"]["cpu"]["time_share_efficiency"] = 0.5
    d["die_types"]["emulated"]["host_threads"] = 2
    s = parse_system(d, "probe")
    assert core_sharing(s, ["die0", "die1"]) == pytest.approx(4.0)  # 4 threads on 2 cores, half of it working
    assert core_sharing(s, ["die0"]) == 1.0
    d["die_types"]["emulated"]["host_threads"] = 1
    assert core_sharing(parse_system(d, "probe"), ["die0", "die1"]) == 1.0  # 2 threads on 2 cores: no time-sharing


def test_an_emulated_groups_all_reduce_pays_its_collective_latency_once_on_any_route():
    """Dies with `collective_latency_s` (emulated: one socket per pair) pay it once per all-reduce, in place of the
    chain's hop latencies (die0 and die2 are two hops apart on the probe's chain), plus the bytes' time."""
    from chipfuse.sim.collectives import allreduce, concurrent_s

    d = probed(4)
    plain = parse_system(d, "probe")
    t_plain, _ = allreduce(plain, ["die0", "die1", "die2"], 4096.0)
    d["die_types"]["emulated"]["collective_latency_s"] = 3e-4
    s = parse_system(d, "probe")
    dies = ["die0", "die1", "die2"]
    t, algo = allreduce(s, dies, 4096.0)
    bytes_only = concurrent_s(s, [(a, b, 4096.0) for a in dies for b in dies if a != b], latency=False)
    assert algo == "direct" and t == pytest.approx(3e-4 + bytes_only)
    assert bytes_only > 0 and t_plain > 2 * plain.links[0].latency_s  # the chain's routes: several hop latencies
    assert allreduce(s, ["die0"], 4096.0) == (0.0, "none")
