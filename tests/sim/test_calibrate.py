"""Calibration: the data are real records, the fit is the same model the planner uses."""

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system
from chipfuse.sim.calibrate import build_points, calibrate, load_measurements


def test_at_least_twenty_measurements_with_sources():
    ms = load_measurements()
    assert len(ms) >= 20
    assert all(m.source.startswith("http") for m in ms)
    assert len({m.device for m in ms}) >= 6


def test_fit_points_use_the_planners_model():
    """A calibration point predicts exactly what `chipfuse plan` predicts for the same case."""
    pts, _ = build_points()
    p = next(p for p in pts if p.m.device == "apple-m2-max" and p.m.quant == "Q4_0" and p.kind == "decode")
    system = load_system("apple-m2-max")
    dt = system.die_type("gpu")
    me = system.host.dram.efficiency
    plan = compile_plan(load_model_config("llama-2-7b"), system, "int4-g32-sym",
                        head_precision="int4-g32-sym", context=64, prompt_tokens=16)
    assert plan.prediction.decode_tokens_per_s == pytest.approx(1 / p.predict_s(me, dt.compute_efficiency, dt.op_overhead_s), rel=1e-6)


def test_presets_hold_the_fitted_factors_and_beat_the_defaults():
    results, _ = calibrate()
    assert {r.family for r in results} >= {"Apple M-series GPU (Metal)", "Arm SBC CPU"}
    for r in results:
        for device in r.devices:
            s = load_system(device)
            dt = s.die_type(s.die_names[0])
            assert dt.compute_efficiency == pytest.approx(r.comp_eff, abs=1e-3)
        med = sorted(abs(e) for e in r.errors["decode"])[len(r.errors["decode"]) // 2]
        dmed = sorted(abs(e) for e in r.default_errors["decode"])[len(r.default_errors["decode"]) // 2]
        assert med <= dmed + 1e-9


def test_left_out_devices_and_families_are_predicted_by_fits_without_them():
    """Leave-one-device-out and leave-one-family-out errors come from fits that never saw the left-out points:
    a fit on the other families predicts a family no better (in the squared log error both minimise) than its own."""
    import math

    from chipfuse.sim.calibrate import _err, family_of, fit

    pts, _ = build_points()
    results, _ = calibrate(pts)
    for r in results:
        for kind in ("decode", "prefill"):
            assert len(r.lodo_errors[kind]) == len(r.errors[kind])
            assert len(r.lofo_errors[kind]) == len(r.errors[kind])
        mine = [p for p in pts if family_of(p.m.device) == r.family]
        others = fit([p for p in pts if family_of(p.m.device) != r.family])
        assert [_err(p, others) for p in mine if p.kind == "decode"] == pytest.approx(r.lofo_errors["decode"])
        own = (r.mem_eff, r.comp_eff, r.overhead_s, r.prefill_eff)

        def sq(x, pts=mine):
            return sum(math.log(p.predict_s(*x) / p.measured_s) ** 2 for p in pts)

        assert sq(others) >= sq(own) * (1 - 1e-6)
