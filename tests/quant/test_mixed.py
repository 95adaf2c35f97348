"""Mixed precision: the MILP's choice is the brute-force optimum on small cases."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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


def test_impossible_budget_is_a_clear_error():
    with pytest.raises(ChipfuseError, match="smallest candidates need"):
        assign(np.ones((2, 2)), np.full((2, 2), 10.0), 5)
