"""Performance model, first version: per-op roofline on each die, link transfers, host overheads.

Pure functions over the IR's op costs and the system spec: no torch, no model weights, so
the compiler can call it inside its search and sweeps can call it thousands of times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.spec import HOST, DieType, Precision, System
from ..ir.graph import Graph, OpCosts, Workload, block_sums, op_costs
from ..quant.formats import DEFAULT_FORMAT, FALLBACK, PRECISION_BYTES, Format, Recipe, get_format
from ..units import TERA


@dataclass(frozen=True)
class DieRates:
    """What the roofline needs of one die, in SI units, efficiencies applied."""

    die: str
    weight_precision: str
    act_precision: str
    weight_flop_per_s: float
    act_flop_per_s: float
    bytes_per_s: float
    op_overhead_s: float

    @property
    def act_element_bytes(self) -> float:
        return PRECISION_BYTES[self.act_precision]


def type_supported(dt: DieType, precision: str) -> Precision:
    """The precision a die type runs for a requested one: itself, or the nearest it has."""
    if precision in dt.tops:
        return precision
    return next(p for p in FALLBACK[precision] if p in dt.tops)


def supported(system: System, die: str, precision: str) -> Precision:
    """The precision the die runs for a requested one: itself, or the nearest it has."""
    return type_supported(system.die_type(die), precision)


def type_format(dt: DieType, fmt: Format) -> Format:
    """The weight format a die type holds: `fmt` if it computes in or expands that precision, else the fallback's."""
    if fmt.precision in dt.weight_only:
        return fmt
    p = type_supported(dt, fmt.precision)
    return fmt if p == fmt.precision else get_format(DEFAULT_FORMAT[p])


def die_format(system: System, die: str, fmt: Format) -> Format:
    """The weight format a die holds: `fmt` if it computes in or expands that precision, else the fallback's."""
    return type_format(system.die_type(die), fmt)


def die_recipe(system: System, die: str, recipe: Recipe) -> Recipe:
    """The recipe a die holds: every format passed through the die's precision fallback.

    The compiler decides this once and writes it into each plan stage; everything after it reads
    `Plan.stage_recipe` instead of calling this again."""
    return recipe.map(lambda f: die_format(system, die, f))


def type_rates(dt: DieType, bytes_per_s: float, fmt: Format, die: str = "", prefill: bool = False) -> DieRates:
    """A die type's roofline rates for weights in `fmt`, reading its DRAM at `bytes_per_s`; `prefill`: for a step of
    many new tokens, at the die's prefill compute efficiency where it states one."""
    wp = type_supported(dt, fmt.precision)
    ap = type_supported(dt, dt.activation_precision)
    eff = dt.prefill_compute_efficiency if prefill and dt.prefill_compute_efficiency else dt.compute_efficiency
    return DieRates(die, wp, ap, dt.tops[wp] * TERA * eff, dt.tops[ap] * TERA * eff, bytes_per_s, dt.op_overhead_s)


def die_rates(system: System, die: str, fmt: Format, prefill: bool = False) -> DieRates:
    return type_rates(system.die_type(die), system.die_bandwidth_bytes_per_s(die), fmt, die, prefill)


def is_prefill(w: Workload) -> bool:
    """A step of several new tokens per sequence runs the engine's prefill path."""
    return w.new_tokens > 1


def op_times(c: OpCosts, r: DieRates) -> tuple[np.ndarray, np.ndarray]:
    """(compute seconds, memory seconds) of each op on a die."""
    return c.weight_flop / r.weight_flop_per_s + c.act_flop / r.act_flop_per_s, c.read_bytes / r.bytes_per_s


def roofline_s(compute_s: np.ndarray, read_bytes: np.ndarray, bytes_per_s: float) -> np.ndarray:
    """Seconds of each op: its compute time or its DRAM read time, whichever is longer (the roofline).
    The one roofline: the predictor, the compiler's search and the calibration's fit all call it."""
    return np.maximum(compute_s, read_bytes / bytes_per_s)


def block_times(graph: Graph, c: OpCosts, r: DieRates) -> np.ndarray:
    """Seconds each block takes on this die for the workload behind `c`."""
    comp, _ = op_times(c, r)
    return block_sums(graph, roofline_s(comp, c.read_bytes, r.bytes_per_s)) + r.op_overhead_s


def core_sharing(system: System, busy: list[str]) -> float:
    """How many times longer each of the dies `busy` computes when they all compute at once: 1 for dies with
    silicon of their own; for dies emulated on the host's CPU (`DieType.host_threads`), their threads together
    against the host's cores, when they outnumber them: the cores are time-shared, and of their time only
    `cpu.time_share_efficiency` still does work (the rest goes to switching and to threads waiting on each other)."""
    threads = [system.die_type(d).host_threads for d in busy]
    if len(busy) < 2 or any(t is None for t in threads):
        return 1.0
    cpu = system.host.cpu
    over = sum(t for t in threads if t is not None) / cpu.cores
    return over / cpu.time_share_efficiency if over > 1.0 else 1.0


def transfer_s(system: System, a: str, b: str, nbytes: float) -> float:
    """Time to move `nbytes` from node a to node b along the quickest route (per hop)."""
    return sum(link.transfer_s(nbytes) for link in system.route(a, b, nbytes))


def required_bandwidth_bytes_per_s(bytes_per_token: float, tokens_per_s: float) -> float:
    """The talk's arithmetic: each generated token reads the whole model once."""
    return bytes_per_token * tokens_per_s


@dataclass(frozen=True)
class StageCost:
    """Time of one stage for one workload step, split for explanation."""

    die: str
    compute_s: float      # sum over ops of compute time
    memory_s: float       # sum over ops of memory time
    time_s: float         # sum over ops of the roofline max, plus overheads
    link_out_s: float     # sending the stage's output to the next stage (or the host)
    read_bytes: float
    flop: float


def stage_cost(graph: Graph, system: System, die: str, blocks: range, recipe: Recipe, w: Workload,
               kv_element_bytes: float, next_node: str, out_bytes: float, costs: OpCosts | None = None) -> StageCost:
    """One stage's time for one step of `w`, its die holding `recipe` (already resolved: Plan.stage_recipe)."""
    r = die_rates(system, die, recipe.default, is_prefill(w))
    c = costs if costs is not None else op_costs(graph, recipe, w, r.act_element_bytes, kv_element_bytes)
    comp, mem = op_times(c, r)
    mask = np.isin(graph.op_block, list(blocks))
    dt = system.die_type(die)
    t = (float(roofline_s(comp, c.read_bytes, r.bytes_per_s)[mask].sum()) + r.op_overhead_s * len(blocks)
         + dt.step_overhead_s  # the die's own cost each time its stage runs
         + (dt.prefill_overhead_s if is_prefill(w) else 0.0))  # and its return to work after idling through a prefill
    link = transfer_s(system, die, next_node, out_bytes) if next_node != die else 0.0
    return StageCost(die, float(comp[mask].sum()), float(mem[mask].sum()), t, link,
                     float(c.read_bytes[mask].sum()), float((c.weight_flop + c.act_flop)[mask].sum()))


def out_bytes(graph: Graph, block_end: int, tokens: int, act_element_bytes: float) -> float:
    """Bytes a stage ending before `block_end` sends on: a hidden state, or fp32 logits to the host."""
    last = block_end - 1
    if last == graph.n_blocks - 1:
        return tokens * graph.hidden_features[last] * 4.0
    return tokens * graph.hidden_features[last] * act_element_bytes


def host_in_bytes(tokens: int) -> float:
    """The host sends token ids (int32) to the first stage."""
    return 4.0 * tokens


__all__ = ["DieRates", "StageCost", "core_sharing", "die_rates", "is_prefill", "type_rates", "type_format", "type_supported", "die_format", "die_recipe", "supported", "op_times", "roofline_s", "block_times",
           "transfer_s", "stage_cost", "required_bandwidth_bytes_per_s", "out_bytes", "host_in_bytes", "HOST"]
