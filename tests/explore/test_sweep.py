"""Sweeps: the same table however the work is spread (one process, several, a local Ray instance); the Pareto
front against brute force; the closest point to a target nobody meets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chipfuse.explore.space import load_space
from chipfuse.explore.sweep import closest, count, meets, misses, pareto, reasons, sweep
from chipfuse.explore.target import parse_target
from chipfuse.frontends import load_model_config

SPACE = load_space(Path(__file__).with_name("space_small.yaml"))
MODELS = [(m, load_model_config(m)) for m in ("smollm2-135m", "qwen2.5-0.5b")]


@pytest.fixture(scope="module")
def serial():
    return sweep(SPACE, MODELS, workers=1)


def _equal(a, b) -> None:
    assert len(a) == len(b) == count(SPACE, len(MODELS))
    for name in ("design", "model", "precision", "split"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert list(a.problem) == list(b.problem)
    for k in a.values:
        assert np.array_equal(a.values[k], b.values[k], equal_nan=True), k


def test_processes_give_the_serial_table(serial):
    _equal(serial, sweep(SPACE, MODELS, workers=2))


def test_a_local_ray_instance_gives_the_serial_table(serial):
    seen = []
    _equal(serial, sweep(SPACE, MODELS, ray_address="local", progress=lambda done, total: seen.append((done, total))))
    assert seen[-1] == (len(serial), len(serial))


def test_progress_reaches_the_total(serial):
    seen = []
    sweep(SPACE, MODELS, workers=1, progress=lambda done, total: seen.append(done))
    assert seen == sorted(seen) and seen[-1] == len(serial)


def test_the_front_is_exactly_the_undominated_points(serial):
    """Brute force: a point is on a model's front iff no other point of that model is at least as good on every
    objective and better on one."""
    ok = meets(serial, parse_target("decode>=1"))
    objectives = [("cost_usd", "min"), ("power_w", "min"), ("decode_tokens_per_s", "max")]
    front = set(pareto(serial, ok, objectives).tolist())
    v = np.stack([serial.values["cost_usd"], serial.values["power_w"], -serial.values["decode_tokens_per_s"]], 1)
    for m in range(len(serial.models)):
        idx = np.flatnonzero(ok & (serial.model == m))
        pts = v[idx]
        for i, p in zip(idx, pts):
            dominated = bool(np.any(np.all(pts <= p, axis=1) & np.any(pts < p, axis=1)))
            duplicate_kept = i in front
            if dominated:
                assert i not in front
            else:  # undominated: on the front, unless an identical point stands for it
                same = idx[np.all(pts == p, axis=1)]
                assert duplicate_kept or any(j in front for j in same)
    assert front


def test_a_target_nobody_meets_has_a_closest_point_that_misses_least(serial):
    target = parse_target("decode>=100000,power<=10")
    assert not meets(serial, target).any()
    i = closest(serial, target)
    best = serial.values["decode_tokens_per_s"][serial.problem == ""].max()
    assert serial.values["decode_tokens_per_s"][i] == pytest.approx(best, rel=1e-12)
    assert "misses decode>=100000" in misses(serial, i, target)


def test_rejections_are_counted_by_reason(serial):
    why = dict(reasons(serial, parse_target("decode>=20")))
    assert any(k.startswith("cannot be built") for k in why)
    assert "does not fit its dies' memory" in why or "misses decode>=20" in why
    assert sum(why.values()) <= len(serial)
