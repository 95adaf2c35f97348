"""The pipeline split is optimal: checked against brute force on small cases."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chipfuse.compile.pipeline import min_dies, min_max_memory, split_pipeline


def brute_force(time, extra, mem, cap, own=None):
    m, k = time.shape
    own = np.zeros(k) if own is None else own
    best = None
    for cuts in itertools.combinations(range(1, m), k - 1):
        bounds = list(zip((0, *cuts), (*cuts, m)))
        if any(mem[s:e].sum() > cap[j] for j, (s, e) in enumerate(bounds)):
            continue
        costs = [time[s:e, j].sum() + own[j] + extra[j] for j, (s, e) in enumerate(bounds)]
        key = (max(costs), sum(costs))
        if best is None or key[0] < best[0] - 1e-12 or (abs(key[0] - best[0]) <= 1e-12 and key[1] < best[1]):
            best = key
    return best


@st.composite
def problems(draw):
    m = draw(st.integers(1, 9))
    k = draw(st.integers(1, 4))
    vals = st.floats(0.01, 10, allow_nan=False)
    time = np.array([[draw(vals) for _ in range(k)] for _ in range(m)])
    extra = np.array([draw(st.floats(0, 2)) for _ in range(k)])
    mem = np.array([draw(st.floats(0.1, 5)) for _ in range(m)])
    cap = np.array([draw(st.floats(1, 20)) for _ in range(k)])
    own = np.array([draw(st.sampled_from([0.0, 0.0, 0.5, 3.0])) for _ in range(k)])  # a die's cost per step
    return time, extra, mem, cap, own


@settings(max_examples=300, deadline=None)
@given(problems())
def test_split_matches_brute_force(p):
    time, extra, mem, cap, own = p
    got = split_pipeline(time, extra, mem, cap, own=own)
    want = brute_force(time, extra, mem, cap, own) if time.shape[0] >= time.shape[1] else None
    if want is None:
        assert got is None
        return
    assert got is not None
    assert np.isclose(got.bottleneck_s, want[0], rtol=1e-9)
    assert np.isclose(got.total_s, want[1], rtol=1e-6)
    # the returned bounds are contiguous, cover every block, and respect memory
    assert got.bounds[0][0] == 0 and got.bounds[-1][1] == time.shape[0]
    assert all(a[1] == b[0] for a, b in zip(got.bounds, got.bounds[1:]))
    assert all(mem[s:e].sum() <= cap[j] + 1e-9 for j, (s, e) in enumerate(got.bounds))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.1, 5), min_size=1, max_size=10), st.floats(0.5, 12))
def test_min_dies_is_the_fewest(mem, cap):
    mem = np.array(mem)
    n = min_dies(mem, cap)
    if (mem > cap).any():
        assert n is None
        return
    # n dies suffice and n-1 do not
    assert min_max_memory(mem, min(n, len(mem)))[0] <= cap + 1e-9
    if n > 1:
        assert min_max_memory(mem, n - 1)[0] > cap
