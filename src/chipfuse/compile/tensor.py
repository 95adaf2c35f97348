"""Tensor-parallel shards: how much of each layer every die of a group takes, and which groupings to try.

A group's dies each take whole KV-head groups (with their query heads), a run of MLP columns and
a run of LM-head rows. Shard sizes follow each die's speed: the integer split that makes the
slowest die of each phase as fast as possible (exact; `minmax_parts`). Groupings are contiguous runs
of the route-ordered dies; on a few dies every grouping is tried, on many the structured ones
(every die alone, one group of all, each package a group, equal groups of 2, 4, 8...).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import replace
from itertools import combinations

import numpy as np

from ..hw.spec import System
from ..ir.graph import Graph, Workload, op_costs
from ..quant.formats import Recipe
from ..sim.perf import DieRates, die_rates, op_times, roofline_s

EXHAUSTIVE_DIES = 6  # up to this many dies every grouping (2^(k-1) of them) is a candidate
QUANT_GRANULE = 128  # MLP columns are split in runs of whole INT4 groups (the largest group size)


def minmax_parts(whole: int, unit_s: list[float], granule: int = 1) -> list[int]:
    """Non-negative parts summing to `whole`, each a multiple of `granule` (which divides `whole`), that minimise
    max_i(unit_s[i] * part_i): exact, by handing out runs greedily from a lower bound no optimum goes below."""
    k = len(unit_s)
    runs = whole // granule
    cost = [max(u, 1e-30) * granule for u in unit_s]
    lower = runs / sum(1.0 / c for c in cost)
    x = [min(runs, int(math.floor(lower / c))) for c in cost]
    while sum(x) > runs:  # guard against rounding up past `runs`
        i = max(range(k), key=lambda j: (cost[j] * x[j], j))
        x[i] -= 1
    heap = [(cost[i] * (x[i] + 1), i) for i in range(k)]
    heapq.heapify(heap)
    for _ in range(runs - sum(x)):
        _, i = heapq.heappop(heap)
        x[i] += 1
        heapq.heappush(heap, (cost[i] * (x[i] + 1), i))
    return [xi * granule for xi in x]


def granule(width: int) -> int:
    """The run MLP columns are split in: whole INT4 groups where the width allows, else single columns."""
    return next((g for g in (QUANT_GRANULE, 64, 32) if width % g == 0 and width >= g), 1)


def axis_unit_s(graph: Graph, system: System, die: str, recipe: Recipe, w: Workload,
                kv_element_bytes: float) -> dict[str, float]:
    """Seconds one unit of each shard axis costs a die (one KV group, one MLP column, one vocab row) in one step
    of `w`, summed over a layer (the head for vocab): what `minmax_parts` balances."""
    r = die_rates(system, die, recipe.default)
    key = ("axis_unit_s", replace(r, die=""), recipe, w, kv_element_bytes)
    if key not in graph.memo:
        graph.memo[key] = _axis_unit_s(graph, r, recipe, w, kv_element_bytes)
    return graph.memo[key]


def _axis_unit_s(graph: Graph, r: DieRates, recipe: Recipe, w: Workload, kv_element_bytes: float) -> dict[str, float]:
    c = op_costs(graph, recipe, w, r.act_element_bytes, kv_element_bytes)
    comp, _ = op_times(c, r)
    t = roofline_s(comp, c.read_bytes, r.bytes_per_s)
    widths = graph.shard_widths
    out = {}
    first_layer = next(b.index for b in graph.blocks if b.kind == "layer")
    for axis, width in widths.items():
        sel = [i for i, op in enumerate(graph.ops) if op.shard_axis == axis
               and (axis == "vocab" or op.block == first_layer)]
        out[axis] = float(t[sel].sum()) / width if sel else 0.0
    return out


def group_parts(graph: Graph, system: System, dies: list[str], recipes: list[Recipe], w: Workload,
                kv_element_bytes: float) -> list[dict[str, int]]:
    """Each die's part of every shard axis, sized to its speed (a die alone takes everything)."""
    widths = graph.shard_widths
    if len(dies) == 1:
        return [dict(widths)]
    units = [axis_unit_s(graph, system, d, r, w, kv_element_bytes) for d, r in zip(dies, recipes)]
    parts: list[dict[str, int]] = [{} for _ in dies]
    for axis, width in widths.items():
        g = granule(width) if axis == "mlp_columns" else 1
        for i, p in enumerate(minmax_parts(width, [u[axis] for u in units], g)):
            parts[i][axis] = p
    return parts


def spans(parts: list[dict[str, int]], axis: str) -> list[tuple[int, int]]:
    """[first, count] of each die's part along an axis, in group order."""
    out, first = [], 0
    for p in parts:
        out.append((first, p[axis]))
        first += p[axis]
    return out


def groupings(order: list[str], system: System, exhaustive: bool | None = None) -> list[list[list[str]]]:
    """Candidate groupings of the route-ordered dies (contiguous runs), each a list of groups.

    Every prefix of the order is a candidate die set (a die that slows things down may be left out)."""
    k = len(order)
    exhaustive = k <= EXHAUSTIVE_DIES if exhaustive is None else exhaustive
    seen: set[tuple[tuple[str, ...], ...]] = set()
    out: list[list[list[str]]] = []

    def add(groups: list[list[str]]) -> None:
        key = tuple(tuple(g) for g in groups)
        if key not in seen:
            seen.add(key)
            out.append(groups)

    for m in range(1, k + 1):
        dies = order[:m]
        if exhaustive:
            for cuts in range(m):
                for at in combinations(range(1, m), cuts):
                    bounds = [0, *at, m]
                    add([dies[a:b] for a, b in zip(bounds, bounds[1:])])
            continue
        add([[d] for d in dies])
        add([dies])
        pkg = {d: p.name for p in system.packages for d in p.dies}
        groups: list[list[str]] = []
        for d in dies:
            if groups and pkg.get(d) is not None and pkg.get(d) == pkg.get(groups[-1][-1]):
                groups[-1].append(d)
            else:
                groups.append([d])
        add(groups)
        for size in (2, 4, 8):
            if m % size == 0 and m > size:
                add([dies[i:i + size] for i in range(0, m, size)])
    return out


def mode_of(groups: list[list[str]]) -> str:
    """pipeline (every die alone), tensor (one group) or hybrid (groups in a pipeline)."""
    if all(len(g) == 1 for g in groups):
        return "pipeline"
    return "tensor" if len(groups) == 1 else "hybrid"


def normalised_memory(weights: np.ndarray, kv: np.ndarray, head_ws: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Per-block memory of a group as the largest share of any die's capacity it takes (the group fits a range
    when the sum over the range is at most 1)."""
    use = weights + kv
    use[:, -1] += head_ws
    return (use / caps[:, None]).max(axis=0)
