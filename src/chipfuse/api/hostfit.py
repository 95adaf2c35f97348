"""Fit a probed host spec on one real run, so the runtime agrees with its own plan (`chipfuse probe`).

The probe's micro-benchmarks time kernels alone; a real decode step also pays for what they leave out: a
die's kernels at the stage's shapes and cache, the Python between them, a worker woken from its wait for
each hop, and the host's own per-token work. One short traced run of the embedded model on ONE die splits
a decode step (api.measured): its link spans give the hop latency, the rest beyond the die's compute the
host's per-token cost. Untraced requests, as `chipfuse run` makes them, then set the level: on one die the
die's decode speed (a factor on its streaming rate and per-layer cost) and, from the time to first token, a
prefill efficiency; on two dies the cost a pipeline stage pays per step beyond its hop (a die woken from its
wait). Untraced requests on a 2-die tensor group give the rest, from its decode step and time to first token
together: what one all-reduce between running dies costs (`DieType.collective_latency_s`: the exchange, and
the dies' return to work after it) and the share of the cores' time two dies computing at once still put to
work (`cpu.time_share_efficiency`). Pipelines and tensor groups on 3 and 4 dies are then predicted from that
spec, never fitted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from ..hw.spec import System

FIT_PROMPT = "Tell me a story about a lighthouse keeper and the sea."
FIT_TOKENS = 48  # decode steps timed (after a warm-up request)
FIT_CONTEXT = 160  # prompt (~50 tokens with the chat template) + the tokens generated
FIT_REPEATS = 6  # untraced requests on each plan, in two turns (their medians set the levels)
FIT_PROMPTS = 8  # and prompt-only requests per turn: a time to first token is one sample, not a mean of steps (the
# prefill step's cost still moved 1.5-5.6 ms over four probes of one 2-core VM with them, 1.9-6.7 ms over five without)


@dataclass(frozen=True)
class HostFit:
    """What the 1-die run measured and the factors it set (speed: measured compute against the spec's)."""

    die_speed: float  # factor on the die's DRAM efficiency and per-layer cost (its decode speed)
    prefill_efficiency: float  # the die's prefill compute efficiency after the fit
    hop_latency_s: float  # one hand-over between processes (a die woken from its wait)
    host_per_token_s: float  # the host's work per generated token
    measured_decode_tokens_per_s: float
    predicted_decode_tokens_per_s_before: float
    measured_ttft_s: float
    predicted_ttft_s_before: float
    prompt_tokens: int
    stage_overhead_s: float = 0.0  # what each pipeline stage pays per step beyond its hop (a woken die)
    prefill_overhead_s: float = 0.0  # and per prefill step beyond that (a die idle through the earlier stages')
    # the middle half (quartiles) of the paired requests' values behind the two medians above: how steady this
    # machine was while it was measured (on a 2-core VM the same code fitted a stage step at 126-889 us minutes apart)
    stage_overhead_spread_s: tuple[float, float] = (0.0, 0.0)
    prefill_overhead_spread_s: tuple[float, float] = (0.0, 0.0)
    collective_latency_s: float | None = None  # one all-reduce between running dies (2-die tensor requests)
    time_share_efficiency: float = 1.0  # share of the cores' time dies computing at once put to work


def resize(system: System, n: int) -> System:
    """A probed system cut to its first `n` dies, chained as the probe chains them (host -> die0 -> ... -> host)."""
    from ..hw.load import parse_system

    data = system.model_dump(mode="json", exclude_none=True)
    if not 1 <= n <= len(data["dies"]):
        raise ValueError(f"the probe describes {len(data['dies'])} dies, not {n}")
    dies = data["dies"][:n]
    names = [d["name"] for d in dies]
    proto = data["links"][0]

    def link(a: str, b: str) -> dict:
        return {**proto, "between": [a, b]}

    links = [link("host", names[0])] + [link(a, b) for a, b in zip(names, names[1:])]
    if n > 1:
        links.append(link(names[-1], "host"))
    host = {**data["host"], "ports": [{"kind": "d2d", "count": 2 if n > 1 else 1}]}
    return parse_system({**data, "name": f"{data['name']}-{n}", "host": host, "dies": dies, "links": links,
                         "packages": []}, f"{data['name']} cut to {n} dies")


def _with_fit(data: dict, speed: float, prefill_eff: float | None, hop_s: float, host_s: float,
              stage_s: float = 0.0, collective_s: float | None = None, share_eff: float = 1.0,
              prefill_s: float = 0.0) -> dict:
    out = {**data, "die_types": {}}
    for name, dt in data["die_types"].items():
        dt = dict(dt)
        mem = {**dt["memory"], "own": {**dt["memory"]["own"]}}
        mem["own"]["efficiency"] = round(min(1.0, mem["own"]["efficiency"] * speed), 4)
        dt["memory"] = mem  # decode streams weights: its speed is the DRAM side's and the per-layer cost's
        dt["op_overhead_s"] = round(dt.get("op_overhead_s", 0.0) / speed, 9)  # (TOPS stay as measured: the
        # prefill's many-token steps get their own efficiency below)
        if prefill_eff is not None:
            dt["prefill_compute_efficiency"] = round(prefill_eff, 4)
        dt["step_overhead_s"] = round(stage_s, 7)
        dt["prefill_overhead_s"] = round(prefill_s, 7)
        if collective_s is not None:
            dt["collective_latency_s"] = round(collective_s, 7)
        out["die_types"][name] = dt
    out["links"] = [{**lk, "latency_us": round(hop_s * 1e6, 1)} for lk in data["links"]]
    out["host"] = {**data["host"], "overhead_per_token_s": round(host_s, 7),
                   "cpu": {**data["host"]["cpu"], "time_share_efficiency": round(share_eff, 4)}}
    tensor = "" if collective_s is None else (f", all-reduce {collective_s * 1e6:.0f} us, time-share efficiency "
                                              f"{share_eff:.3f}")
    out["sources"] = {**data.get("sources", {}), "fit": f"decode speed x{speed:.3f}, hop {hop_s * 1e6:.0f} us, host "
                      f"{host_s * 1e6:.0f} us per token, {stage_s * 1e6:.0f} us per stage step and "
                      f"{prefill_s * 1e6:.0f} us more per prefill step{tensor}, fitted on runs "
                      "of the embedded model (a traced 1-die run; untraced requests on 1 die, a 2-die pipeline and a "
                      "2-die tensor group)"}
    return out


def _untraced(plans: list, threads: int | None, repeats: int, blocks: int = 2,
              prompts: int = 0) -> tuple[list[list[tuple[float, float]]], list[list[float]]]:
    """For each plan, (decode step s, time to first token s) of `repeats` requests as `chipfuse run` makes them
    (untraced), each Device answering a warm-up request first, and the times to first token of those and of
    `prompts` more prompt-only requests per turn. The plans take turns, `blocks` times each (a process holds one
    Device at a time), so a drift of the machine weighs on all alike; request i of one plan and request i of
    another ran in the same turn."""
    from ..runtime.device import Device

    out: list[list[tuple[float, float]]] = [[] for _ in plans]
    ttfts: list[list[float]] = [[] for _ in plans]
    per_block = [repeats // blocks + (1 if b < repeats % blocks else 0) for b in range(blocks)]
    for n in per_block:
        for plan, got, firsts in zip(plans, out, ttfts):
            with Device(plan, None, threads=threads) as dev:
                ids = dev.chat_ids([{"role": "user", "content": FIT_PROMPT}])
                list(dev.submit(ids, 4, stop_ids=set()))
                for _ in range(n):
                    g = dev.submit(ids, FIT_TOKENS, stop_ids=set())
                    list(g)
                    got.append((1.0 / (g.decode_tokens_per_s or 1.0), g.ttft_s or 0.0))
                    firsts.append(g.ttft_s or 0.0)
                for _ in range(prompts):
                    g = dev.submit(ids, 1, stop_ids=set())
                    list(g)
                    firsts.append(g.ttft_s or 0.0)
    return out, ttfts


def fit_on_run(system: System, threads: int | None, on_status=lambda m: None) -> tuple[System, HostFit]:
    """Fit `system`'s factors on runs of the embedded model and return it with them applied to every die, link and
    the host, and what was measured. A traced 1-die run splits a decode step into the die's compute, the hops and
    the host's share; untraced requests (as `chipfuse run` makes them) on 1 die set the level, and (when the system
    has 2 dies) on a 2-die pipeline the cost each added stage pays beyond its hop (`DieType.step_overhead_s`) and per
    prefill step beyond that (`DieType.prefill_overhead_s`, `_fit_prefill`; prompt-only requests add times to first
    token), and on a 2-die tensor group an all-reduce's latency and the cores' time-share efficiency
    (`_fit_tensor`)."""
    from ..compile.compiler import compile_plan
    from ..hw.load import parse_system
    from ..runtime.device import Device, resolve_model
    from .measured import measured_trace

    data = system.model_dump(mode="json", exclude_none=True)
    one = resize(system, 1)
    _, cfg = resolve_model(None)
    on_status("a traced 1-die run of the embedded model")
    plan = compile_plan(cfg, one, "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=48)
    with Device(plan, None, threads=threads, trace=True) as dev:
        ids = dev.chat_ids([{"role": "user", "content": FIT_PROMPT}])
        list(dev.submit(ids, 4, stop_ids=set()))  # warm-up: first calls, allocations (its prefill is not used)
        g = dev.submit(ids, FIT_TOKENS, stop_ids=set())
        list(g)
        rec = dev.recording()
    plan = compile_plan(cfg, one, "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=len(ids))
    tr = measured_trace(plan, rec)
    die = plan.stages[0].die
    compute_s = sum(s.dur_s for s in tr.decode.track_spans(die) if s.kind == "compute")
    links = [s for s in tr.decode.spans if s.kind == "transfer" and " -> " in s.track]
    hop_s = sum(s.dur_s for s in links) / max(1, len(links))
    host_s = max(0.0, tr.decode.length_s - compute_s - sum(s.dur_s for s in links))
    plans = [plan]
    if len(system.dies) > 1:
        two = resize(system, 2)
        plans += [compile_plan(cfg, two, "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=len(ids), split=split)
                  for split in ("pipeline", "tensor")]
    # untraced requests on 1 die and (with 2 dies) on a 2-die pipeline and a 2-die tensor group, in turn, so a
    # drift of the machine weighs on every kind alike
    on_status(f"{FIT_REPEATS} untraced requests and {2 * FIT_PROMPTS} prompts each on "
              + ("1 die" if len(plans) == 1 else "1 die, a 2-die pipeline and a 2-die tensor group, taking turns"))
    runs, ttfts = _untraced(plans, threads, FIT_REPEATS, prompts=FIT_PROMPTS)
    ones = runs[0]
    step1, ttft1 = statistics.median(r[0] for r in ones), statistics.median(ttfts[0])
    stage_s, stage_spread = 0.0, (0.0, 0.0)
    if len(plans) > 1:  # the added stage's cost beyond its one added hop: paired with the 1-die request beside it
        stage_diffs = [b[0] - a[0] - hop_s for a, b in zip(ones, runs[1])]
        stage_s, stage_spread = max(0.0, statistics.median(stage_diffs)), _middle_half(stage_diffs)
    # the die's compute as the untraced run paid it: the level the speed factor sets
    compute_level = max(0.3 * compute_s, step1 - len(links) * hop_s - host_s - stage_s)
    speed = plan.prediction.stages[0].decode_s / compute_level
    before = plan.prediction
    two_ttfts = list(zip(ttfts[0], ttfts[1])) if len(plans) > 1 else []
    eff, prefill_s, fitted, prefill_spread = _fit_prefill(cfg, data, (speed, hop_s, host_s, stage_s), len(ids), ttft1,
                                                          two_ttfts)
    collective_s, share_eff = None, 1.0
    if len(system.dies) > 1:
        collective_s, share_eff = _fit_tensor(cfg, parse_system(fitted, "fit"), len(ids), runs[2], ttfts[2])
        fitted = _with_fit(data, speed, eff, hop_s, host_s, stage_s, collective_s, share_eff, prefill_s)
    fit = HostFit(round(speed, 4), round(eff, 4), hop_s, host_s, 1.0 / step1, before.decode_tokens_per_s, ttft1,
                  before.ttft_s, len(ids), stage_overhead_s=stage_s, prefill_overhead_s=round(prefill_s, 7),
                  collective_latency_s=collective_s, time_share_efficiency=round(share_eff, 4),
                  stage_overhead_spread_s=stage_spread, prefill_overhead_spread_s=prefill_spread)
    return parse_system(fitted, "chipfuse probe (fitted on 1- and 2-die runs)"), fit


def _fit_prefill(cfg, data: dict, decode: tuple[float, float, float, float], prompt_tokens: int, ttft1: float,
                 pairs: list[tuple[float, float]]) -> tuple[float, float, dict, tuple[float, float]]:
    """(prefill compute efficiency, prefill overhead s, fitted system data, the overhead's middle half over the
    pairs): the efficiency makes the predicted 1-die time to first token `ttft1`; the overhead is what a 2-die
    pipeline's time to first token adds beyond the predicted difference (its hop, its step cost), the median over
    `pairs` of (1-die, 2-die) times to first token measured side by side (the second die idled through the first
    one's prefill). `decode`: the factors already fitted (speed, hop s, host s, stage step s)."""
    from ..compile.compiler import compile_plan
    from ..hw.load import parse_system

    speed, hop_s, host_s, stage_s = decode

    def ttft(fitted: dict, n: int) -> float:
        return compile_plan(cfg, resize(parse_system(fitted, "fit"), n), "int4", context=FIT_CONTEXT, batch=1,
                            prompt_tokens=prompt_tokens, split="pipeline").prediction.ttft_s

    def level(prefill_s: float) -> tuple[float, dict]:
        eff = 1.0  # a few fixed-point rounds: the other parts of the TTFT do not depend on it
        fitted = _with_fit(data, speed, eff, hop_s, host_s, stage_s, prefill_s=prefill_s)
        for _ in range(4):
            eff = min(1.0, max(1e-3, eff * ttft(fitted, 1) / ttft1))
            fitted = _with_fit(data, speed, eff, hop_s, host_s, stage_s, prefill_s=prefill_s)
        return eff, fitted

    eff, fitted = level(0.0)
    prefill_s, spread = 0.0, (0.0, 0.0)
    if pairs:
        predicted = ttft(fitted, 2) - ttft(fitted, 1)
        diffs = [b - a - predicted for a, b in pairs]
        prefill_s, spread = min(1.0, max(0.0, statistics.median(diffs))), _middle_half(diffs)
        if prefill_s > 0:
            eff, fitted = level(prefill_s)
    return eff, prefill_s, fitted, spread


def _middle_half(xs: list[float]) -> tuple[float, float]:
    """The first and third quartiles of `xs`, each at least 0 (a cost)."""
    if len(xs) < 2:
        return (max(0.0, xs[0]),) * 2 if xs else (0.0, 0.0)
    q1, _, q3 = statistics.quantiles(xs, n=4)
    return max(0.0, q1), max(0.0, q3)


def _fit_tensor(cfg, system: System, prompt_tokens: int, runs: list[tuple[float, float]],
                ttfts: list[float] | None = None) -> tuple[float, float]:
    """(collective latency s, time-share efficiency) from `runs` (decode step s, time to first token s) on a 2-die
    tensor group of `system` (already fitted on the pipeline runs; `ttfts`: its times to first token, if more than
    the runs', whose median counts then). The predicted decode step and time to first token are both linear in the
    all-reduce's latency and in the inverse of the efficiency (the dies' shared compute): the two values that make
    both predictions the measured ones, each held to its range (latency >= 0, efficiency <= 1)."""
    from ..compile.compiler import compile_plan
    from ..hw.load import parse_system

    two = resize(system, 2)
    step = statistics.median(r[0] for r in runs)
    ttft = statistics.median(ttfts if ttfts else [r[1] for r in runs])
    data = two.model_dump(mode="json", exclude_none=True)

    def predicted(latency_s: float, inverse: float) -> np.ndarray:
        d = {**data, "host": {**data["host"], "cpu": {**data["host"]["cpu"], "time_share_efficiency": 1.0 / inverse}},
             "die_types": {k: {**v, "collective_latency_s": latency_s} for k, v in data["die_types"].items()}}
        p = compile_plan(cfg, parse_system(d, "fit"), "int4", context=FIT_CONTEXT, batch=1,
                         prompt_tokens=prompt_tokens, split="tensor").prediction
        return np.array([p.decode_step_s, p.ttft_s])

    base = predicted(0.0, 1.0)
    per_latency = predicted(1e-3, 1.0) - base  # per ms of latency
    per_inverse = predicted(0.0, 2.0) - base  # per unit of 1 / efficiency beyond 1
    want = np.array([step, ttft]) - base
    try:
        ms, extra = np.linalg.solve(np.column_stack([per_latency, per_inverse]), want)
    except np.linalg.LinAlgError:
        ms, extra = want[0] / per_latency[0] if per_latency[0] > 0 else 0.0, 0.0
    if extra < 0:  # no slower than a fair share: the latency alone, from the decode step
        extra = 0.0
        ms = want[0] / per_latency[0] if per_latency[0] > 0 else 0.0
    if ms < 0:  # no latency: the efficiency alone, from the time to first token
        ms = 0.0
        extra = max(0.0, want[1] / per_inverse[1]) if per_inverse[1] > 0 else 0.0
    return round(max(0.0, ms) * 1e-3, 7), min(1.0, max(0.1, 1.0 / (1.0 + extra)))
