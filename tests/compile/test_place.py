"""Placement: the MILP's lam equals brute force's on random small instances (up to 5 models x 4 dies, replicas and
two-die splits, memory that forces choices, shared links); the greedy heuristic never beats it; the rates it
reports respect every limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chipfuse.compile.place import Option, Problem, greedy, max_lambda_lp, solve


@st.composite
def problems(draw):
    n_models = draw(st.integers(1, 5))
    n_dies = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dies = tuple(f"d{k}" for k in range(n_dies))
    memory = tuple(float(v) for v in rng.uniform(1.0, 4.0, n_dies) * 1e9)
    speed = rng.uniform(0.5, 2.0, n_dies)
    options = []
    for m in range(n_models):
        work = rng.uniform(1e-3, 5e-2)  # seconds per item on a die of speed 1
        size = rng.uniform(0.3, 2.5) * 1e9
        nbytes = rng.uniform(1e4, 5e6)
        for k, d in enumerate(dies):
            up = ("host", d)
            options.append(Option(m, (d,), {d: work / speed[k]}, {d: size}, {up: nbytes / 1e9, (d, "host"): 1e-5},
                                  label=f"m{m} on {d}"))
        if n_dies > 1 and draw(st.booleans()):  # a split over two dies: each holds about half
            a, b = sorted(rng.choice(n_dies, 2, replace=False))
            f = rng.uniform(0.3, 0.7)
            da, db = dies[a], dies[b]
            options.append(Option(m, (da, db), {da: f * work / speed[a], db: (1 - f) * work / speed[b]},
                                  {da: f * size, db: (1 - f) * size},
                                  {("host", da): nbytes / 1e9, (da, db): rng.uniform(0.2, 1) * nbytes / 1e9,
                                   (db, "host"): 1e-5}, label=f"m{m} split {da}+{db}"))
    demand = tuple(float(v) for v in rng.uniform(1.0, 80.0, n_models))
    return Problem(tuple(f"m{m}" for m in range(n_models)), demand, tuple([1.0] * n_models), dies, memory,
                   tuple(options))


def brute_force(p: Problem) -> float:
    """Every deployment that fits memory and cannot take one more option (lam only grows with options), each
    solved as an LP; the best lam."""
    n = len(p.options)
    best = 0.0
    free0 = dict(zip(p.dies, p.memory_bytes))

    def rec(i: int, chosen: list[bool], free: dict) -> None:
        nonlocal best
        if i == n:
            fits = lambda j: all(p.options[j].mem_bytes[d] <= free[d] for d in p.options[j].dies)  # noqa: E731
            if any(not chosen[j] and fits(j) for j in range(n)):
                return  # not maximal: a larger deployment is visited too
            got = max_lambda_lp(p, tuple(chosen))
            if got:
                best = max(best, got[0])
            return
        o = p.options[i]
        if all(o.mem_bytes[d] <= free[d] for d in o.dies):
            for d in o.dies:
                free[d] -= o.mem_bytes[d]
            rec(i + 1, chosen + [True], free)
            for d in o.dies:
                free[d] += o.mem_bytes[d]
        rec(i + 1, chosen + [False], free)

    rec(0, [], dict(free0))
    return best


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_the_milp_equals_brute_force(p):
    got = solve(p)
    assert got.method == "milp"
    want = brute_force(p)
    assert got.lam == pytest.approx(want, rel=1e-6, abs=1e-9)
    # the rates respect every limit, and serve each model at least lam of its demand
    for d in p.dies:
        assert got.die_busy[d] <= 1 + 1e-6 and got.die_mem[d] <= dict(zip(p.dies, p.memory_bytes))[d] * (1 + 1e-9)
    assert all(v <= 1 + 1e-6 for v in got.link_busy.values())
    for m, d in enumerate(p.demand):
        assert got.served[m] >= got.lam * d * (1 - 1e-6)
    assert all(r == 0 or x for x, r in zip(got.x, got.rate))
    x, lam = greedy(p)
    assert lam <= got.lam * (1 + 1e-6) + 1e-12


def test_a_replicated_model_shares_its_stream_in_proportion_to_die_speed():
    fast, slow = Option(0, ("a",), {"a": 0.01}, {"a": 1.0}), Option(0, ("b",), {"b": 0.03}, {"b": 1.0})
    p = Problem(("cnn",), (200.0,), (1.0,), ("a", "b"), (10.0, 10.0), (fast, slow))
    got = solve(p)
    assert got.x == (True, True)
    assert got.rate[0] / got.rate[1] == pytest.approx(3.0, rel=1e-6)
    assert got.lam == pytest.approx((100 + 100 / 3) / 200, rel=1e-9)


def test_two_models_that_cannot_share_a_die_get_one_each():
    opts = tuple(Option(m, (d,), {d: 0.01}, {d: 6.0}) for m in range(2) for d in ("a", "b"))
    got = solve(Problem(("x", "y"), (50.0, 50.0), (1.0, 1.0), ("a", "b"), (8.0, 8.0), opts))
    deployed = [(o.model, o.dies[0]) for o, x in zip(opts, got.x) if x]
    assert sorted(m for m, _ in deployed) == [0, 1] and len({d for _, d in deployed}) == 2
    assert got.lam == pytest.approx(2.0)


@pytest.mark.parametrize("n_models, n_dies", [(6, 2), (7, 2)])
def test_brute_force_and_milp_agree_on_larger_cases_too(n_models, n_dies):
    rng = np.random.default_rng(n_models)
    dies = tuple(f"d{k}" for k in range(n_dies))
    opts = tuple(Option(m, (d,), {d: float(rng.uniform(0.005, 0.05))}, {d: float(rng.uniform(1, 3))})
                 for m, d in itertools.product(range(n_models), dies))
    p = Problem(tuple(map(str, range(n_models))), tuple(rng.uniform(5, 40, n_models)), (1.0,) * n_models, dies,
                (5.0,) * n_dies, opts)
    assert solve(p).lam == pytest.approx(brute_force(p), rel=1e-6)
