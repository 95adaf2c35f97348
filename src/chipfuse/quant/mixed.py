"""Mixed precision: one format per layer, the least total KL divergence within a byte budget.

Per-layer sensitivities (KL against FP32 with only that layer quantized) are treated as
additive; the choice is a multiple-choice knapsack. HiGHS (through `scipy.optimize.milp`, on a
scaled problem) proposes an assignment; an exact search with byte counts as Python integers then
proves it optimal or finds a better one: a dynamic programme over the layers keeping the Pareto set
of (bytes, KL) partial choices, pruned by the knapsack's LP relaxation (layers of one shape share
byte counts, so the set stays small), or, if that set grows too big, a branch and bound with the
same bound. Floating-point tolerances in the MILP solver can neither exceed the budget nor
stop short of the optimum (KL values near 1e-8 beside byte counts near 1e8 did both). The measured
KL of the resulting mixed model is reported beside the estimate, since additivity is an approximation.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from fractions import Fraction

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import ChipfuseError

MILP_MIN_CHOICES = 4096  # below this many assignments, the exact search alone is quicker than HiGHS
STATE_LIMIT = 50_000  # Pareto states per layer in the dynamic programme before branch and bound takes over
WORK_LIMIT = 20_000_000  # branch-and-bound bound-evaluation steps (a few seconds) before it settles for its best
REL_TIE = 1e-10  # objectives this close (relative) count as equal when pruning: far below KL noise


def _exact_bytes(nbytes: np.ndarray, budget_bytes: float) -> tuple[list[list[int]], int]:
    """Byte counts and budget as integers on a common scale (floats are binary fractions, so this is
    exact): comparing sums of them cannot round."""
    fracs = [[Fraction(float(b)) for b in row] for row in nbytes]
    scale = math.lcm(*(f.denominator for row in fracs for f in row))
    ints = [[int(f * scale) for f in row] for row in fracs]
    return ints, math.floor(Fraction(budget_bytes) * scale)


def _check_inputs(kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float) -> None:
    """Shapes agree, every number is finite and byte counts are not negative."""
    if kl.ndim != 2 or kl.shape != nbytes.shape or 0 in kl.shape:
        raise ChipfuseError(f"mixed precision needs [layers, formats] tables of one shape; got KL {kl.shape} "
                            f"and bytes {nbytes.shape}")
    if not (np.isfinite(kl).all() and np.isfinite(nbytes).all()) or (nbytes < 0).any():
        raise ChipfuseError("mixed precision: per-layer KL and byte counts must be finite (bytes not negative); "
                            "re-run the sensitivity measurement")
    if math.isnan(budget_bytes):
        raise ChipfuseError("mixed precision: the byte budget is NaN; give a number of bytes")


def _too_small(nbytes: np.ndarray, budget_bytes: float) -> ChipfuseError:
    smallest = float(nbytes.min(axis=1).sum())
    return ChipfuseError(f"no per-layer assignment fits {budget_bytes:,.0f} bytes of layer weights; the smallest "
                         f"candidates need {smallest:,.0f} (add a smaller format or raise --budget-bytes)")


def _options(kl: np.ndarray, sizes: list[list[int]]) -> list[list[tuple[int, float, int]]]:
    """Per layer, the formats worth considering as (bytes, kl, index): none is beaten by another with no
    more bytes and no more KL. Sorted by bytes ascending (so KL descending)."""
    out = []
    for i, row in enumerate(sizes):
        cands = sorted((b, float(kl[i, j]), j) for j, b in enumerate(row))
        kept: list[tuple[int, float, int]] = []
        for b, k, j in cands:
            if not kept or k < kept[-1][1]:
                kept.append((b, k, j))
        out.append(kept)
    return out


def _hull_steps(options: list[list[tuple[int, float, int]]]) -> list[tuple[float, int, float, int]]:
    """The LP relaxation's upgrade steps, best first: per layer, moves along the lower convex hull of
    (bytes, kl) as (KL saved per byte, extra bytes, KL saved, layer)."""
    steps = []
    for i, opts in enumerate(options):
        hull: list[tuple[int, float, int]] = []
        for p in opts:
            while len(hull) >= 2 and _not_convex(hull[-2], hull[-1], p):
                hull.pop()
            hull.append(p)
        for (b0, k0, _), (b1, k1, _) in itertools.pairwise(hull):
            steps.append(((k0 - k1) / (b1 - b0), b1 - b0, k0 - k1, i))
    steps.sort(key=lambda s: -s[0])
    return steps


def _not_convex(a, b, c) -> bool:
    """b lies on or above the segment a-c (in bytes, kl), so it is not on the lower hull."""
    return (b[1] - a[1]) * (c[0] - a[0]) >= (c[1] - a[1]) * (b[0] - a[0])


class _Search:
    """Exact branch and bound over layers: each node fixes the next layer's format."""

    def __init__(self, options, budget: int):
        self.options, self.budget, self.n = options, budget, len(options)
        self.steps = _hull_steps(options)
        self.min_bytes = [0] * (self.n + 1)  # bytes of the smallest choice for layers i..n-1
        self.max_kl = [0.0] * (self.n + 1)  # their KL
        for i in range(self.n - 1, -1, -1):
            self.min_bytes[i] = self.min_bytes[i + 1] + options[i][0][0]
            self.max_kl[i] = self.max_kl[i + 1] + options[i][0][1]
        self.by_kl = [sorted(opts, key=lambda o: -o[1]) for opts in options]  # pushed last = tried first
        self.best, self.best_kl, self.cutoff, self.work = None, math.inf, math.inf, 0

    def suffix_bound(self, layer: int):
        """bound(spare): least KL of layers layer..n-1 in the LP relaxation with `spare` bytes beyond their
        smallest choice, from the steps' running sums (a bisection per call)."""
        cum_bytes, cum_saved, rates = [0], [0.0], []
        for rate, extra, saved, i in self.steps:
            if i >= layer:
                cum_bytes.append(cum_bytes[-1] + extra)
                cum_saved.append(cum_saved[-1] + saved)
                rates.append(rate)
        base = self.max_kl[layer]

        def bound(spare: int) -> float:
            k = bisect_right(cum_bytes, spare) - 1  # steps taken whole
            partial = rates[k] * (spare - cum_bytes[k]) if k < len(rates) else 0.0
            return base - cum_saved[k] - partial
        return bound

    def frontier(self) -> bool:
        """Exact dynamic programme: after each layer, the Pareto set of (bytes, KL) partial choices that the
        LP bound cannot rule out. False if the set outgrew STATE_LIMIT (the incumbent is still valid)."""
        states = [(0, 0.0, None)]
        for layer in range(self.n):
            room, rest = self.budget - self.min_bytes[layer + 1], self.max_kl[layer + 1]
            grown = sorted(((b + ob, k + ok, (j, p)) for b, k, p in states for ob, ok, j in self.options[layer]
                            if b + ob <= room), key=lambda s: (s[0], s[1]))
            bound, least, states = self.suffix_bound(layer + 1), math.inf, []
            for b, k, p in grown:
                if k >= least:  # as many bytes or more, no less KL
                    continue
                least = k
                if k + rest < self.cutoff:  # finishing with the smallest formats fits
                    self.offer(_unwind(p, layer + 1) + [o[0][2] for o in self.options[layer + 1:]], k + rest)
                if k + bound(self.budget - b - self.min_bytes[layer + 1]) < self.cutoff:
                    states.append((b, k, p))
            if len(states) > STATE_LIMIT:
                return False
        return True

    def bound(self, layer: int, spare: int) -> float:
        """Least KL of layers layer..n-1 in the LP relaxation with `spare` bytes beyond their smallest choice."""
        kl = self.max_kl[layer]
        for rate, extra, saved, i in self.steps:
            self.work += 1
            if i < layer:
                continue
            if extra <= spare:
                kl -= saved
                spare -= extra
            else:
                return kl - rate * spare
        return kl

    def offer(self, choice: list[int], kl_sum: float) -> None:
        """Take a complete feasible assignment as the incumbent if it is better."""
        if kl_sum < self.best_kl:
            self.best, self.best_kl = list(choice), kl_sum
            self.cutoff = kl_sum - REL_TIE * abs(kl_sum)

    def run(self) -> bool:
        """Branch and bound, depth-first, lowest-KL option first; False if WORK_LIMIT stopped it early."""
        stack = [(0, 0, 0.0, None)]
        while stack:
            layer, used, kl_sum, path = stack.pop()
            if self.work > WORK_LIMIT:
                return False
            if layer == self.n:
                self.offer(_unwind(path, self.n), kl_sum)
                continue
            if kl_sum + self.bound(layer, self.budget - used - self.min_bytes[layer]) >= self.cutoff:
                continue
            room = self.budget - used - self.min_bytes[layer + 1]
            for b, k, j in self.by_kl[layer]:
                if b <= room:
                    stack.append((layer + 1, used + b, kl_sum + k, (j, path)))
        return True


def _unwind(path, n: int) -> list[int]:
    """The format indices along a search path (a linked list, last layer first)."""
    out = [0] * n
    for i in range(n - 1, -1, -1):
        out[i], path = path
    return out


def _milp_guess(kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float) -> list[int] | None:
    """HiGHS's assignment on the scaled problem (KL over its largest value, bytes over the budget), or None."""
    n, m = kl.shape
    scale = float(np.abs(kl).max()) or 1.0
    rows = np.zeros((n, n * m))
    for i in range(n):
        rows[i, i * m:(i + 1) * m] = 1
    per_budget = nbytes.ravel()[None, :] / max(budget_bytes, 1.0)
    cons = [LinearConstraint(rows, 1, 1), LinearConstraint(per_budget, -np.inf, 1.0)]
    res = milp(kl.ravel() / scale, constraints=cons, integrality=np.ones(n * m), bounds=Bounds(0, 1),
               options={"mip_rel_gap": 0.0, "time_limit": 30.0})
    if res.x is None:
        return None
    x = res.x.reshape(n, m)
    return [int(np.argmax(x[i])) for i in range(n)]


def assign(kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float) -> list[int]:
    """Index of the chosen format for each layer, the least total KL within budget_bytes (exactly).
    kl, nbytes: [layers, formats]."""
    kl, nbytes = np.asarray(kl, dtype=float), np.asarray(nbytes, dtype=float)
    _check_inputs(kl, nbytes, budget_bytes)
    n, m = kl.shape
    if math.isinf(budget_bytes):
        if budget_bytes < 0:
            raise _too_small(nbytes, budget_bytes)
        return [int(np.argmin(kl[i])) for i in range(n)]
    sizes, budget = _exact_bytes(nbytes, budget_bytes)
    if sum(min(row) for row in sizes) > budget:
        raise _too_small(nbytes, budget_bytes)
    search = _Search(_options(kl, sizes), budget)
    if m ** n > MILP_MIN_CHOICES:
        _offer_milp(search, kl, nbytes, budget_bytes, sizes)
    if not search.frontier():
        search.run()  # if this stops early too, the best found so far (at least HiGHS's) stands
    return search.best


def _offer_milp(search: _Search, kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float, sizes) -> None:
    """Give the search HiGHS's assignment as its incumbent when it is within budget in exact bytes."""
    guess = _milp_guess(kl, nbytes, budget_bytes)
    if guess is not None and sum(sizes[i][j] for i, j in enumerate(guess)) <= search.budget:
        search.offer(guess, float(sum(kl[i, j] for i, j in enumerate(guess))))


def by_recipe(per_format: dict[str, dict], recipe, num_layers: int) -> dict:
    """From tensors made per format ({format name: {tensor name: value}}), each layer's in the format
    the recipe gives that layer (layers whose format has none are left out)."""
    return {k: v for i in range(num_layers) for k, v in per_format.get(recipe.for_block(i + 1).name, {}).items()
            if k.startswith(f"layers.{i}.")}


def budget_for_rate(cfg, system, cands: list, target_tokens_per_s: float, context: int = 2048) -> tuple[float, str]:
    """Whole-model weight bytes that `system` can stream at `target_tokens_per_s` (batch-1 decode),
    and a sentence saying how it was found.

    The planner's prediction for the smallest and the largest candidate, each on every layer, gives
    two (bytes, seconds per token) points; decode time is linear in the bytes read (the roofline is
    memory-bound there), so the budget lies on the line through them, capped at the largest."""
    from ..compile.compiler import compile_plan
    from . import accuracy as acc
    from .formats import Recipe

    head = Recipe.of(cands[-1]).head
    pts = []
    for f in cands:
        r = Recipe(f, head)
        p = compile_plan(cfg, system, r, context=context, prompt_tokens=min(512, context))
        pts.append((float(acc.weight_bytes(cfg, r)), 1.0 / p.prediction.decode_tokens_per_s, f.name))
    (b0, t0, n0), (b1, t1, n1) = min(pts), max(pts)  # the smallest and the largest candidate
    rate = f"{system.name} decodes {1 / t0:.1f} tokens/s with every layer at {n0}, {1 / t1:.1f} at {n1}"
    target_s = 1.0 / target_tokens_per_s
    if t0 > target_s:
        raise ChipfuseError(f"{target_tokens_per_s:g} tokens/s is out of reach: {rate} (predicted); lower the "
                            "target, add a smaller candidate format or choose a faster system")
    if t1 <= target_s or t1 == t0:
        return b1, f"{rate}: every candidate meets {target_tokens_per_s:g} tokens/s, so the budget is {n1}'s size"
    budget = b0 + (target_s - t0) * (b1 - b0) / (t1 - t0)
    return budget, f"{rate} (predicted); {target_tokens_per_s:g} tokens/s allows {budget / 2**20:.1f} MiB of weights"


def search(cfg, weights: dict, scorer, cands: list, budget_bytes: float, step=lambda desc: None,
           replace: dict[str, dict] | None = None, select=None) -> dict:
    """Measure each layer's KL at each candidate format (one layer quantized at a time) with the
    `select` scorer (2 of its windows; pass one over other text than the evaluation's, so the choice
    does not see the text it is judged on), choose per-layer formats by `assign`, and measure the
    mixed model with `scorer`. `step(description)` marks progress.
    `replace` maps a format name to weights a calibration method already quantized in it (GPTQ);
    formats not in it are rounded to nearest."""
    from ..ir.graph import block_weight_bytes, tied_shared_bytes
    from ..ir.llm import build_llm_graph
    from . import accuracy as acc
    from .formats import Recipe

    g = build_llm_graph(cfg)
    base = Recipe.of(cands[-1])
    kl = np.zeros((cfg.num_layers, len(cands)))
    nbytes = np.zeros_like(kl)
    for j, f in enumerate(cands):
        r = Recipe(f, base.head)
        per_block = block_weight_bytes(g, r)
        for i in range(cfg.num_layers):
            q = acc.quantized_weights(weights, cfg, r, layers={i}, replace=(replace or {}).get(f.name))
            kl[i, j] = (select or scorer).score(q, windows_used=2)["kl"]
            nbytes[i, j] = per_block[i + 1]
            step(f"sensitivity: layer {i} at {f.name}")
    total = block_weight_bytes(g, base)
    fixed = float(total.sum() - total[1:-1].sum() - tied_shared_bytes(g, base, range(g.n_blocks)))
    choice = assign(kl, nbytes, budget_bytes - fixed)
    recipe = Recipe(base.default, base.head, tuple((i + 1, cands[c].name) for i, c in enumerate(choice)
                                                    if cands[c] != base.default))
    measured = scorer.score(acc.quantized_weights(weights, cfg, recipe,
                                                  replace=by_recipe(replace or {}, recipe, cfg.num_layers)))
    step("measured the mixed model")
    used = fixed + sum(nbytes[i, c] for i, c in enumerate(choice))
    per_layer = [cands[c].name for c in choice]
    estimate = float(sum(kl[i, c] for i, c in enumerate(choice)))
    return {"recipe": recipe, "per_layer": per_layer, "bytes": used, "budget": budget_bytes,
            "estimate_kl": estimate, "measured": measured,
            "json": {"per_layer": per_layer, "bytes": used, "budget_bytes": budget_bytes,
                     "estimated_kl_sum": estimate, **measured,
                     "sensitivity_kl": kl.tolist(), "candidates": [c.name for c in cands]}}
