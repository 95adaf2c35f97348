"""Place several models over the dies for the best throughput: which model where, replicas sharing a stream in
proportion to their speed, models split over dies, within memory, compute and link limits.

The problem is numbers only (this module knows no model): each model has a demand (items per second:
frames or tokens) and a priority; each *option* is one way to run a model (whole on one die, or cut
into pieces over several), with the seconds per item it takes on each die it uses, the bytes it
holds on each, the seconds per item it takes on each directed link, and its unloaded latency.
Variables: x_o (the option is deployed, binary) and r_o (items per second through it). Constraints:
each die's deployed options fit its memory; each die's time shares sum to at most 1; each link
direction's time shares too; model m is served sum_o r_o >= lambda * demand_m. The objective is the
largest lambda, the share of every demand met at once (lambda >= 1: every demand met, with headroom
lambda - 1). Then, the deployment fixed, a linear program gives the spare capacity to models by
priority, keeping every model at lambda. Memory and time rows are scaled to 1 so that HiGHS sees
numbers of one size (byte counts next to shares were issue 14's mixed-precision bug).

Exact (a MILP, HiGHS via scipy.optimize.milp) within a time limit; beyond it the incumbent is
reported with HiGHS's bound; with no incumbent, a greedy heuristic's answer with the LP
relaxation's bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

EXACT_TIME_LIMIT_S = 10.0
HEURISTIC_FIRST = 60  # ways to run beyond which the heuristic answers first (it takes two LPs)


@dataclass(frozen=True)
class Option:
    """One way to run model `model`: on `dies` (one die, or pieces in order), per item of its stream."""

    model: int
    dies: tuple[str, ...]
    die_s: dict[str, float]  # seconds per item on each die used
    mem_bytes: dict[str, float]  # bytes held on each die used
    link_s: dict[tuple[str, str], float] = field(default_factory=dict)  # seconds per item per directed link
    latency_s: float = 0.0
    label: str = ""  # how, in words: "whole on die0", "nodes 0-61 on die0, 62-327 on die1"
    detail: dict = field(default_factory=dict, compare=False)  # what the plan needs to run it (cuts, precision)
    energy_j: float = 0.0  # dynamic joules per item (compute, DRAM, links), for the power report


@dataclass(frozen=True)
class Problem:
    models: tuple[str, ...]
    demand: tuple[float, ...]  # items per second each model is asked for (> 0)
    priority: tuple[float, ...]
    dies: tuple[str, ...]
    memory_bytes: tuple[float, ...]
    options: tuple[Option, ...]
    units: tuple[str, ...] = ()  # "frames", "tokens": for the report

    @property
    def links(self) -> list[tuple[str, str]]:
        return sorted({k for o in self.options for k in o.link_s})


@dataclass(frozen=True)
class Solution:
    lam: float  # the share of every demand met at once
    x: tuple[bool, ...]  # per option: deployed
    rate: tuple[float, ...]  # per option: items per second through it
    method: str  # "milp" (optimal), "milp-time-limit" (best found in time), "heuristic" (LP-guided), "infeasible"
    bound: float  # an upper bound on lam (== lam when optimal)
    seconds: float
    served: tuple[float, ...]  # per model: items per second
    die_busy: dict[str, float]  # share of each die's time
    die_mem: dict[str, float]  # bytes held on each die
    link_busy: dict[tuple[str, str], float]

    @property
    def optimal(self) -> bool:
        return self.method == "milp"


def _matrices(p: Problem, focus: set[int] | None = None):
    """The rows shared by the MILP, the relaxation and the LPs: variables [x (n), r (n), lam]. With `focus`, lam
    is the share of the models in `focus` alone and every other model must be served its whole demand."""
    n = len(p.options)
    links = p.links
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []

    def row(a: np.ndarray, low: float, high: float) -> None:
        rows.append(a)
        lo.append(low)
        hi.append(high)

    for die, mem in zip(p.dies, p.memory_bytes):
        a = np.zeros(2 * n + 1)
        for i, o in enumerate(p.options):
            a[i] = o.mem_bytes.get(die, 0.0) / mem
        row(a, -np.inf, 1.0)
        b = np.zeros(2 * n + 1)
        for i, o in enumerate(p.options):
            b[n + i] = o.die_s.get(die, 0.0)
        row(b, -np.inf, 1.0)
    for lk in links:
        c = np.zeros(2 * n + 1)
        for i, o in enumerate(p.options):
            c[n + i] = o.link_s.get(lk, 0.0)
        row(c, -np.inf, 1.0)
    for m, d in enumerate(p.demand):
        s = np.zeros(2 * n + 1)  # served / demand - lam >= 0, in shares of the demand
        for i, o in enumerate(p.options):
            if o.model == m:
                s[n + i] = 1.0 / d
        if focus is None or m in focus:
            s[-1] = -1.0
            row(s, 0.0, np.inf)
        else:
            row(s, 1.0, np.inf)
    for i in range(n):  # r_i <= cap_i * x_i, in shares of the option's own cap
        cap = rate_cap(p, i)
        e = np.zeros(2 * n + 1)
        e[n + i], e[i] = 1.0 / cap, -1.0
        row(e, -np.inf, 0.0)
    return np.array(rows), np.array(lo), np.array(hi)


def rate_cap(p: Problem, i: int) -> float:
    """The most items per second option i could take alone: its slowest die or link."""
    o = p.options[i]
    worst = max(list(o.die_s.values()) + list(o.link_s.values()) + [1e-12])
    return 1.0 / worst


def _lam_cap(p: Problem) -> float:
    """lam can never exceed this: every option of the least-served model at its cap."""
    caps = [sum(rate_cap(p, i) for i, o in enumerate(p.options) if o.model == m) / d
            for m, d in enumerate(p.demand)]
    return max(min(caps), 0.0)


def _usage(p: Problem, x, r, lam: float, method: str, bound: float, t0: float) -> Solution:
    # an option not deployed carries nothing: the LP's rate there is 0 up to its tolerance (1e-12 is not a rate)
    r = [max(0.0, float(ri)) if xi else 0.0 for xi, ri in zip(x, r)]
    served = [0.0] * len(p.models)
    busy = {d: 0.0 for d in p.dies}
    mem = {d: 0.0 for d in p.dies}
    links = {lk: 0.0 for lk in p.links}
    for o, xi, ri in zip(p.options, x, r):
        served[o.model] += ri
        for d, s in o.die_s.items():
            busy[d] += ri * s
        if xi:
            for d, b in o.mem_bytes.items():
                mem[d] += b
        for lk, s in o.link_s.items():
            links[lk] += ri * s
    achieved = min((sv / d for sv, d in zip(served, p.demand)), default=lam)
    if achieved < lam * (1 - 1e-6):  # the solver's lam was noise above what any rates give (e.g. 1e-14 for 0)
        lam = achieved
    return Solution(lam, tuple(bool(v) for v in x), tuple(float(v) for v in r), method, bound,
                    time.perf_counter() - t0, tuple(served), busy, mem, links)


def spread(p: Problem, x: tuple[bool, ...], lam: float) -> np.ndarray | None:
    """Rates for a fixed deployment that keep every model at `lam` of its demand and give the rest of the
    capacity by priority (an LP); None if `lam` cannot be kept."""
    n = len(p.options)
    A, lo, hi = _matrices(p)
    keep = [j for j in range(A.shape[0]) if not np.any(A[j, :n]) or np.any(A[j, n:2 * n])]  # drop memory rows
    A, lo, hi = A[keep], lo[keep], hi[keep]
    c = np.zeros(2 * n + 1)
    for i, o in enumerate(p.options):
        c[n + i] = -p.priority[o.model] / p.demand[o.model]
    bounds = [(float(v), float(v)) for v in x] + [(0.0, None)] * n + [(lam * (1 - 1e-9), lam * (1 - 1e-9))]
    A_ub = np.vstack([A[np.isfinite(hi)], -A[np.isfinite(lo)]])
    b_ub = np.concatenate([hi[np.isfinite(hi)], -lo[np.isfinite(lo)]])
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    return res.x[n:2 * n] if res.status == 0 and res.x is not None else None


def max_lambda_lp(p: Problem, x: tuple[bool, ...] | None = None) -> tuple[float, np.ndarray] | None:
    """The largest lam with deployment x fixed (or relaxed to [0, 1] when None: an upper bound), and rates."""
    n = len(p.options)
    A, lo, hi = _matrices(p)
    c = np.zeros(2 * n + 1)
    c[-1] = -1.0
    xb = [(float(v), float(v)) for v in x] if x is not None else [(0.0, 1.0)] * n
    bounds = xb + [(0.0, None)] * n + [(0.0, _lam_cap(p))]
    A_ub = np.vstack([A[np.isfinite(hi)], -A[np.isfinite(lo)]])
    b_ub = np.concatenate([hi[np.isfinite(hi)], -lo[np.isfinite(lo)]])
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0 or res.x is None:
        return None
    return float(res.x[-1]), res.x[n:2 * n]


def solve_focus(p: Problem, group: set[int], time_limit_s: float = EXACT_TIME_LIMIT_S) -> float | None:
    """The largest share of the demands of the models in `group` (a model and those it feeds) that can be served
    while every other model gets all of its own; None when the others cannot all be met even so."""
    n = len(p.options)
    A, lo, hi = _matrices(p, focus=group)
    c = np.zeros(2 * n + 1)
    c[-1] = -1.0
    cap = min(sum(rate_cap(p, i) for i, o in enumerate(p.options) if o.model == m) / p.demand[m] for m in group)
    ub = np.concatenate([np.ones(n), [rate_cap(p, i) for i in range(n)], [cap]])
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.concatenate([np.ones(n), np.zeros(n + 1)]),
               bounds=Bounds(np.zeros(2 * n + 1), ub), options={"time_limit": time_limit_s})
    return float(res.x[-1]) if res.x is not None else None


def solve(p: Problem, time_limit_s: float = EXACT_TIME_LIMIT_S) -> Solution:
    """The deployment with the largest lam (see the module's docstring), and its rates by priority.

    The MILP proves its answer optimal when it can within `time_limit_s`. Problems of more than
    `HEURISTIC_FIRST` ways to run first get the LP-guided heuristic's answer (two LPs), and the MILP
    then has the rest of the time to beat it or prove it; the better is kept, and the bound is the
    MILP's own or the LP relaxation's."""
    t0 = time.perf_counter()
    n = len(p.options)
    if n == 0:
        return _usage(p, (), (), 0.0, "infeasible", 0.0, t0)
    best_x: tuple[bool, ...] = (False,) * n
    best_lam, method = 0.0, "infeasible"
    bound = _lam_cap(p)
    if n > HEURISTIC_FIRST:
        best_x, best_lam = greedy(p)
        method = "heuristic" if any(best_x) else "infeasible"
        relaxed = max_lambda_lp(p)
        bound = relaxed[0] if relaxed else best_lam
    A, lo, hi = _matrices(p)
    c = np.zeros(2 * n + 1)
    c[-1] = -1.0
    integrality = np.concatenate([np.ones(n), np.zeros(n + 1)])
    ub = np.concatenate([np.ones(n), [rate_cap(p, i) for i in range(n)], [_lam_cap(p)]])
    left = max(0.05, 0.9 * time_limit_s - (time.perf_counter() - t0))  # the rest: the polish and the rates
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
               bounds=Bounds(np.zeros(2 * n + 1), ub), options={"time_limit": left, "mip_rel_gap": 1e-9})
    if res.x is not None:
        x = tuple(bool(round(v)) for v in res.x[:n])
        fixed = max_lambda_lp(p, x)  # polish: the LP with x fixed (the MILP's lam is within its tolerances)
        lam = max(float(res.x[-1]), fixed[0] if fixed else 0.0)
        exact = res.status == 0
        dual = getattr(res, "mip_dual_bound", None)
        if exact:
            bound = lam
        elif dual is not None and np.isfinite(dual):
            bound = min(bound, -float(dual))
        if exact or lam > best_lam:
            best_x, best_lam = x, lam
            method = "milp" if exact else "milp-time-limit"
    elif n <= HEURISTIC_FIRST:  # the MILP found nothing in time: the heuristic's answer
        best_x, best_lam = greedy(p)
        method = "heuristic" if any(best_x) else "infeasible"
        relaxed = max_lambda_lp(p)
        bound = relaxed[0] if relaxed else best_lam
    x, lam = best_x, best_lam
    bound = max(bound, lam)
    rates = spread(p, x, lam) if lam > 0 else None
    if rates is None:
        got = max_lambda_lp(p, x)
        rates = got[1] if got else np.zeros(n)
    return _usage(p, x, rates, lam, method, bound, t0)


def greedy(p: Problem) -> tuple[tuple[bool, ...], float]:
    """A quick deployment guided by the LP relaxation: each model first gets the way the relaxation uses most
    that still fits (the largest models first, as in first-fit-decreasing packing), then the other ways in order of the die time
    the relaxation gives them while they fit; then one LP for the rates. Two LPs in all, whatever the size."""
    n = len(p.options)
    relaxed = _relaxed_rates(p)
    work = [relaxed[i] * max(p.options[i].die_s.values(), default=0.0) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-work[i], -rate_cap(p, i)))
    x = [False] * n
    free = dict(zip(p.dies, p.memory_bytes))

    def fits(i: int) -> bool:
        return not x[i] and all(p.options[i].mem_bytes.get(d, 0.0) <= free[d] for d in p.options[i].dies)

    def take(i: int) -> None:
        x[i] = True
        for d, b in p.options[i].mem_bytes.items():
            free[d] -= b

    def size(m: int) -> float:
        return min((max(o.mem_bytes.values(), default=0.0) for o in p.options if o.model == m), default=0.0)

    # every model one way first, the largest first (first-fit decreasing): the relaxation's favourite that fits
    for m in sorted(range(len(p.models)), key=lambda m: -size(m)):
        mine = [i for i, o in enumerate(p.options) if o.model == m and fits(i)]
        if mine:
            take(max(mine, key=lambda i: (relaxed[i] > 0, relaxed[i], rate_cap(p, i))))
    for i in order:
        if work[i] > 0 and fits(i):
            take(i)
    for i in order:  # what still fits can only help
        if fits(i):
            take(i)
    got = max_lambda_lp(p, tuple(x))
    return tuple(x), (got[0] if got else 0.0)


def _relaxed_rates(p: Problem) -> np.ndarray:
    got = max_lambda_lp(p)
    return got[1] if got else np.zeros(len(p.options))


__all__ = ["Option", "Problem", "Solution", "solve", "solve_focus", "greedy", "max_lambda_lp", "spread", "rate_cap"]
