"""Choosing the split: pipeline, tensor or hybrid, over any grouping of the dies, by predicted speed.

Every candidate grouping (compile.tensor.groupings) becomes a pipeline of positions, each position
one die or one tensor group. The positions' per-block step times come from the same group model
the predictor uses (sim.tensor.group_step), their links from the same collectives, so the
optimal layer ranges per grouping (compile.pipeline.split_pipeline) and the ranking of the
groupings are the predictor's own figures. The winner and every candidate considered are returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..hw.spec import HOST, System
from ..ir.graph import Graph, Workload, tied_shared_bytes, workspace_bytes
from ..plan.plan import Shard, Stage, WorkloadSpec
from ..quant.formats import Recipe
from ..sim.collectives import gather_to_host_s, hand_over_s, scatter_from_host_s
from ..sim.perf import die_rates, die_recipe, host_in_bytes
from ..sim.tensor import group_kv_bytes, group_step, group_weight_bytes
from .pipeline import split_cycle
from .tensor import group_parts, groupings, mode_of, normalised_memory, spans

SPLITS = ("auto", "pipeline", "tensor", "hybrid")
OBJECTIVES = ("throughput", "latency")


@dataclass(frozen=True)
class Candidate:
    """One grouping the compiler considered, with the figures it predicted (None where it does not fit)."""

    mode: str
    groups: tuple[tuple[str, ...], ...]
    decode_tokens_per_s: float | None
    decode_tokens_per_s_per_request: float | None
    problem: str | None = None

    @property
    def label(self) -> str:
        inner = " | ".join("+".join(g) for g in self.groups)
        return f"{self.mode} over {sum(len(g) for g in self.groups)} die(s): {inner}"


@dataclass
class _Position:
    dies: list[str]
    recipes: list[Recipe]
    parts: list[dict[str, int]]


class _Grouping:
    """The DP's arrays for one grouping: per-block step time and memory share of each position, and its links."""

    def __init__(self, graph: Graph, system: System, groups: list[list[str]], recipe: Recipe, wl: WorkloadSpec,
                 kv_element_bytes: float, cache: dict):
        self.graph, self.system, self.groups, self.batch = graph, system, groups, wl.batch
        n = len(groups)
        self.micro = min(wl.batch, n)
        self.seqs = math.ceil(wl.batch / self.micro)
        step = Workload.decode(wl.decode_context, self.seqs)
        sizing = Workload.decode(wl.decode_context, 1)
        n_b = graph.n_blocks
        self.time, self.mem = np.zeros((n_b, n)), np.zeros((n_b, n))
        self.positions: list[_Position] = []
        self.collectives: list[tuple[float, str]] = []  # per position: one all-reduce's seconds and algorithm
        for j, dies in enumerate(groups):
            recipes = [die_recipe(system, d, recipe) for d in dies]
            parts = group_parts(graph, system, dies, recipes, sizing, kv_element_bytes)
            self.positions.append(_Position(dies, recipes, parts))
            gs = group_step(graph, system, dies, parts, recipes, step, kv_element_bytes, cache)
            self.time[:, j] = gs.block_s
            self.collectives.append((gs.allreduce_s, gs.algorithm))
            weights = group_weight_bytes(graph, parts, recipes)
            kv = group_kv_bytes(graph, parts, kv_element_bytes, wl.context, wl.batch)
            acts = [die_rates(system, d, recipe.default).act_element_bytes for d in dies]
            ws = np.array([workspace_bytes(graph, range(1, n_b - 1), wl.prompt_tokens, wl.batch, a) for a in acts])
            head_ws = np.array([workspace_bytes(graph, range(n_b - 1, n_b), wl.prompt_tokens, wl.batch, a)
                                for a in acts])
            caps = np.array([system.die_memory_bytes(d) for d in dies]) - ws
            if n == 1 and len(dies) == 1:  # one die holds everything: a tied head and its embedding share a table
                weights[0, -1] -= tied_shared_bytes(graph, recipes[0], range(n_b))
            self.mem[:, j] = normalised_memory(weights, kv, head_ws, np.maximum(caps, 1e-9)) if (caps > 0).all() \
                else np.inf
        self.extra = np.zeros(n)
        act = max(die_rates(system, d, recipe.default).act_element_bytes for g in groups for d in g)
        hidden = graph.hidden_features[1] * self.seqs * act
        for j, pos in enumerate(self.positions):
            if j + 1 < n:
                self.extra[j] = hand_over_s(system, pos.dies, groups[j + 1], hidden)
            else:
                self.extra[j] = gather_to_host_s(system, [(d, 4.0 * self.seqs * p["vocab"])
                                                         for d, p in zip(pos.dies, pos.parts)])
        self.scatter_s = scatter_from_host_s(system, groups[0], host_in_bytes(self.seqs))
        # a layers stage's die pays its own cost each step, whatever blocks it holds (as perf.stage_cost charges it)
        self.own = np.array([system.die_type(g[0]).step_overhead_s if len(g) == 1 else 0.0 for g in groups])

    def best(self, host_s: float) -> tuple[float, float, list[tuple[int, int]]] | None:
        """(aggregate tokens/s, per-request tokens/s, block ranges) of the split with the shortest step (the best
        by either objective: aggregate is batch / step, per request 1 / step), or None if none fits.

        The figures are the predictor's for those ranges: one round trip (token ids in, every position and
        its link, the host's per-token work), or the slowest position's work or link once per micro-batch."""
        found = split_cycle(self.time, self.extra, self.mem, np.ones(len(self.groups)), self.micro,
                            self.scatter_s + host_s * self.seqs, self.own)
        if found is None:
            return None
        cycle, bounds = found
        return self.batch / cycle, 1 / cycle, bounds


def search(graph: Graph, system: System, order: list[str], recipe: Recipe, wl: WorkloadSpec, kv_element_bytes: float,
           split: str, objective: str) -> tuple[_Grouping | None, list[tuple[int, int]], list[Candidate]]:
    """The best grouping for `split` (auto: any) and its block ranges, and every candidate considered."""
    cache: dict = {}
    cands: list[Candidate] = []
    best: tuple[tuple[float, int, int], _Grouping, list[tuple[int, int]]] | None = None
    rank = {"pipeline": 0, "tensor": 1, "hybrid": 2}
    for groups in groupings(order, system):
        mode = mode_of(groups)
        if split not in ("auto", mode) or (mode != "pipeline" and len(order) == 1):
            continue
        if len(groups) > graph.n_blocks:
            continue
        g = _Grouping(graph, system, groups, recipe, wl, kv_element_bytes, cache)
        res = g.best(system.host.overhead_per_token_s)
        key = tuple(tuple(x) for x in groups)
        if res is None:
            cands.append(Candidate(mode, key, None, None, "does not fit the dies' memory"))
            continue
        agg, per_req, bounds = res
        cands.append(Candidate(mode, key, agg, per_req))
        score = agg if objective == "throughput" else per_req
        # the faster wins; on a tie (within 1e-9) fewer dies, then the simpler mode
        k = (-round(score, 9), sum(len(x) for x in groups), rank[mode])
        if best is None or k < best[0]:
            best = (k, g, bounds)
    if best is None:
        return None, [], cands
    return best[1], best[2], cands


def group_stages(graph: Graph, system: System, g: _Grouping, bounds: list[tuple[int, int]], wl: WorkloadSpec,
                 kv_element_bytes: float, model_id: str) -> list[Stage]:
    """The plan's stages for a grouping and its block ranges: a layers stage per lone die, a shard stage per die
    of a tensor group (its spans of KV heads, query heads, MLP columns and, with the head, vocabulary)."""
    from .compiler import _stage_overrides, stage_op_overrides

    n_b = graph.n_blocks
    cfg_group = graph.meta.get("heads_per_kv", 1)
    stages: list[Stage] = []
    prev = [HOST]
    h_bytes = graph.hidden_features[1] * 2.0
    for pos, (s, e) in zip(g.positions, bounds):
        blocks = range(s, e)
        layers = [blk.layer for blk in (graph.blocks[b] for b in blocks) if blk.layer is not None]
        weights = group_weight_bytes(graph, pos.parts, pos.recipes)
        kv = group_kv_bytes(graph, pos.parts, kv_element_bytes, wl.context, wl.batch)
        alone = len(g.positions) == 1 and len(pos.dies) == 1
        kv_spans, col_spans, voc_spans = (spans(pos.parts, a) for a in ("kv_heads", "mlp_columns", "vocab"))
        for i, (die, f) in enumerate(zip(pos.dies, pos.recipes)):
            wb = float(weights[i, s:e].sum()) - (tied_shared_bytes(graph, f, blocks) if alone else 0.0)
            act = die_rates(system, die, f.default).act_element_bytes
            shard = None
            if len(pos.dies) > 1:
                kv0, kvn = kv_spans[i]
                shard = Shard(group=pos.dies, index=i, heads=(kv0 * cfg_group, kvn * cfg_group), kv_heads=(kv0, kvn),
                              mlp_columns=col_spans[i], vocab=voc_spans[i] if e == n_b else None)
            sender = prev[0]
            stages.append(Stage(
                index=len(stages), die=die, model=model_id, kind="shard" if shard else "layers", blocks=(s, e),
                layers=(min(layers), max(layers)) if layers else None, has_embedding=s == 0, has_lm_head=e == n_b,
                format=f.default.name, block_formats=_stage_overrides(f, s, e, n_b),
                head_format=f.head.name if (s == 0 or e == n_b) else None,
                op_formats=stage_op_overrides(f, graph, s, e),
                weight_bytes=int(wb), kv_bytes=int(kv[i, s:e].sum()),
                workspace_bytes=int(workspace_bytes(graph, blocks, wl.prompt_tokens, wl.batch, act)),
                memory_bytes=int(system.die_memory_bytes(die)),
                route_in=system.route_nodes(sender, die, h_bytes), shard=shard))
        prev = pos.dies
    return stages


def explain_choice(best: _Grouping, cands: list[Candidate], objective: str) -> str:
    """Why the winner wins, in words: its speed against one die and against the best of each other mode."""
    key = "decode_tokens_per_s" if objective == "throughput" else "decode_tokens_per_s_per_request"
    fitting = [c for c in cands if getattr(c, key) is not None]
    mine = next(c for c in fitting if [list(g) for g in c.groups] == best.groups)
    rate = getattr(mine, key)
    words = [f"{mine.label}: {rate:.1f} tokens/s{' per request' if key.endswith('request') else ''}"]
    single = [getattr(c, key) for c in fitting if sum(len(g) for g in c.groups) == 1]
    if single and len(best.groups) + sum(len(g) - 1 for g in best.groups) > 1:
        words.append(f"{rate / max(single):.2f}x one die ({max(single):.1f})")
    for pos, (ar, algo) in zip(best.positions, best.collectives):
        if len(pos.dies) > 1:
            words.append(f"in the group {'+'.join(pos.dies)} each die reads about 1/{len(pos.dies)} of the layer "
                         f"weights, and the 2 all-reduces per layer cost {ar * 1e6:.1f} us each ({algo})")
            break
    for mode in ("pipeline", "tensor", "hybrid"):
        others = [c for c in fitting if c.mode == mode and c is not mine]
        if others and mode != mine.mode:
            top = max(others, key=lambda c: getattr(c, key))
            words.append(f"best {mode}: {top.label} at {getattr(top, key):.1f}")
    if mine.mode == "pipeline" and len(best.groups) > 1:
        words.append("at batch 1 a pipeline's dies take turns, so splitting layers adds memory, not speed")
    return "; ".join(words)
