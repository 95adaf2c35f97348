"""Predict a plan's speed: time to first token, decode tokens/s, and each stage's bottleneck in words."""

from __future__ import annotations

import math

import numpy as np
from pydantic import ValidationError

from ..errors import ChipfuseError, SpecError
from ..hw.spec import HOST, System
from ..ir.graph import Graph, Workload, op_costs
from ..ir.llm import build_llm_graph
from ..plan.plan import (
    Plan,
    Prediction,
    StagePrediction,
    model_configs,
    structure_problems,
    unsupported_problem,
)
from ..quant.formats import PRECISION_BYTES, get_format
from .perf import (
    die_rates,
    host_in_bytes,
    out_bytes,
    stage_cost,
    transfer_s,
)

GB = 1e9


def _reason(die: str, bound: str, precision: str, comp: float, mem: float, link: float, step: float,
            need_gbps: float | None, has_gbps: float) -> str:
    if bound == "link":
        return (f"{die}: link-bound; sending its output takes {link * 1e6:.0f} us against "
                f"{step * 1e6:.0f} us of work")
    if bound == "memory" and need_gbps is None:
        return f"{die}: memory-bound; it only moves data ({has_gbps:.1f} GB/s)"
    if bound == "memory":
        return (f"{die}: memory-bound; needs {need_gbps:.1f} GB/s to keep its {precision} compute busy, "
                f"has {has_gbps:.1f} GB/s")
    return (f"{die}: compute-bound at {precision} ({100 * comp / step:.0f}% of the step computing); "
            f"its memory traffic takes {mem / comp:.0%} of the compute time at {has_gbps:.1f} GB/s")


def _plan_system(plan: Plan) -> System:
    """The plan's embedded system, validated; a bad one is a SpecError, not a traceback."""
    from ..hw.load import format_validation_error

    try:
        return System.model_validate(plan.system)
    except ValidationError as err:
        raise SpecError(format_validation_error("plan's system", err)) from None


def _check_plan(plan: Plan, system: System):
    """The plan's ModelConfig, after checking the plan's stages still fit the model and system
    (a plan is mutable after it is built, so its validator's verdict may be stale) and that this
    chipfuse can predict it (one model, "layers" stages only)."""
    configs, bad = model_configs(plan)
    if not bad and plan.models:
        bad = structure_problems(plan, configs, system, same_system=False)
    if bad:
        raise ChipfuseError("cannot predict an invalid plan:\n" + "\n".join("  " + b for b in bad))
    why = unsupported_problem(plan)
    if why:
        raise ChipfuseError(f"cannot predict this plan: {why}")
    return configs[plan.model.id]


def predict(plan: Plan, graph: Graph | None = None, system: System | None = None) -> Prediction:
    """Evaluate the performance model for a plan. Pure: rebuilds the IR from the plan if needed.

    An invalid plan or system, or figures no real system gives (inf, NaN, negative), are ChipfuseErrors."""
    system = system or _plan_system(plan)
    cfg = _check_plan(plan, system)
    graph = graph or build_llm_graph(cfg)
    try:
        return _predict(plan, graph, system)
    except (ValidationError, ZeroDivisionError, OverflowError) as err:
        raise ChipfuseError(f"{system.name}: the performance model gives no usable figures for this plan "
                            f"({_first_problem(err)}); a rate, size or latency in the system description is "
                            f"outside any real range: check its numbers") from None


def _first_problem(err: Exception) -> str:
    """A short account of why the figures are unusable."""
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        return f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}"
    return str(err)


def _predict(plan: Plan, graph: Graph, system: System) -> Prediction:
    """The performance model proper, on a checked plan."""
    wl = plan.workload
    kv_element_bytes = PRECISION_BYTES[get_format(wl.kv_precision).precision]
    n = len(plan.stages)
    micro = min(wl.batch, n)
    seqs = math.ceil(wl.batch / micro)
    dec = Workload.decode(wl.context, seqs)
    pre = Workload.prefill(wl.prompt_tokens, 1)
    stages, round_trip, slowest, held = [], 0.0, 0.0, []
    ttft = system.host.overhead_per_token_s + transfer_s(system, HOST, plan.stages[0].die, host_in_bytes(wl.prompt_tokens))
    round_trip += transfer_s(system, HOST, plan.stages[0].die, host_in_bytes(seqs))
    for j, st in enumerate(plan.stages):
        nxt = plan.stages[j + 1].die if j + 1 < n else HOST
        blocks = range(*st.blocks)
        f = plan.stage_recipe(j)
        r = die_rates(system, st.die, f.default)
        held.append((f, r))
        c = op_costs(graph, f, dec, r.act_element_bytes, kv_element_bytes)
        d = stage_cost(graph, system, st.die, blocks, f, dec, kv_element_bytes, nxt, out_bytes(graph, st.blocks[1], seqs, r.act_element_bytes), c)
        cp = op_costs(graph, f, pre, r.act_element_bytes, kv_element_bytes)
        p = stage_cost(graph, system, st.die, blocks, f, pre, kv_element_bytes, nxt,
                       out_bytes(graph, st.blocks[1], 1 if nxt == HOST else wl.prompt_tokens, r.act_element_bytes), cp)
        ttft += p.time_s + p.link_out_s
        round_trip += d.time_s + d.link_out_s
        slowest = max(slowest, d.time_s, d.link_out_s)
        bound = "link" if d.link_out_s > d.time_s else ("memory" if d.memory_s > d.compute_s else "compute")
        need = d.read_bytes / d.compute_s / GB if d.compute_s > 0 else None
        has = r.bytes_per_s / GB
        stages.append(StagePrediction(
            die=st.die, decode_s=d.time_s, prefill_s=p.time_s, link_out_s=d.link_out_s, bound=bound,
            compute_utilisation=d.compute_s / d.time_s if d.time_s else 0.0,
            bandwidth_needed_gb_per_s=need, bandwidth_has_gb_per_s=has, read_bytes_per_step=d.read_bytes,
            reason=_reason(st.die, bound, r.weight_precision, d.compute_s, d.memory_s, d.link_out_s, d.time_s, need, has)))
    round_trip += system.host.overhead_per_token_s * seqs
    cycle = max(round_trip, micro * slowest)
    # bytes read for one token at batch 1: what the talk's "reads the whole model" counts
    one = Workload.decode(wl.context, 1)
    per_token = 0.0
    for st, (f, r) in zip(plan.stages, held):
        c = op_costs(graph, f, one, r.act_element_bytes, kv_element_bytes)
        per_token += float(c.read_bytes[np.isin(graph.op_block, list(range(*st.blocks)))].sum())
    notes = []
    if wl.batch == 1 and n > 1:
        notes.append("batch 1: one token is in flight, so the dies take turns; more dies add memory and "
                     "throughput for concurrent requests, not single-stream speed")
    if micro * slowest > round_trip:
        notes.append(f"{micro} micro-batches in flight; the slowest stage sets the pace")
    return Prediction(ttft_s=ttft, decode_tokens_per_s=wl.batch / cycle, decode_tokens_per_s_per_request=1 / cycle,
                      decode_step_s=cycle, micro_batches=micro, bytes_read_per_token=per_token, stages=stages,
                      notes=notes)
