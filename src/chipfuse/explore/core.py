"""The fast numeric core: the full planner's pipeline figures for every configuration of a space, without
building a System or a Plan per configuration.

What is compiled once, and reused across configurations:
- per frame (SoC x die count x link option x substrate): one real System, its die order for the model's
  hidden state (compile.order.die_order), every transfer the predictor makes on its routes (token ids in,
  hidden states die to die, logits to the host, prefill's too), the link energy per token, each die's
  route-capped share of the host's DRAM and the links' bill of materials;
- per model x precision x die type: each op's compute seconds (FLOP over the die's rates at the
  precisions it runs) and DRAM bytes, per decode and prefill step, and the memory per block;
- per bandwidth: the roofline sum over every op.
At batch 1 one token passes every pipeline stage in turn, so the decode step is the host's work plus the
sum of every stage's roofline time and link, whatever the layer ranges; where the dies read DRAM at
different rates (shared DRAM behind links of different speed) the ranges matter, and the core runs the
planner's own split (compile.pipeline.split_pipeline) on its arrays. Memory fits when contiguous ranges
over the dies fit each die (greedy is exact for equal dies).

`check_against_planner` runs the full planner (compile_plan + predict + system_cost) on a configuration;
the tests hold the two to 1e-9 relative on a random sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from ..frontends.config import ModelConfig
from ..hw import cost as costs
from ..hw.dram import die_read_bytes_per_s
from ..hw.spec import HOST, DieType, HostSoC, System
from ..ir.graph import (
    Graph,
    block_weight_bytes,
    kv_cache_bytes,
    op_costs,
    tied_shared_bytes,
    workspace_bytes,
)
from ..ir.graph import Workload as Step
from ..ir.llm import build_llm_graph
from ..quant.formats import PRECISION_BYTES, Recipe, get_format
from ..sim.collectives import scatter_from_host_s
from ..sim.energy import route_j_per_byte, type_peak_compute_w, type_pj_per_op
from ..sim.perf import host_in_bytes, is_prefill, out_bytes, transfer_s, type_format, type_rates
from ..units import GiB
from .space import Design, Space, frame_system, with_memory

FIT_TOL_REL, FIT_TOL_ABS = 1e-12, 1e-9  # compile.pipeline's tolerance on a die's capacity


@dataclass(frozen=True)
class Figures:
    """One configuration's predicted figures, or why it cannot be built or run."""

    decode_tokens_per_s: float = math.nan
    ttft_s: float = math.nan
    j_per_token: float = math.nan
    power_w: float = math.nan
    peak_power_w: float = math.nan
    cost_usd: float = math.nan
    memory_bytes: float = math.nan  # weights, KV cache and workspace over all the dies used
    capacity_bytes: float = math.nan  # of one die
    dies_used: int = 0
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass
class _Frame:
    """A design's host, dies and links, compiled once (see the module's docstring)."""

    system: System | None
    problem: str
    host: HostSoC | None = None
    links_usd: float = 0.0
    by_model: dict = field(default_factory=dict)  # (graph id, act bytes) -> _Routes


@dataclass(frozen=True)
class _Routes:
    order: list[str]
    scatter_dec_s: float
    scatter_pre_s: float
    dec_links_s: float
    pre_links_s: float
    link_j_per_token: float
    extra: np.ndarray  # the compiler's per-stage link seconds (compile.compiler._Problem.extra)
    shared_caps: np.ndarray  # per die in order: the slowest off-chip link between it and the host


@dataclass
class _Group:
    """One model at one precision on one die type: per-op costs and per-block memory."""

    graph: Graph
    recipe: Recipe
    dt: DieType
    act_bytes: float
    comp_dec: np.ndarray
    rb_dec: np.ndarray
    comp_pre: np.ndarray
    rb_pre: np.ndarray
    overhead_s: float
    mem: np.ndarray  # per block: weights + KV, the head's workspace on the last
    ws_bytes: float
    tied_bytes: float
    compute_j: float  # one decode token's compute energy over every die
    read_bytes_dec: float
    type_name: str
    roof: dict = field(default_factory=dict)  # bandwidth -> (decode s, prefill s)
    shards: dict = field(default_factory=dict)  # part -> _Shard


@dataclass
class _Shard:
    """One die's shard of every layer in a tensor group (ir.Graph.sharded): per-op costs, per-block memory."""

    slot: np.ndarray  # op -> block * 2 + phase
    comp_dec: np.ndarray
    rb_dec: np.ndarray
    comp_pre: np.ndarray
    rb_pre: np.ndarray
    weights: np.ndarray  # per block
    kv: np.ndarray  # per block
    compute_j: float
    read_bytes_dec: float
    phases: dict = field(default_factory=dict)  # bandwidth -> (decode [blocks, 2], prefill [blocks, 2])


class Core:
    """Evaluate configurations of one space; caches frames and groups across calls."""

    def __init__(self, space: Space):
        self.space = space
        wl = space.workload
        self.context, self.prompt = wl.context, wl.prompt_tokens
        # decode attends to this many tokens: the full context, or the mean position of the generated ones
        self.decode_context = wl.context if wl.output_tokens is None else max(1, wl.prompt_tokens + wl.output_tokens // 2)
        self.kv_bytes = PRECISION_BYTES[get_format(wl.kv_precision).precision]
        self.frames: dict[tuple, _Frame] = {}
        self.groups: dict[tuple, _Group] = {}
        self.graphs: dict[str, Graph] = {}
        self.die_usd: dict[str, tuple[float, str]] = {}
        self.dp: dict[tuple, tuple[float, float]] = {}

    # ---- compiled once -------------------------------------------------------------------------------
    def frame(self, d: Design) -> _Frame:
        key = (d.soc, d.dies, d.link, d.substrate)
        fr = self.frames.get(key)
        if fr is None:
            try:
                system = frame_system(self.space, d.soc, d.dies, d.link, d.substrate)
            except ValidationError as err:
                fr = _Frame(None, _first_error(err))
            else:
                usd = 0.0
                for link in system.links:
                    part = (costs.ETHERNET_PORT_USD * 2 if link.kind.startswith("ethernet")
                            else costs.LINK_PARTS_USD.get(link.kind, 1.0))
                    usd += part
                fr = _Frame(system, "", system.host, usd)
            self.frames[key] = fr
        return fr

    def routes(self, fr: _Frame, g: _Group) -> _Routes:
        key = (id(g.graph), g.act_bytes)
        got = fr.by_model.get(key)
        if got is not None:
            return got
        from ..compile.order import die_order

        system, graph = fr.system, g.graph
        assert system is not None
        n_b = graph.n_blocks
        order = die_order(system, system.die_names, graph.hidden_features[1] * 2.0)
        order = order[:min(len(order), n_b)]
        k = len(order)
        nxt = [*order[1:], HOST]
        mid = [out_bytes(graph, 1, 1, g.act_bytes), out_bytes(graph, 1, self.prompt, g.act_bytes)]
        last = out_bytes(graph, n_b, 1, g.act_bytes)
        sent = [mid[0] if j < k - 1 else last for j in range(k)]
        pre_sent = [mid[1] if j < k - 1 else last for j in range(k)]
        extra = np.array([transfer_s(system, order[j], nxt[j], sent[j]) for j in range(k)])
        extra_in = transfer_s(system, HOST, order[0], host_in_bytes(1))
        got = _Routes(
            order=order,
            scatter_dec_s=scatter_from_host_s(system, [order[0]], host_in_bytes(1)),
            scatter_pre_s=scatter_from_host_s(system, [order[0]], host_in_bytes(self.prompt)),
            dec_links_s=float(extra.sum()),
            pre_links_s=sum(transfer_s(system, order[j], nxt[j], pre_sent[j]) for j in range(k)),
            link_j_per_token=sum(sent[j] * route_j_per_byte(system, order[j], nxt[j], sent[j]) for j in range(k)),
            extra=extra + np.eye(1, k, 0).ravel() * extra_in,
            shared_caps=np.array([system.shared_link_cap_bytes_per_s(d) for d in order]))
        fr.by_model[key] = got
        return got

    def graph(self, name: str, cfg: ModelConfig) -> Graph:
        g = self.graphs.get(name)
        if g is None:
            g = self.graphs[name] = build_llm_graph(cfg)
            hf = [g.hidden_features[b] for b in range(g.n_blocks - 1)]
            if len(set(hf)) != 1:  # the closed form charges every hand-over one hidden state of one width
                raise ValueError(f"{name}: blocks of different widths; the fast core assumes one hidden width")
        return g

    def group(self, model: str, cfg: ModelConfig, precision: str, type_name: str) -> _Group:
        key = (model, precision, type_name)
        g = self.groups.get(key)
        if g is not None:
            return g
        graph = self.graph(model, cfg)
        dt = self.space.die_types[type_name]
        want = Recipe.of(precision)
        recipe = want.map(lambda f: type_format(dt, f))
        r = type_rates(dt, 1.0, recipe.default)
        rp = type_rates(dt, 1.0, recipe.default, prefill=is_prefill(Step.prefill(self.prompt, 1)))
        dec = op_costs(graph, recipe, Step.decode(self.decode_context, 1), r.act_element_bytes, self.kv_bytes)
        pre = op_costs(graph, recipe, Step.prefill(self.prompt, 1), r.act_element_bytes, self.kv_bytes)
        n_b = graph.n_blocks
        mem = block_weight_bytes(graph, recipe) + kv_cache_bytes(graph, self.kv_bytes, self.context, 1)
        mem[-1] += workspace_bytes(graph, range(n_b - 1, n_b), self.prompt, 1, r.act_element_bytes)
        assumed: set[str] = set()
        compute_j = (float(dec.weight_flop.sum()) * type_pj_per_op(dt, type_name, r.weight_precision, assumed)
                     + float(dec.act_flop.sum()) * type_pj_per_op(dt, type_name, r.act_precision, assumed)) * 1e-12
        g = _Group(graph, recipe, dt, r.act_element_bytes,
                   dec.weight_flop / r.weight_flop_per_s + dec.act_flop / r.act_flop_per_s, dec.read_bytes,
                   pre.weight_flop / rp.weight_flop_per_s + pre.act_flop / rp.act_flop_per_s, pre.read_bytes,
                   r.op_overhead_s, mem, workspace_bytes(graph, range(1, n_b - 1), self.prompt, 1, r.act_element_bytes),
                   tied_shared_bytes(graph, recipe, range(n_b)), compute_j, float(dec.read_bytes.sum()), type_name)
        self.groups[key] = g
        return g

    def roofline(self, g: _Group, bw: float) -> tuple[float, float]:
        """(decode s, prefill s) of every op of the model on one die reading at `bw`, overheads included."""
        got = g.roof.get(bw)
        if got is None:
            n_b = g.graph.n_blocks
            got = (float(np.maximum(g.comp_dec, g.rb_dec / bw).sum()) + g.overhead_s * n_b,
                   float(np.maximum(g.comp_pre, g.rb_pre / bw).sum()) + g.overhead_s * n_b)
            g.roof[bw] = got
        return got

    def good_die_usd(self, type_name: str) -> tuple[float, str]:
        got = self.die_usd.get(type_name)
        if got is None:
            dt = self.space.die_types[type_name]
            if dt.cost_usd is not None:
                got = (dt.cost_usd, "")
            elif dt.area_mm2 is not None:
                try:
                    got = (costs.good_die_usd(dt.area_mm2, costs.process_for(dt.process_nm)), "")
                except ValueError as err:
                    got = (math.nan, f"die type {type_name}: {err}")
            else:
                got = (0.0, "")
            self.die_usd[type_name] = got
        return got

    # ---- per configuration -----------------------------------------------------------------------------
    def evaluate(self, d: Design, model: str, cfg: ModelConfig, precision: str, split: str = "pipeline") -> Figures:
        fr = self.frame(d)
        if fr.system is None:
            return Figures(problem=f"cannot be built: {fr.problem}")
        host = fr.host
        assert host is not None
        g = self.group(model, cfg, precision, d.die_type)
        die_usd, why = self.good_die_usd(d.die_type)
        if why:
            return Figures(problem=why)
        rt = self.routes(fr, g)
        k = len(rt.order)
        mem_opt = with_memory(self.space, d).memory
        if mem_opt.own is not None:
            own = mem_opt.own
            cap_bytes = own.capacity_bytes
            bws = np.full(k, die_read_bytes_per_s(own.peak_bytes_per_s, own.efficiency))
            pj_byte = own.pj_per_byte
        else:
            sh = mem_opt.shared
            assert sh is not None
            cap_bytes = sh.capacity_gib * GiB
            if host.dram_free_bytes_per_s <= 0:
                return Figures(problem=f"cannot be built: the host's display and other traffic take all of "
                                       f"{d.soc}'s DRAM bandwidth, leaving none to share")
            over = (d.dies * sh.capacity_gib + host.reserved_gib - host.dram.capacity_gib) * GiB
            if over > 0:
                return Figures(problem=f"cannot be built: {d.dies} x {sh.capacity_gib:g} GiB shared plus "
                                       f"{host.reserved_gib:g} GiB reserved exceed {d.soc}'s "
                                       f"{host.dram.capacity_gib:g} GiB by {over / GiB:.2f} GiB")
            bws = np.array([die_read_bytes_per_s(host.dram.peak_bytes_per_s, host.dram.efficiency,
                                                 host.traffic.bytes_per_s, sh.bandwidth_share, c)
                            for c in rt.shared_caps])
            pj_byte = host.dram.pj_per_byte
        if split == "tensor":
            return self.tensor(d, g, fr, host, bws, cap_bytes, pj_byte, die_usd, mem_opt)
        mem = g.mem.copy()
        if k == 1:
            mem[-1] -= g.tied_bytes
        cap = cap_bytes - g.ws_bytes
        need = float(mem.sum()) + g.ws_bytes * k
        problem = _fit_problem(mem, cap, k, cap_bytes, need)
        if problem:
            return Figures(memory_bytes=need, capacity_bytes=cap_bytes, dies_used=k, problem=problem)
        if np.all(bws == bws[0]):
            dec_s, pre_s = self.roofline(g, float(bws[0]))
        else:
            dec_s, pre_s = self.split(g, rt, bws, mem, cap)
        step = host.overhead_per_token_s + rt.scatter_dec_s + dec_s + rt.dec_links_s
        ttft = host.overhead_per_token_s + rt.scatter_pre_s + pre_s + rt.pre_links_s
        rate = 1.0 / step
        dynamic = g.compute_j + g.read_bytes_dec * pj_byte * 1e-12 + rt.link_j_per_token
        return self._figures(d, g, fr, host, rate, ttft, dynamic, self.all_bws(fr, d, bws), pj_byte, die_usd,
                             mem_opt, need, cap_bytes, k)

    def _figures(self, d: Design, g: _Group, fr: _Frame, host: HostSoC, rate: float, ttft: float, dynamic: float,
                 bws: np.ndarray, pj_byte: float, die_usd: float, mem_opt, need: float, cap_bytes: float,
                 k: int) -> Figures:
        """Power, energy and cost around a configuration's rate (sim.energy's arithmetic)."""
        static = host.static_w + d.dies * g.dt.power.static_w
        power = dynamic * rate + static
        assumed: set[str] = set()
        peak = static + d.dies * type_peak_compute_w(g.dt, d.die_type, assumed)
        peak += float(np.sum(bws * pj_byte * 1e-12))
        return Figures(decode_tokens_per_s=rate, ttft_s=ttft, j_per_token=dynamic + static / rate, power_w=power,
                       peak_power_w=max(peak, power), cost_usd=self.cost(d, fr, host, die_usd, mem_opt),
                       memory_bytes=need, capacity_bytes=cap_bytes, dies_used=k)

    def die_bws(self, fr: _Frame, d: Design, used: np.ndarray) -> dict[str, float]:
        """Every die's DRAM rate by name."""
        assert fr.system is not None
        mem = with_memory(self.space, d).memory
        if mem.own is not None:
            return {x: float(used[0]) for x in fr.system.die_names}
        h = fr.host
        assert h is not None and mem.shared is not None
        return {x: die_read_bytes_per_s(h.dram.peak_bytes_per_s, h.dram.efficiency, h.traffic.bytes_per_s,
                                        mem.shared.bandwidth_share, fr.system.shared_link_cap_bytes_per_s(x))
                for x in fr.system.die_names}

    def all_bws(self, fr: _Frame, d: Design, used: np.ndarray) -> np.ndarray:
        """Every die's DRAM rate (the peak power counts idle dies too): the used ones', and the rest at theirs."""
        if len(used) == d.dies:
            return used
        return np.array(list(self.die_bws(fr, d, used).values()))

    # ---- tensor groups -----------------------------------------------------------------------------------
    def shard(self, g: _Group, part: dict[str, int]) -> _Shard:
        key = tuple(sorted(part.items()))
        got = g.shards.get(key)
        if got is None:
            sg = g.graph.sharded(part)
            r = type_rates(g.dt, 1.0, g.recipe.default)
            rp = type_rates(g.dt, 1.0, g.recipe.default, prefill=is_prefill(Step.prefill(self.prompt, 1)))
            dec = op_costs(sg, g.recipe, Step.decode(self.decode_context, 1), r.act_element_bytes, self.kv_bytes)
            pre = op_costs(sg, g.recipe, Step.prefill(self.prompt, 1), r.act_element_bytes, self.kv_bytes)
            assumed: set[str] = set()
            cj = (float(dec.weight_flop.sum()) * type_pj_per_op(g.dt, g.type_name, r.weight_precision, assumed)
                  + float(dec.act_flop.sum()) * type_pj_per_op(g.dt, g.type_name, r.act_precision, assumed)) * 1e-12
            got = _Shard(sg.op_block * 2 + np.array([op.phase for op in sg.ops]),
                         dec.weight_flop / r.weight_flop_per_s + dec.act_flop / r.act_flop_per_s, dec.read_bytes,
                         pre.weight_flop / rp.weight_flop_per_s + pre.act_flop / rp.act_flop_per_s, pre.read_bytes,
                         block_weight_bytes(sg, g.recipe), kv_cache_bytes(sg, self.kv_bytes, self.context, 1), cj,
                         float(dec.read_bytes.sum()))
            g.shards[key] = got
        return got

    def phases(self, g: _Group, sh: _Shard, bw: float) -> tuple[np.ndarray, np.ndarray]:
        """A shard's seconds per block and phase at DRAM rate `bw`, the block overhead in phase 0 (die_step)."""
        got = sh.phases.get(bw)
        if got is None:
            n_b = g.graph.n_blocks
            out = []
            for comp, rb in ((sh.comp_dec, sh.rb_dec), (sh.comp_pre, sh.rb_pre)):
                ph = np.bincount(sh.slot, weights=np.maximum(comp, rb / bw), minlength=2 * n_b).astype(float)
                ph = ph.reshape(n_b, 2) + np.array([g.overhead_s, 0.0])
                out.append(ph)
            got = sh.phases[bw] = (out[0], out[1])
        return got

    def parts(self, g: _Group, fr: _Frame, d: Design, dies: list[str], bws: np.ndarray) -> list[dict[str, int]]:
        """Each die's part of every shard axis: even (extras to the first dies) for dies of one speed, else the
        compiler's own sizing on the design's System."""
        from ..compile.tensor import granule, group_parts, minmax_parts

        widths = g.graph.shard_widths
        if np.all(bws == bws[0]):
            out: list[dict[str, int]] = [{} for _ in dies]
            for axis, width in widths.items():
                gran = granule(width) if axis == "mlp_columns" else 1
                for i, p in enumerate(minmax_parts(width, [1.0] * len(dies), gran)):
                    out[i][axis] = p
            return out
        assert fr.system is not None
        view = fr.system.model_copy(update={"die_types": {"npu": with_memory(self.space, d)}})
        return group_parts(g.graph, view, dies, [g.recipe] * len(dies), Step.decode(self.decode_context, 1), self.kv_bytes)

    def tensor(self, d: Design, g: _Group, fr: _Frame, host: HostSoC, bws_used: np.ndarray, cap_bytes: float,
               pj_byte: float, die_usd: float, mem_opt) -> Figures:
        """The best tensor group (a prefix of the route order of 2 or more dies, as compile.split.search tries):
        every die holds a shard of every layer; two all-reduces a layer."""
        from ..sim.collectives import allreduce, gather_to_host_s

        assert fr.system is not None
        system, graph = fr.system, g.graph
        if d.dies < 2:
            return Figures(problem="a tensor split needs 2 or more dies")
        order = self.full_order(fr, g)
        by_die = self.die_bws(fr, d, bws_used)
        all_bws = np.array(list(by_die.values()))
        n_b = graph.n_blocks
        layer = np.array([b.kind == "layer" for b in graph.blocks])
        n_layers = int(layer.sum())
        ws = workspace_bytes(graph, range(1, n_b - 1), self.prompt, 1, g.act_bytes)
        head_ws = workspace_bytes(graph, range(n_b - 1, n_b), self.prompt, 1, g.act_bytes)
        hidden = graph.hidden_features[1] * g.act_bytes
        best = None
        need_min = math.inf
        for m in range(2, len(order) + 1):
            dies = order[:m]
            bws = np.array([by_die[x] for x in dies])
            parts = self.parts(g, fr, d, dies, bws)
            shards = [self.shard(g, p) for p in parts]
            use = np.array([sh.weights + sh.kv for sh in shards])
            use[:, -1] += head_ws
            need = float(use.sum()) + ws * m
            cap = cap_bytes - ws
            fits = cap > 0 and float((use / cap).max(axis=0).sum()) <= 1 + 1e-12 + 1e-9
            if not fits:
                need_min = min(need_min, need)
                continue
            ph = [self.phases(g, sh, float(b)) for sh, b in zip(shards, bws)]
            ar_dec = self.collective(fr, dies, hidden, allreduce)
            ar_pre = self.collective(fr, dies, hidden * self.prompt, allreduce)
            dec_s = float((np.max([p[0] for p in ph], axis=0).sum(axis=1) + np.where(layer, 2 * ar_dec, 0.0)).sum())
            pre_s = float((np.max([p[1] for p in ph], axis=0).sum(axis=1) + np.where(layer, 2 * ar_pre, 0.0)).sum())
            gather = gather_to_host_s(system, [(x, 4.0 * p["vocab"]) for x, p in zip(dies, parts)])
            step = host.overhead_per_token_s + scatter_from_host_s(system, dies, host_in_bytes(1)) + dec_s + gather
            rate = 1.0 / step
            key = (-round(rate, 9), m)
            if best is None or key < best[0]:
                ttft = host.overhead_per_token_s + scatter_from_host_s(system, dies, host_in_bytes(self.prompt)) \
                    + pre_s + gather
                vec = hidden
                link_j = rt_logits_j(system, dies[0], out_bytes(graph, n_b, 1, g.act_bytes))
                for i, x in enumerate(dies):
                    peer = dies[(i + 1) % m]
                    link_j += 2 * n_layers * 2 * (m - 1) / m * vec * route_j_per_byte(system, x, peer, vec)
                dynamic = (sum(sh.compute_j for sh in shards) + sum(sh.read_bytes_dec for sh in shards) * pj_byte
                           * 1e-12 + link_j)
                best = (key, rate, ttft, dynamic, need, m)
        if best is None:
            from ..units import fmt_bytes

            return Figures(memory_bytes=need_min, capacity_bytes=cap_bytes, problem=(
                f"does not fit: no tensor group of these dies holds it ({fmt_bytes(need_min)} in all, "
                f"{fmt_bytes(cap_bytes)} a die)"))
        _, rate, ttft, dynamic, need, m = best
        return self._figures(d, g, fr, host, rate, ttft, dynamic, all_bws, pj_byte, die_usd, mem_opt, need,
                             cap_bytes, m)

    def full_order(self, fr: _Frame, g: _Group) -> list[str]:
        """The route order of every die (a tensor group may hold more dies than the model has blocks)."""
        from ..compile.order import die_order

        key = ("full", id(g.graph))
        got = fr.by_model.get(key)
        if got is None:
            assert fr.system is not None
            got = fr.by_model[key] = die_order(fr.system, fr.system.die_names, g.graph.hidden_features[1] * 2.0)
        return got

    def collective(self, fr: _Frame, dies: list[str], nbytes: float, allreduce) -> float:
        key = ("allreduce", tuple(dies), nbytes)
        got = fr.by_model.get(key)
        if got is None:
            assert fr.system is not None
            got = fr.by_model[key] = allreduce(fr.system, dies, nbytes)[0]
        return got

    def split(self, g: _Group, rt: _Routes, bws: np.ndarray, mem: np.ndarray, cap: float) -> tuple[float, float]:
        """Decode and prefill seconds over dies reading at different rates: the planner's own split."""
        from ..compile.pipeline import split_pipeline
        from ..ir.graph import block_sums

        key = (id(g), tuple(bws), tuple(rt.extra), cap, id(rt))
        got = self.dp.get(key)
        if got is not None:
            return got
        k, n_b = len(bws), g.graph.n_blocks
        t_dec = np.stack([block_sums(g.graph, np.maximum(g.comp_dec, g.rb_dec / b)) + g.overhead_s for b in bws], 1)
        t_pre = np.stack([block_sums(g.graph, np.maximum(g.comp_pre, g.rb_pre / b)) + g.overhead_s for b in bws], 1)
        res = split_pipeline(t_dec, rt.extra, mem, np.full(k, cap))
        assert res is not None and n_b >= k  # the fit was checked first
        got = (sum(float(t_dec[s:e, j].sum()) for j, (s, e) in enumerate(res.bounds)),
               sum(float(t_pre[s:e, j].sum()) for j, (s, e) in enumerate(res.bounds)))
        self.dp[key] = got
        return got

    def cost(self, d: Design, fr: _Frame, host: HostSoC, die_usd: float, mem_opt) -> float:
        """The design's bill of materials, as hw.cost.system_cost adds it up."""
        usd = host.cost_usd if host.cost_usd is not None else costs.HOST_SOC_USD
        usd += host.dram.capacity_gib * costs.DRAM_USD_PER_GIB.get(host.dram.type, 3.0)
        dt = self.space.die_types[d.die_type]
        known = dt.cost_usd is not None or dt.area_mm2 is not None
        if d.substrate:
            usd += costs.package_usd([die_usd] * d.dies, d.substrate)
        elif known:
            usd += d.dies * costs.package_usd([die_usd], "organic-2d")
        if mem_opt.own is not None:
            usd += d.dies * mem_opt.own.capacity_gib * costs.DRAM_USD_PER_GIB.get(mem_opt.own.type, 3.0)
        return usd + fr.links_usd + costs.BOARD_USD


def rt_logits_j(system: System, die: str, nbytes: float) -> float:
    """Joules of sending the logits from a group's first die to the host (sim.energy charges them once)."""
    return nbytes * route_j_per_byte(system, die, HOST, nbytes)


def _fit_problem(mem: np.ndarray, cap: float, k: int, cap_bytes: float, need: float) -> str:
    """Why the blocks do not fit k dies of `cap` bytes as contiguous ranges ('' if they do)."""
    from ..units import fmt_bytes

    if cap <= 0:
        return (f"does not fit: a die's {fmt_bytes(cap_bytes)} is less than the workspace the prompt needs "
                f"({fmt_bytes(cap_bytes - cap)})")
    limit = cap * (1 + FIT_TOL_REL) + FIT_TOL_ABS
    n, used = 1, 0.0
    for b in mem:
        if b > limit:
            return f"does not fit: one block needs {fmt_bytes(b)}, more than a die's {fmt_bytes(cap_bytes)}"
        if used + b > limit:
            n, used = n + 1, 0.0
        used += b
    if n > k:
        return (f"does not fit: needs {fmt_bytes(need)} in all, {n} dies of {fmt_bytes(cap_bytes)} "
                f"(the design has {k})")
    return ""


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    return str(e.get("msg", err)).removeprefix("Value error, ")


def check_against_planner(space: Space, d: Design, cfg: ModelConfig, precision: str, split: str = "pipeline") -> Figures:
    """The same figures from the full planner: the design built as a System, compile_plan, predict and
    system_cost. Slow (tens of milliseconds); the reference the fast core is tested against."""
    from ..compile.compiler import compile_plan
    from ..errors import ChipfuseError
    from ..hw.cost import system_cost
    from .space import design_system

    try:
        system = design_system(space, d)
    except ChipfuseError as err:
        return Figures(problem=f"cannot be built: {err}")
    wl = space.workload
    try:
        plan = compile_plan(cfg, system, precision, context=wl.context, prompt_tokens=wl.prompt_tokens, batch=1,
                            kv_precision=wl.kv_precision, split=split, output_tokens=wl.output_tokens)
    except ChipfuseError as err:
        return Figures(problem=f"does not fit: {err}")
    p = plan.prediction
    assert p is not None and p.energy is not None
    return Figures(decode_tokens_per_s=p.decode_tokens_per_s, ttft_s=p.ttft_s, j_per_token=p.energy.j_per_token,
                   power_w=p.energy.power_w, peak_power_w=p.energy.peak_power_w,
                   cost_usd=system_cost(system).bom_usd, dies_used=len({st.die for st in plan.stages}),
                   capacity_bytes=system.die_memory_bytes(plan.stages[0].die),
                   memory_bytes=float(sum(st.weight_bytes + st.kv_bytes + st.workspace_bytes for st in plan.stages)))


__all__ = ["Core", "Figures", "check_against_planner"]
