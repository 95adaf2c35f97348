"""The probe's fit on a traced 1-die run: it sets the die speed, hop and host cost from what the run measured, so
the fitted spec predicts that run; a probed system cut to n dies is the probe's chain of n dies."""

from __future__ import annotations

import os

import pytest

from chipfuse.api.hostfit import _with_fit, fit_on_run, resize
from chipfuse.hw.load import parse_system


def probed(n: int = 4) -> dict:
    """A system shaped like `chipfuse probe`'s output, with deliberately wrong speeds for the fit to correct."""
    names = [f"die{i}" for i in range(n)]
    link = {"kind": "d2d-pcb", "bandwidth_gb_per_s": 2.0, "efficiency": 1.0, "latency_us": 20.0}
    return {
        "name": "this-host",
        "host": {"name": "this host", "cpu": {"cores": os.cpu_count() or 1, "core_type": "host", "freq_ghz": 1.0,
                                              "gflops_fp32": 50.0},
                 "dram": {"type": "DDR5", "bus_width_bits": 64, "data_rate_mtps": 4800, "capacity_gib": 8,
                          "bandwidth_gb_per_s": 20.0, "efficiency": 1.0},
                 "reserved_gib": 1.0, "ports": [{"kind": "d2d", "count": 2}], "overhead_per_token_s": 2e-4},
        "die_types": {"emulated": {
            "tops": {"fp32": 0.05, "bf16": 0.05, "int8": 0.1, "int4": 0.1},
            "memory": {"own": {"type": "DDR5", "bus_width_bits": 64, "data_rate_mtps": 4800, "capacity_gib": 1.5,
                               "bandwidth_gb_per_s": 20.0, "efficiency": 0.9}},
            "compute_efficiency": 1.0, "op_overhead_s": 2e-5, "activation_precision": "fp32"}},
        "dies": [{"name": d, "type": "emulated"} for d in names],
        "links": [{**link, "between": ["host", names[0]]}] + [{**link, "between": [a, b]} for a, b in zip(names, names[1:])]
                 + [{**link, "between": [names[-1], "host"]}],
    }


def test_resize_keeps_the_probes_chain():
    four = parse_system(probed(4), "probe")
    for n in (1, 2, 3, 4):
        s = resize(four, n)
        assert s.die_names == [f"die{i}" for i in range(n)]
        pairs = [tuple(lk.between) for lk in s.links]
        want = [("host", "die0"), *[(f"die{i}", f"die{i + 1}") for i in range(n - 1)]] + ([(f"die{n - 1}", "host")]
                                                                                            if n > 1 else [])
        assert pairs == want
    with pytest.raises(ValueError, match="4 dies, not 5"):
        resize(four, 5)


def test_the_fit_scales_rates_and_sets_latency_and_host_cost():
    d = probed(2)
    out = parse_system(_with_fit(d, 0.5, 0.3, 700e-6, 1.2e-3), "fit")
    dt = out.die_types["emulated"]
    assert dt.tops["int4"] == pytest.approx(0.1) and dt.memory.own.efficiency == pytest.approx(0.45)
    assert dt.op_overhead_s == pytest.approx(4e-5) and dt.prefill_compute_efficiency == pytest.approx(0.3)
    assert all(lk.latency_us == pytest.approx(700) for lk in out.links)
    assert out.host.overhead_per_token_s == pytest.approx(1.2e-3)


@pytest.mark.slow
def test_the_fitted_spec_predicts_the_run_it_was_fitted_on():
    system, fit = fit_on_run(parse_system(probed(4), "probe"), threads=None)
    assert 0.02 < fit.die_speed < 50 and fit.hop_latency_s > 0 and fit.host_per_token_s >= 0
    assert system.die_names == ["die0", "die1", "die2", "die3"]  # every die of the probe gets the fit
    from chipfuse.api.hostfit import FIT_CONTEXT
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.runtime.device import resolve_model

    _, cfg = resolve_model(None)
    p = compile_plan(cfg, resize(system, 1), "int4", context=FIT_CONTEXT, batch=1,
                     prompt_tokens=fit.prompt_tokens).prediction
    if fit.prefill_efficiency < 1.0:  # the prefill efficiency's fixed point (unless the run beat the kernels)
        assert p.ttft_s == pytest.approx(fit.measured_ttft_s, rel=0.05)
    else:
        assert p.ttft_s >= fit.measured_ttft_s * 0.95
    # the decode step rebuilt from its measured parts: within the spread of one short run's steps
    assert p.decode_tokens_per_s == pytest.approx(fit.measured_decode_tokens_per_s, rel=0.35)
    # the 2-die tensor group's fit: an all-reduce latency and a time-share efficiency, each in its range
    assert fit.collective_latency_s is not None and 0.0 <= fit.collective_latency_s < 0.1
    assert 0.1 <= fit.time_share_efficiency <= 1.0
    assert all(dt.collective_latency_s == fit.collective_latency_s for dt in system.die_types.values())


def _tensor_prediction(d: dict, latency_s: float, share_eff: float, prompt_tokens: int = 40):
    from chipfuse.api.hostfit import FIT_CONTEXT
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config

    d = {**d, "host": {**d["host"], "cpu": {**d["host"]["cpu"], "time_share_efficiency": share_eff}},
         "die_types": {k: {**v, "collective_latency_s": latency_s} for k, v in d["die_types"].items()}}
    return compile_plan(load_model_config("smollm2-135m"), parse_system(d, "probe"), "int4", context=FIT_CONTEXT,
                        batch=1, prompt_tokens=prompt_tokens, split="tensor").prediction


def _two_emulated() -> dict:
    d = probed(2)
    d["host"]["cpu"]["cores"] = 2
    d["die_types"]["emulated"]["host_threads"] = 2  # 4 threads on 2 cores: the group time-shares them
    return d


def test_the_tensor_fit_recovers_the_latency_and_efficiency_that_made_the_runs():
    """The 2-die tensor group's decode step and time to first token, made by a known all-reduce latency and
    time-share efficiency, give both back (the prediction is linear in the latency and in 1/efficiency)."""
    from chipfuse.api.hostfit import _fit_tensor
    from chipfuse.frontends import load_model_config

    d = _two_emulated()
    cfg = load_model_config("smollm2-135m")
    for latency_s, eff in ((4.5e-4, 0.6), (1e-4, 0.9), (2e-3, 0.3)):
        p = _tensor_prediction(d, latency_s, eff)
        got_latency, got_eff = _fit_tensor(cfg, parse_system(d, "probe"), 40, [(p.decode_step_s, p.ttft_s)] * 3)
        assert got_latency == pytest.approx(latency_s, rel=1e-3) and got_eff == pytest.approx(eff, rel=1e-3)


def test_the_tensor_fit_holds_its_values_in_range_when_the_runs_beat_the_model():
    """Runs faster than any latency >= 0 and efficiency <= 1 allow give 0 latency and efficiency 1, not a negative
    latency or an efficiency above one."""
    from chipfuse.api.hostfit import _fit_tensor
    from chipfuse.frontends import load_model_config

    d = _two_emulated()
    p = _tensor_prediction(d, 0.0, 1.0)
    got_latency, got_eff = _fit_tensor(load_model_config("smollm2-135m"), parse_system(d, "probe"), 40,
                                       [(p.decode_step_s * 0.5, p.ttft_s * 0.5)])
    assert got_latency == 0.0 and got_eff == 1.0


def test_the_prefill_fit_recovers_the_efficiency_and_overhead_that_made_the_runs():
    """1- and 2-die times to first token made by a known prefill efficiency and per-prefill-step overhead give both
    back: the 2-die pipeline's extra beyond its predicted hop and step is the overhead, paid by every die (so the
    1-die level is fitted with it)."""
    from chipfuse.api.hostfit import FIT_CONTEXT, _fit_prefill
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config

    cfg = load_model_config("smollm2-135m")
    d = probed(2)
    decode = (0.8, 3e-4, 1e-4, 2e-4)  # speed, hop, host, stage step: already fitted
    for eff, overhead_s in ((0.4, 2.5e-3), (0.7, 0.0), (0.2, 1e-2)):
        made = parse_system(_with_fit(d, *decode[:1], eff, *decode[1:], prefill_s=overhead_s), "made")
        one, two = (compile_plan(cfg, resize(made, n), "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=40,
                                 split="pipeline").prediction.ttft_s for n in (1, 2))
        got_eff, got_s, fitted, spread = _fit_prefill(cfg, d, decode, 40, one, [(one, two)] * 3)
        assert spread == pytest.approx((overhead_s, overhead_s), abs=2e-6)  # identical pairs: no spread
        assert got_eff == pytest.approx(eff, rel=2e-3) and got_s == pytest.approx(overhead_s, abs=2e-6)
        assert parse_system(fitted, "fit").die_types["emulated"].prefill_overhead_s == pytest.approx(got_s, abs=1e-7)
    # a 2-die run faster than the predicted hop and step: no negative overhead
    _, got_s, _, _ = _fit_prefill(cfg, d, decode, 40, one, [(one, one * 0.9)])
    assert got_s == 0.0
    # pairs that disagree: the median sets the overhead, the quartiles say how far apart they were
    _, got_s, _, spread = _fit_prefill(cfg, d, decode, 40, one, [(one, two + k * 1e-3) for k in (0, 1, 2, 3, 4)])
    # (the last runs above were made with 10 ms: the pairs are 10-14 ms apart beyond the predicted hop and step)
    assert got_s == pytest.approx(12e-3, abs=2e-6) and spread == pytest.approx((10.5e-3, 13.5e-3), abs=2e-6)
