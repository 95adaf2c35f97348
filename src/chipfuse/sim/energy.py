"""Energy and power of a plan: joules per generated token, average and peak watts, and the fanless check.

Per decode step, each die spends energy on its operations (FLOP x the die's pJ per op at the precision
that runs them), on the DRAM bytes the step reads (x the memory's pJ per byte) and on the bytes it
sends on (x each link's pJ per bit, along the route); the host and every die also draw their static
power all the time. A token's energy is its share of a step's dynamic energy plus the static power
over the time the plan takes per token. Average power at the plan's own decode rate is therefore
energy per token x tokens per second; peak power is every die computing at its peak rate and reading
at its full bandwidth at once, plus the static power. A die type without `power.pj_per_op` for a
precision gets `ASSUMED_PJ_PER_OP` and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..hw.spec import HOST, DieType, System
from ..ir.graph import Graph, Workload, op_costs
from ..plan.plan import Plan, Prediction, stage_positions
from ..quant.formats import PRECISION_BYTES, get_format
from .perf import die_rates, out_bytes

# pJ per operation by precision where a die type gives none: assumed, the order of magnitude of published
# 12 nm NPU figures (the talk presets use the same values); a user overrides them per die type
ASSUMED_PJ_PER_OP = {"int4": 0.1, "int8": 0.2, "fp8": 0.3, "fp16": 0.6, "bf16": 0.6, "fp32": 2.4}


@dataclass(frozen=True)
class DieEnergy:
    """One die's energy for one micro-batch's decode step, and its static power."""

    die: str
    compute_j: float
    dram_j: float
    link_j: float
    static_w: float


@dataclass(frozen=True)
class Energy:
    j_per_token: float  # everything, static included, at the plan's decode rate
    compute_j_per_token: float
    dram_j_per_token: float
    link_j_per_token: float
    static_j_per_token: float
    power_w: float  # average, decoding at the plan's rate
    peak_power_w: float
    static_w: float
    fanless_w: float
    dies: tuple[DieEnergy, ...]
    assumed: tuple[str, ...]  # which figures came from ASSUMED_PJ_PER_OP

    @property
    def fanless(self) -> bool:
        """Sustained (average) power within the fanless limit: heat is what a fan removes, and it follows the
        average; the peak is reported beside it."""
        return self.power_w <= self.fanless_w

    @property
    def dynamic_j_per_token(self) -> float:
        return self.compute_j_per_token + self.dram_j_per_token + self.link_j_per_token


def ops_energy_j(system: System, die: str, weight_flop: float, act_flop: float, read_bytes: float,
                 weight_precision: str, act_precision: str, assumed: set[str]) -> float:
    """Dynamic joules of some work on a die: FLOP at their precisions' pJ, DRAM bytes at the memory's."""
    return (weight_flop * pj_per_op(system, die, weight_precision, assumed) + act_flop * pj_per_op(system, die, act_precision,
                                                                                         assumed)
            + read_bytes * memory_pj_per_byte(system, die)) * 1e-12


def static_w(system: System) -> float:
    """The host's and every die's static power."""
    return system.host.static_w + sum(system.die_type(d).power.static_w for d in system.die_names)


def type_pj_per_op(dt: DieType, type_name: str, precision: str, assumed: set[str]) -> float:
    """A die type's pJ per operation at `precision`; an assumed default (named in `assumed`) where it gives none."""
    got = dt.power.pj_per_op.get(precision)  # type: ignore[call-overload]
    if got is None:
        assumed.add(f"{type_name}: {precision} {ASSUMED_PJ_PER_OP[precision]} pJ/op")
        return ASSUMED_PJ_PER_OP[precision]
    return float(got)


def pj_per_op(system: System, die: str, precision: str, assumed: set[str]) -> float:
    """The die's pJ per operation at `precision`; an assumed default (named in `assumed`) where it gives none."""
    kind = next(d.type for d in system.dies if d.name == die)
    return type_pj_per_op(system.die_type(die), kind, precision, assumed)


def type_peak_compute_w(dt: DieType, type_name: str, assumed: set[str]) -> float:
    """A die type's compute power at its peak rate, in the precision it has energy figures for that draws most."""
    known = [p for p in dt.tops if p in dt.power.pj_per_op] or list(dt.tops)
    eff = max(dt.compute_efficiency, dt.prefill_compute_efficiency or 0.0)  # the busier of its two paths
    return max(dt.tops[p] * 1e12 * eff * type_pj_per_op(dt, type_name, p, assumed) * 1e-12 for p in known)


def memory_pj_per_byte(system: System, die: str) -> float:
    mem = system.die_type(die).memory
    return mem.own.pj_per_byte if mem.own else system.host.dram.pj_per_byte


def route_j_per_byte(system: System, a: str, b: str, nbytes: float) -> float:
    """Joules a byte costs on its way from a to b (each link it crosses)."""
    return sum(link.joules_per_byte for link in system.route(a, b, nbytes)) if a != b else 0.0


def plan_energy(plan: Plan, prediction: Prediction, graph: Graph, system: System) -> Energy:
    """Energy and power of `plan` decoding at `prediction`'s rate (see the module's docstring)."""
    from .predict import shard_parts

    wl = plan.workload
    kv_element_bytes = PRECISION_BYTES[get_format(wl.kv_precision).precision]
    positions = stage_positions(plan.stages)
    micro = min(wl.batch, len(positions))
    seqs = math.ceil(wl.batch / micro)
    dec = Workload.decode(wl.decode_context, seqs)
    assumed: set[str] = set()
    dies: list[DieEnergy] = []
    for p, pos in enumerate(positions):
        nxt = [st.die for _, st in positions[p + 1]] if p + 1 < len(positions) else [HOST]
        for k, (i, st) in enumerate(pos):
            recipe = plan.stage_recipe(i)
            r = die_rates(system, st.die, recipe.default)
            g = graph.sharded(shard_parts(graph, st)) if st.shard else graph
            c = op_costs(g, recipe, dec, r.act_element_bytes, kv_element_bytes)
            mask = np.isin(g.op_block, list(range(*st.blocks)))
            compute = (float(c.weight_flop[mask].sum()) * pj_per_op(system, st.die, r.weight_precision, assumed)
                       + float(c.act_flop[mask].sum()) * pj_per_op(system, st.die, r.act_precision, assumed)) * 1e-12
            dram = float(c.read_bytes[mask].sum()) * memory_pj_per_byte(system, st.die) * 1e-12
            sent = out_bytes(graph, st.blocks[1], seqs, r.act_element_bytes) if k == 0 else 0.0  # one copy onward
            link = sum(sent * route_j_per_byte(system, st.die, d, sent) for d in nxt)
            if st.shard and len(pos) > 1:  # two all-reduces a layer: a ring sends 2(n-1)/n of the vector each
                n = len(pos)
                vec = seqs * graph.hidden_features[1] * r.act_element_bytes
                layers = sum(1 for b in graph.blocks[slice(*st.blocks)] if b.kind == "layer")
                peer = pos[(k + 1) % n][1].die
                link += 2 * layers * 2 * (n - 1) / n * vec * route_j_per_byte(system, st.die, peer, vec)
            dies.append(DieEnergy(st.die, compute, dram, link, system.die_type(st.die).power.static_w))
    tokens_per_s = prediction.decode_tokens_per_s
    base_w = static_w(system)
    per = 1.0 / seqs  # a micro-batch's step makes `seqs` tokens
    compute_t = sum(d.compute_j for d in dies) * per
    dram_t = sum(d.dram_j for d in dies) * per
    link_t = sum(d.link_j for d in dies) * per
    static_t = base_w / tokens_per_s
    peak = base_w
    for d in system.die_names:
        kind = next(x.type for x in system.dies if x.name == d)
        peak += type_peak_compute_w(system.die_type(d), kind, assumed)
        peak += system.die_bandwidth_bytes_per_s(d) * memory_pj_per_byte(system, d) * 1e-12
    power = (compute_t + dram_t + link_t) * tokens_per_s + base_w
    return Energy(compute_t + dram_t + link_t + static_t, compute_t, dram_t, link_t, static_t, power,
                  max(peak, power), base_w, system.fanless_w, tuple(dies), tuple(sorted(assumed)))


__all__ = ["Energy", "DieEnergy", "plan_energy", "pj_per_op", "type_pj_per_op", "type_peak_compute_w", "ops_energy_j", "static_w", "ASSUMED_PJ_PER_OP", "route_j_per_byte", "memory_pj_per_byte"]
