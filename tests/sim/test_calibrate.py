"""Calibration: the data are real records, the fit is the same model the planner uses."""

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system
from chipfuse.sim.calibrate import build_points, calibrate, load_measurements


@pytest.fixture(scope="module")
def fitted():
    """(points, each family's result): one calibration (~30 s) for the tests that read it."""
    pts, _ = build_points()
    results, _ = calibrate(pts)
    return pts, results


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


def test_presets_hold_the_fitted_factors_and_beat_the_defaults(fitted):
    """Every family's presets (full files, or quick devices naming the family) plan with the fitted factors, and the
    fit beats the spec defaults on what it minimises (squared log error of its points)."""
    import math

    from chipfuse.sim.calibrate import family_of

    pts, results = fitted
    assert {r.family for r in results} >= {"Apple M-series GPU (Metal)", "Arm SBC CPU", "Rockchip NPU (RKLLM)"}
    for r in results:
        for device in r.devices:
            s = load_system(device)
            dt = s.die_type(s.die_names[0])
            assert dt.compute_efficiency == pytest.approx(r.comp_eff, abs=1e-3)
        mine = [p for p in pts if family_of(p.m.device) == r.family]

        def sq(x, mine=mine):
            return sum(math.log(p.predict_s(*x) / p.measured_s) ** 2 for p in mine)

        assert sq((r.mem_eff, r.comp_eff, r.overhead_s, r.prefill_eff)) <= sq((0.75, 0.5, 2e-6)) + 1e-9


def test_left_out_devices_and_families_are_predicted_by_fits_without_them(fitted):
    """Leave-one-device-out and leave-one-family-out errors come from fits that never saw the left-out points: a
    family is predicted by the typical family of its class, fitted with the family's records removed from the file;
    and that borrowed prediction fits the family no better (in the squared log error its own fit minimises)."""
    import math

    from chipfuse.sim.calibrate import _err, borrowed, family_fits, family_free, family_of

    pts, results = fitted
    for r in results:
        for kind in ("decode", "prefill"):
            assert len(r.lodo_errors[kind]) == len(r.errors[kind])
            assert len(r.lofo_errors[kind]) == len(r.errors[kind])
        mine = [p for p in pts if family_of(p.m.device) == r.family]
        rest = [p for p in pts if family_of(p.m.device) != r.family]
        rest_fits = family_fits(rest)
        without = borrowed(rest_fits, r.family, family_free(rest, rest_fits))
        assert [_err(p, without) for p in mine if p.kind == "decode"] == pytest.approx(r.lofo_errors["decode"])
        assert [_err(p, without) for p in mine if p.kind == "prefill"] == pytest.approx(r.lofo_errors["prefill"])
        own = (r.mem_eff, r.comp_eff, r.overhead_s, r.prefill_eff)

        def sq(x, pts=mine):
            return sum(math.log(p.predict_s(*x) / p.measured_s) ** 2 for p in pts)

        assert sq(without) >= sq(own) * (1 - 1e-6)


def test_a_family_borrows_the_typical_family_of_its_class():
    """Each family one vote: the borrowed factors are the mean of the class's other families' fits (geometric for
    the compute efficiencies and per-block costs), not a fit dominated by the family with the most records."""
    from chipfuse.sim.calibrate import borrowed, typical

    fits = {"Apple M-series GPU (Metal)": (0.9, 0.1, 1e-4, 0.6), "NVIDIA desktop GPU": (0.7, 0.4, 4e-4, 0.9),
            "Arm SBC CPU": (0.5, 0.8, 2e-3, 0.1)}
    x = borrowed(fits, "NVIDIA Jetson GPU")
    assert x == pytest.approx((0.8, 0.2, 2e-4, (0.6 * 0.9) ** 0.5))  # costs 100 and 400 us: 200 us, not 250
    # a cost fitted at 0 counts as 1 us (a geometric mean with a zero would be zero)
    zero = {**fits, "NVIDIA desktop GPU": (0.7, 0.4, 0.0, 0.9)}
    assert borrowed(zero, "NVIDIA Jetson GPU")[2] == pytest.approx((1e-4 * 1e-6) ** 0.5)
    assert borrowed(fits, "NVIDIA desktop GPU") == pytest.approx(fits["Apple M-series GPU (Metal)"])
    # a class with no other fitted family borrows from every family; a class without prefill takes it from all
    assert borrowed(fits, "Rockchip NPU (RKLLM)") == pytest.approx(typical(list(fits.values())))
    x86 = (0.6, 0.5, 1e-3, None)
    assert borrowed({**fits, "x86 CPU": x86}, "Arm SBC CPU") == pytest.approx(
        (*x86[:3], (0.6 * 0.9) ** 0.5))


def test_a_cpu_record_on_fewer_threads_than_cores_reaches_that_share_of_the_peak():
    """Graviton3's two llama-3.2-1b prefill records ran on 8 and 16 of its 64 cores: their compute is priced at 1/8
    and 1/4 of the preset's peak, everything else (bytes, blocks) the same."""
    pts, _ = build_points()
    g = {p.m.threads: p for p in pts if p.m.device == "graviton3" and p.kind == "prefill"}
    assert set(g) == {8, 16}
    assert g[8].comp1.sum() == pytest.approx(2 * g[16].comp1.sum())
    assert (g[8].read_bytes == g[16].read_bytes).all()
    from chipfuse.sim.calibrate import Measurement, core_share

    s = load_system("graviton3")
    assert s.host.cpu.cores == 64
    m = g[8].m
    assert core_share(m, s) == pytest.approx(8 / 64)
    assert core_share(Measurement(**{**m.__dict__, "threads": 128}), s) == 1.0  # SMT threads add no peak
    assert core_share(Measurement(**{**m.__dict__, "threads": None}), s) == 1.0  # not stated: the whole chip


def test_a_factor_no_point_constrains_has_no_vote_in_the_typical_family():
    """A family whose decode points are all memory-bound says only that its decode compute efficiency is high
    enough: `unconstrained` finds it free, and the typical family takes that factor from the families whose points
    do bind it (all of them where none does)."""
    from chipfuse.sim.calibrate import family_fits, family_free, family_of, typical, unconstrained

    pts, _ = build_points()
    jetson = [p for p in pts if family_of(p.m.device) == "NVIDIA Jetson GPU"]  # decode points only
    x = family_fits(jetson)["NVIDIA Jetson GPU"]
    free = unconstrained(jetson, x)
    # no prefill point: no prefill efficiency; every decode point memory-bound: the decode compute efficiency free,
    # any higher one predicts the same; the DRAM efficiency and per-block cost set every decode time
    assert free == {1, 3}
    assert [p.predict_s(x[0], 1.0, x[2]) for p in jetson] == pytest.approx([p.predict_s(*x) for p in jetson], rel=1e-3)
    a, b = (0.8, 0.9, 1e-4, 0.5), (0.6, 0.1, 4e-4, 0.2)
    assert typical([a, b], [frozenset({1}), frozenset()]) == pytest.approx((0.7, 0.1, 2e-4, (0.5 * 0.2) ** 0.5))
    assert typical([a, b], [frozenset({1}), frozenset({1})])[1] == pytest.approx((0.9 * 0.1) ** 0.5)
    assert family_free(jetson, {"NVIDIA Jetson GPU": x}) == {"NVIDIA Jetson GPU": free}


def test_apply_writes_what_the_presets_hold_and_a_second_apply_changes_nothing(fitted, tmp_path):
    """`chipfuse calibrate --apply` into a copy of the presets and the factors table leaves every file as committed
    (the presets are up to date with the data and the fit, and the text edits are idempotent, comments kept), and
    every preset it names still loads."""
    import shutil
    from pathlib import Path

    from chipfuse.hw.families import factors_path
    from chipfuse.hw.load import PRESET_DIR
    from chipfuse.sim.calibrate import apply_to_presets

    presets = tmp_path / "presets"
    shutil.copytree(Path(str(PRESET_DIR)), presets)
    table = tmp_path / "fitted_factors.yaml"
    committed = factors_path()
    before = {p.name: p.read_text() for p in presets.glob("*.yaml")}
    _, results = fitted
    for _ in range(2):
        changed = apply_to_presets(results, presets, table)
        assert table.read_text() == committed.read_text()
        after = {p.name: p.read_text() for p in presets.glob("*.yaml")}
        assert [n for n in before if after[n] != before[n]] == []
    assert {"raspberry-pi-5", "rk3588", "cluster-4x-rpi5-1gbe", "apple-m2-max", "rk3588-npu"} <= set(changed)
    for name in set(changed):
        load_system(presets / f"{name}.yaml")
