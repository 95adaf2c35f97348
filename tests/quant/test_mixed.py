"""Mixed precision: the MILP's choice is the brute-force optimum on small cases."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chipfuse.errors import ChipfuseError
from chipfuse.quant.mixed import assign


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.integers(0, 10**6), st.floats(0.2, 1.0))
def test_assignment_is_optimal(n, m, seed, frac):
    rng = np.random.default_rng(seed)
    kl = rng.random((n, m))
    nbytes = rng.integers(1, 100, (n, m)).astype(float)
    budget = nbytes.min(1).sum() + frac * (nbytes.max(1).sum() - nbytes.min(1).sum())
    best = min((sum(kl[i, c[i]] for i in range(n)), c) for c in itertools.product(range(m), repeat=n)
               if sum(nbytes[i, c[i]] for i in range(n)) <= budget)
    got = assign(kl, nbytes, budget)
    assert sum(nbytes[i, got[i]] for i in range(n)) <= budget + 1e-6
    assert sum(kl[i, got[i]] for i in range(n)) == pytest.approx(best[0], abs=1e-9)


def _instance(n: int, m: int, seed: int, mode: str):
    """KL log-uniform in [1e-8, 1], integer byte counts in [1e5, 1e8], a budget between the smallest and
    the largest total (or exactly one assignment's total)."""
    rng = np.random.default_rng(seed)
    kl = 10.0 ** rng.uniform(-8, 0, (n, m))
    nbytes = np.round(10.0 ** rng.uniform(5, 8, (n, m)))
    lo, hi = nbytes.min(1).sum(), nbytes.max(1).sum()
    if mode == "exact":  # exactly one assignment's total
        budget = float(nbytes[np.arange(n), rng.integers(0, m, n)].sum())
    else:
        budget = {"min": lo, "max": hi, "between": float(np.floor(rng.uniform(lo, hi))),
                  "fraction": rng.uniform(lo, hi)}[mode]
    return kl, nbytes, budget


def _brute_force(kl, nbytes, budget) -> float:
    """Least total KL over every assignment within budget (byte totals are exact in float64 here)."""
    n, m = kl.shape
    combos = np.array(list(itertools.product(range(m), repeat=n)))
    rows = np.arange(n)
    totals = nbytes[rows, combos].sum(axis=1)
    return float(kl[rows, combos].sum(axis=1)[totals <= budget].min())


def _check_optimal(n, m, seed, mode):
    kl, nbytes, budget = _instance(n, m, seed, mode)
    best = _brute_force(kl, nbytes, budget)
    got = assign(kl, nbytes, budget)
    assert len(got) == n and all(0 <= c < m for c in got)
    assert sum(int(nbytes[i, c]) for i, c in enumerate(got)) <= budget  # never over, in exact integers
    assert sum(kl[i, c] for i, c in enumerate(got)) == pytest.approx(best, rel=1e-9)


MODES = st.sampled_from(["min", "max", "exact", "between", "fraction"])


@settings(max_examples=500, deadline=None, database=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1), MODES)
def test_assignment_is_exactly_optimal_across_scales(n, m, seed, mode):
    """KL values down to 1e-8 beside byte counts up to 1e8 (where a plain MILP was non-optimal or over
    budget): the choice is the brute-force optimum and within budget."""
    _check_optimal(n, m, seed, mode)


@settings(max_examples=100, deadline=None, database=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1), MODES)
def test_milp_and_branch_and_bound_paths_are_exact(n, m, seed, mode):
    """The same on the paths large instances take: HiGHS's incumbent, then branch and bound."""
    from chipfuse.quant import mixed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mixed, "MILP_MIN_CHOICES", 0)
        mp.setattr(mixed, "STATE_LIMIT", 0)
        _check_optimal(n, m, seed, mode)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ChipfuseError, match="finite"):
        assign(np.array([[np.nan, 1.0]]), np.ones((1, 2)), 5)
    with pytest.raises(ChipfuseError, match="one shape"):
        assign(np.ones((2, 2)), np.ones((2, 3)), 5)
    with pytest.raises(ChipfuseError, match="NaN"):
        assign(np.ones((1, 2)), np.ones((1, 2)), float("nan"))
    assert assign(np.array([[1.0, 0.5]]), np.array([[1.0, 2.0]]), float("inf")) == [1]


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ChipfuseError, match="smallest candidates need"):
        assign(np.ones((2, 2)), np.full((2, 2), 10.0), 5)


def test_budget_for_a_target_rate_meets_it_on_the_planner():
    """The budget derived from a system and a decode rate, spent on the two end formats in
    proportion, gives a plan the planner predicts at (about) that rate."""
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system
    from chipfuse.quant import accuracy as acc
    from chipfuse.quant.formats import Recipe, get_format
    from chipfuse.quant.mixed import budget_for_rate

    cfg = load_model_config("llama-3.2-1b")
    system = load_system("talk-medium-d2d")
    cands = [get_format("int8"), get_format("int4-g128")]
    rates = [compile_plan(cfg, system, Recipe(f, get_format("int8")), context=2048).prediction.decode_tokens_per_s
             for f in cands]
    target = (rates[0] + rates[1]) / 2
    budget, how = budget_for_rate(cfg, system, cands, target)
    lo, hi = (acc.weight_bytes(cfg, Recipe(f, get_format("int8"))) for f in reversed(cands))
    assert lo < budget < hi and "tokens/s" in how
    # half the layers at int8 sit near that budget; the plan of such a recipe runs near the target
    half = Recipe(cands[1], get_format("int8"), tuple((b, "int8") for b in range(1, cfg.num_layers // 2 + 1)))
    assert acc.weight_bytes(cfg, half) == pytest.approx(budget, rel=0.1)
    got = compile_plan(cfg, system, half, context=2048).prediction.decode_tokens_per_s
    assert got == pytest.approx(target, rel=0.1)
    with pytest.raises(ChipfuseError, match="out of reach"):
        budget_for_rate(cfg, system, cands, rates[1] * 2)
