"""Pipeline split: contiguous block ranges over an ordered list of dies, optimal by dynamic programming.

Problem: blocks 0..M-1 in order, dies 0..k-1 in route order, every die gets a non-empty
contiguous range. Stage j costs `time[b, j]` summed over its blocks plus `extra[j]` (its
links), and must fit `mem[b, j]` (or `mem[b]`) summed within `cap[j]`. We minimise the slowest stage (the
pipeline's throughput), then, among splits that reach it, the sum of stage times (latency).
Both passes are exact: O(k * M^2) with prefix sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INF = float("inf")


@dataclass(frozen=True)
class Split:
    bounds: list[tuple[int, int]]  # [start, end) per stage
    bottleneck_s: float
    total_s: float


def _dp(time: np.ndarray, extra: np.ndarray, mem: np.ndarray, cap: np.ndarray,
        combine: str, limit: float = INF, overlap: bool = False,
        own: np.ndarray | None = None) -> tuple[float, list[tuple[int, int]]] | None:
    """The best split by `combine` (max or sum of stage costs, work plus link) among those whose every stage
    costs at most `limit`; with `overlap` the limit applies to max(work, link) (a link sending one micro-batch
    while the stage works on the next). `own`: each position's fixed work per step, whatever blocks it holds
    (`DieType.step_overhead_s`)."""
    m, k = time.shape
    own = np.zeros(k) if own is None else own
    tc = np.vstack([np.zeros(k), np.cumsum(time, axis=0)])  # (m+1, k)
    mem = mem if mem.ndim == 2 else np.repeat(mem[:, None], k, axis=1)
    mc = np.vstack([np.zeros(k), np.cumsum(mem, axis=0)])  # (m+1, k)
    best = np.full((k + 1, m + 1), INF)
    arg = np.zeros((k + 1, m + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for j in range(k):
        for e in range(j + 1, m - (k - 1 - j) + 1):
            s = np.arange(j, e)
            prev = best[j, s]
            work = tc[e, j] - tc[s, j] + own[j]
            cost = work + extra[j]
            load = np.maximum(work, extra[j]) if overlap else cost
            ok = (mc[e, j] - mc[s, j] <= cap[j] * (1 + 1e-12) + 1e-9) & (load <= limit) & np.isfinite(prev)
            if not ok.any():
                continue
            cand = np.maximum(prev, cost) if combine == "max" else prev + cost
            cand = np.where(ok, cand, INF)
            i = int(np.argmin(cand))
            best[j + 1, e], arg[j + 1, e] = cand[i], s[i]
    if not np.isfinite(best[k, m]):
        return None
    bounds, e = [], m
    for j in range(k, 0, -1):
        start = int(arg[j, e])
        bounds.append((start, e))
        e = start
    return float(best[k, m]), bounds[::-1]


def split_pipeline(time: np.ndarray, extra: np.ndarray, mem: np.ndarray, cap: np.ndarray,
                   objective: str = "throughput", own: np.ndarray | None = None) -> Split | None:
    """The optimal split, or None when no split fits every die's memory.

    throughput: the slowest stage first, then the sum; latency: the sum of stage times alone (one token
    passes every stage in turn, so at batch 1 the sum is the step). `own`: each position's fixed work per step."""
    time, extra, mem, cap = (np.asarray(a, dtype=float) for a in (time, extra, mem, cap))
    own = np.zeros(time.shape[1]) if own is None else np.asarray(own, dtype=float)
    if time.shape[0] < time.shape[1]:
        return None
    if objective == "latency":
        res = _dp(time, extra, mem, cap, "sum", own=own)
        if res is None:
            return None
        costs = [float(time[s:e, j].sum() + own[j] + extra[j]) for j, (s, e) in enumerate(res[1])]
        return Split(res[1], max(costs), res[0])
    first = _dp(time, extra, mem, cap, "max", own=own)
    if first is None:
        return None
    bottleneck = first[0]
    second = _dp(time, extra, mem, cap, "sum", limit=bottleneck * (1 + 1e-9) + 1e-15, own=own)
    total, bounds = second if second is not None else (None, first[1])
    if total is None:
        total = sum(float(time[s:e, j].sum() + own[j] + extra[j]) for j, (s, e) in enumerate(bounds))
    return Split(bounds, bottleneck, total)


EXACT_CELLS = 64  # blocks x positions up to which `split_cycle` searches every bottleneck exactly


def split_cycle(time: np.ndarray, extra: np.ndarray, mem: np.ndarray, cap: np.ndarray, micro: int,
                fixed_s: float, own: np.ndarray | None = None) -> tuple[float, list[tuple[int, int]]] | None:
    """The split that minimises the predictor's step with `micro` micro-batches in flight:
    max(fixed_s + sum of work and links, micro x the slowest max(work, link)). Exact on small problems
    (every candidate bottleneck, by bisection: the sum only falls as the bottleneck allowed grows);
    on large ones the better of the two-pass split and the least-sum split. `own`: each position's fixed work
    per step (`DieType.step_overhead_s`), part of its work."""
    time, extra, mem, cap = (np.asarray(a, dtype=float) for a in (time, extra, mem, cap))
    m, k = time.shape
    own = np.zeros(k) if own is None else np.asarray(own, dtype=float)
    if m < k:
        return None

    def cycle(bounds: list[tuple[int, int]]) -> float:
        work = [float(time[s:e, j].sum()) + float(own[j]) for j, (s, e) in enumerate(bounds)]
        return max(fixed_s + sum(work) + float(extra.sum()), micro * max(max(w, x) for w, x in zip(work, extra)))

    if k == 1:  # one position holds everything
        res = _dp(time, extra, mem, cap, "sum", own=own)
        return None if res is None else (cycle(res[1]), res[1])
    if m * k > EXACT_CELLS:
        found = [split_pipeline(time, extra, mem, cap, o, own) for o in ("throughput", "latency")]
        fits = [f.bounds for f in found if f is not None]
        return min(((cycle(b), b) for b in fits), default=None)
    tc = np.vstack([np.zeros(k), np.cumsum(time, axis=0)])
    limits = sorted({max(float(tc[e, j] - tc[s, j] + own[j]), float(extra[j]))
                     for j in range(k) for s in range(m) for e in range(s + 1, m + 1)})
    best: tuple[float, list[tuple[int, int]]] | None = None
    lo, hi = 0, len(limits) - 1
    while lo <= hi:  # the least limit at which micro x limit reaches the least sum allowed by it
        mid = (lo + hi) // 2
        res = _dp(time, extra, mem, cap, "sum", limits[mid] * (1 + 1e-12) + 1e-15, overlap=True, own=own)
        if res is not None:
            c = cycle(res[1])
            best = (c, res[1]) if best is None or c < best[0] else best
        if res is None or fixed_s + res[0] > micro * limits[mid]:
            lo = mid + 1
        else:
            hi = mid - 1
    for i in (lo - 1, lo):  # the crossing's neighbours
        if 0 <= i < len(limits):
            res = _dp(time, extra, mem, cap, "sum", limits[i] * (1 + 1e-12) + 1e-15, overlap=True, own=own)
            if res is not None and (best is None or cycle(res[1]) < best[0]):
                best = (cycle(res[1]), res[1])
    return best


def min_max_memory(mem: np.ndarray, k: int) -> tuple[float, list[tuple[int, int]]]:
    """The smallest per-die capacity that lets `k` dies hold the blocks contiguously, and that split."""
    res = _dp(np.repeat(np.asarray(mem, dtype=float)[:, None], k, axis=1), np.zeros(k), np.zeros(len(mem)),
              np.full(k, INF), "max")
    assert res is not None and len(mem) >= k
    return res


def min_dies(mem: np.ndarray, cap: float) -> int | None:
    """Fewest dies of capacity `cap` that hold the blocks as contiguous ranges (greedy is exact)."""
    n, used = 1, 0.0
    for b in mem:
        if b > cap:
            return None
        if used + b > cap:
            n, used = n + 1, 0.0
        used += b
    return n
