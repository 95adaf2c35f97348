"""Cost of a tensor-parallel group: dies that each hold a shard of every layer of one block range.

Each die runs its sharded ops (ir.Graph.sharded) on the one roofline; a layer's attention and
MLP phases each end in an all-reduce of the hidden state over the group, so a phase lasts as long
as its slowest die. The group's dies compute at once: dies emulated on one host's CPU share its cores
(perf.core_sharing). The embedding is held whole by every die of the group (each looks up its own
copy of the rows), the LM head is split by vocabulary and its logits are gathered by the host. The
compiler sizes groups with these figures and the predictor prices a plan's shard stages with the
same function, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..hw.spec import System
from ..ir.graph import Graph, Workload, block_weight_bytes, kv_cache_bytes, op_costs
from ..quant.formats import Recipe
from .collectives import allreduce
from .perf import DieRates, core_sharing, die_rates, is_prefill, op_times, roofline_s


@dataclass(frozen=True)
class GroupStep:
    """One step of a group over all blocks of the model (slice by block range to use)."""

    block_s: np.ndarray  # per block: slowest die of each phase + the phases' all-reduces + overheads
    collective_s: np.ndarray  # per block: the all-reduces' part of block_s
    die_block_s: np.ndarray  # (dies, blocks): each die's own work, no waiting
    die_compute_s: np.ndarray  # (dies, blocks)
    die_memory_s: np.ndarray  # (dies, blocks)
    die_read_bytes: np.ndarray  # (dies, blocks)
    algorithm: str  # the all-reduce's algorithm on this group's routes ("ring", "direct" or "none")
    allreduce_s: float  # one all-reduce of the step's hidden states


def die_step(graph: Graph, rates: DieRates, part: dict[str, int], recipe: Recipe, w: Workload,
             kv_element_bytes: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One die's shard for one step: (seconds per block and phase [blocks, 2], compute s, memory s, read bytes
    per block), its per-block overhead in phase 0."""
    n_b = graph.n_blocks
    g = graph.sharded(part)
    c = op_costs(g, recipe, w, rates.act_element_bytes, kv_element_bytes)
    comp, mem = op_times(c, rates)
    t = roofline_s(comp, c.read_bytes, rates.bytes_per_s)
    slot = g.op_block * 2 + np.array([op.phase for op in g.ops])
    phase_s: np.ndarray = np.bincount(slot, weights=t, minlength=2 * n_b).reshape(n_b, 2)
    phase_s[:, 0] += rates.op_overhead_s
    return (phase_s, np.bincount(g.op_block, weights=comp, minlength=n_b),
            np.bincount(g.op_block, weights=mem, minlength=n_b),
            np.bincount(g.op_block, weights=c.read_bytes, minlength=n_b))


def group_step(graph: Graph, system: System, dies: list[str], parts: list[dict[str, int]], recipes: list[Recipe],
               w: Workload, kv_element_bytes: float, cache: dict | None = None) -> GroupStep:
    """Per-block seconds of one step of `w` on a group; die i holds `parts[i]` of each shard axis in `recipes[i]`.
    `cache` (any dict kept by the caller) reuses a die's figures for dies of equal rates, shard and formats."""
    n_b = graph.n_blocks
    phase_s = np.zeros((len(dies), n_b, 2))
    comp_b, mem_b, read_b = (np.zeros((len(dies), n_b)) for _ in range(3))
    act = 0.0
    for i, (die, part, recipe) in enumerate(zip(dies, parts, recipes)):
        r = die_rates(system, die, recipe.default, is_prefill(w))
        act = max(act, r.act_element_bytes)
        key = (replace(r, die=""), tuple(sorted(part.items())), recipe, w, kv_element_bytes)
        figures = cache.get(key) if cache is not None else None
        if figures is None:
            figures = die_step(graph, r, part, recipe, w, kv_element_bytes)
            if cache is not None:
                cache[key] = figures
        phase_s[i], comp_b[i], mem_b[i], read_b[i] = figures
    phase_s = phase_s * core_sharing(system, dies)  # every die of the group computes at once
    hidden = graph.hidden_features[1] * w.tokens * act
    ar, algo = allreduce(system, dies, hidden)
    layer = np.array([b.kind == "layer" for b in graph.blocks])
    collective = np.where(layer, 2 * ar, 0.0)
    block = phase_s.max(axis=0).sum(axis=1) + collective
    return GroupStep(block, collective, phase_s.sum(axis=2), comp_b, mem_b, read_b, algo, ar)


def group_weight_bytes(graph: Graph, parts: list[dict[str, int]], recipes: list[Recipe]) -> np.ndarray:
    """(dies, blocks): resident weight bytes of each die's shard of each block."""
    return np.array([block_weight_bytes(graph.sharded(p), r) for p, r in zip(parts, recipes)])


def group_kv_bytes(graph: Graph, parts: list[dict[str, int]], kv_element_bytes: float, context: int,
                   seqs: int) -> np.ndarray:
    """(dies, blocks): KV-cache bytes each die holds (its KV heads only)."""
    return np.array([kv_cache_bytes(graph.sharded(p), kv_element_bytes, context, seqs) for p in parts])
