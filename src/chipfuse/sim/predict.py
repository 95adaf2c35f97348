"""Predict a plan's speed: time to first token, decode tokens/s, and each stage's bottleneck in words."""

from __future__ import annotations

import math
from dataclasses import replace

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
    stage_positions,
    structure_problems,
    unsupported_problem,
)
from ..quant.formats import PRECISION_BYTES, get_format
from .collectives import gather_to_host_s, hand_over_s, scatter_from_host_s
from .perf import (
    die_rates,
    host_in_bytes,
    out_bytes,
    stage_cost,
)
from .tensor import group_step

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
        pred = _predict(plan, graph, system)
        return pred.model_copy(update={"energy": _energy(plan, pred, graph, system),
                                       "shared_dram": _shared_dram(plan, graph, system)})
    except (ValidationError, ZeroDivisionError, OverflowError) as err:
        raise ChipfuseError(f"{system.name}: the performance model gives no usable figures for this plan "
                            f"({_first_problem(err)}); a rate, size or latency in the system description is "
                            f"outside any real range: check its numbers") from None


def _energy(plan: Plan, pred: Prediction, graph: Graph, system: System):
    from ..plan.plan import EnergyPrediction
    from .energy import plan_energy

    e = plan_energy(plan, pred, graph, system)
    return EnergyPrediction(j_per_token=e.j_per_token, compute_j_per_token=e.compute_j_per_token,
                            dram_j_per_token=e.dram_j_per_token, link_j_per_token=e.link_j_per_token,
                            static_j_per_token=e.static_j_per_token, power_w=e.power_w, peak_power_w=e.peak_power_w,
                            fanless_w=e.fanless_w, fanless=e.fanless, assumed=list(e.assumed))


def _shared_dram(plan: Plan, graph: Graph, system: System):
    """For a plan with dies on the host's DRAM: its decode rate with no other master, and with a 4K60 display."""
    from ..plan.plan import SharedDramEffect

    if not any(system.die_type(st.die).memory.shared for st in plan.stages):
        return None
    t = system.host.traffic

    def rate(**traffic) -> float:
        host = system.host.model_copy(update={"traffic": t.model_copy(update=traffic)})
        other = system.model_copy(update={"host": host})
        if any(other.die_bandwidth_bytes_per_s(st.die) <= 0 for st in plan.stages):
            return 0.0  # that traffic takes all of the DRAM the dies would read: they would not decode at all
        return _predict(plan, graph, other).decode_tokens_per_s

    display = t.display_width_px * t.display_height_px * t.bytes_per_pixel * t.refresh_hz
    return SharedDramEffect(
        display=f"{t.display_width_px} x {t.display_height_px} at {t.refresh_hz:g} Hz" if display else "none",
        display_gb_per_s=display / GB, other_gb_per_s=t.other_gb_per_s,
        decode_tokens_per_s_alone=rate(display_width_px=0, display_height_px=0, other_gb_per_s=0.0),
        decode_tokens_per_s_4k60=rate(display_width_px=3840, display_height_px=2160, bytes_per_pixel=4,
                                      refresh_hz=60.0))


def _first_problem(err: Exception) -> str:
    """A short account of why the figures are unusable."""
    if isinstance(err, ValidationError):
        e = err.errors()[0]
        return f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}"
    return str(err)


def shard_parts(graph: Graph, stage) -> dict[str, int]:
    """A stage's part of each shard axis (everything for a layers stage)."""
    widths = graph.shard_widths
    sh = stage.shard
    if sh is None:
        return dict(widths)
    return {"kv_heads": sh.kv_heads[1], "mlp_columns": sh.mlp_columns[1],
            "vocab": sh.vocab[1] if sh.vocab is not None else widths["vocab"]}


def _predict(plan: Plan, graph: Graph, system: System) -> Prediction:
    """The performance model proper, on a checked plan: pipeline positions in turn (a layers stage, or a
    tensor group of shard stages), each handing its output to the next position's dies."""
    wl = plan.workload
    kv_element_bytes = PRECISION_BYTES[get_format(wl.kv_precision).precision]
    positions = stage_positions(plan.stages)
    n = len(positions)
    micro = min(wl.batch, n)
    seqs = math.ceil(wl.batch / micro)
    dec = Workload.decode(wl.decode_context, seqs)
    pre = Workload.prefill(wl.prompt_tokens, 1)
    one = Workload.decode(wl.decode_context, 1)
    first = [st.die for _, st in positions[0]]
    stages: list[StagePrediction] = []
    slowest, per_token = 0.0, 0.0
    ttft = system.host.overhead_per_token_s + scatter_from_host_s(system, first, host_in_bytes(wl.prompt_tokens))
    round_trip = scatter_from_host_s(system, first, host_in_bytes(seqs))
    for p, pos in enumerate(positions):
        nxt = [st.die for _, st in positions[p + 1]] if p + 1 < n else [HOST]
        if pos[0][1].kind == "layers":
            i, st = pos[0]
            d, pr, sp, read1 = _layers_position(plan, graph, system, i, st, nxt, dec, pre, one, kv_element_bytes, seqs)
            stages.append(sp)
            cost, link, pre_s = d.time_s, d.link_out_s, pr
        else:
            cost, link, pre_s, read1, sps = _group_position(plan, graph, system, pos, nxt, dec, pre, one,
                                                            kv_element_bytes, seqs)
            stages += sps
        ttft += pre_s
        round_trip += cost + link
        slowest = max(slowest, cost, link)
        per_token += read1
    round_trip += system.host.overhead_per_token_s * seqs
    cycle = max(round_trip, micro * slowest)
    notes = []
    if wl.batch == 1 and n > 1:
        notes.append("batch 1: one token is in flight, so the pipeline positions take turns; more of them add memory "
                     "and throughput for concurrent requests, not single-stream speed")
    if micro * slowest > round_trip:
        notes.append(f"{micro} micro-batches in flight; the slowest stage sets the pace")
    return Prediction(ttft_s=ttft, decode_tokens_per_s=wl.batch / cycle, decode_tokens_per_s_per_request=1 / cycle,
                      decode_step_s=cycle, micro_batches=micro, bytes_read_per_token=per_token, stages=stages,
                      notes=notes)


def _layers_position(plan: Plan, graph: Graph, system: System, j: int, st, nxt: list[str], dec: Workload,
                     pre: Workload, one: Workload, kv_element_bytes: float, seqs: int):
    """A die holding whole layers: (decode StageCost, prefill seconds with its link, its StagePrediction,
    bytes it reads for one token at batch 1)."""
    wl = plan.workload
    blocks = range(*st.blocks)
    f = plan.stage_recipe(j)
    r = die_rates(system, st.die, f.default)
    to_host = nxt == [HOST]
    c = op_costs(graph, f, dec, r.act_element_bytes, kv_element_bytes)
    d = stage_cost(graph, system, st.die, blocks, f, dec, kv_element_bytes, nxt[0],
                   out_bytes(graph, st.blocks[1], seqs, r.act_element_bytes), c)
    cp = op_costs(graph, f, pre, r.act_element_bytes, kv_element_bytes)
    pre_out = out_bytes(graph, st.blocks[1], 1 if to_host else wl.prompt_tokens, r.act_element_bytes)
    p = stage_cost(graph, system, st.die, blocks, f, pre, kv_element_bytes, nxt[0], pre_out, cp)
    pre_link = p.link_out_s
    if len(nxt) > 1:  # the next position is a tensor group: every die of it takes the hidden state
        d = replace(d, link_out_s=hand_over_s(system, [st.die], nxt, out_bytes(graph, st.blocks[1], seqs,
                                                                                r.act_element_bytes)))
        pre_link = hand_over_s(system, [st.die], nxt, pre_out)
    bound = "link" if d.link_out_s > d.time_s else ("memory" if d.memory_s > d.compute_s else "compute")
    need = d.read_bytes / d.compute_s / GB if d.compute_s > 0 else None
    has = r.bytes_per_s / GB
    sp = StagePrediction(
        die=st.die, decode_s=d.time_s, prefill_s=p.time_s, link_out_s=d.link_out_s, bound=bound,
        compute_utilisation=d.compute_s / d.time_s if d.time_s else 0.0,
        bandwidth_needed_gb_per_s=need, bandwidth_has_gb_per_s=has, read_bytes_per_step=d.read_bytes,
        reason=_reason(st.die, bound, r.weight_precision, d.compute_s, d.memory_s, d.link_out_s, d.time_s, need, has))
    c1 = op_costs(graph, f, one, r.act_element_bytes, kv_element_bytes)
    read1 = float(c1.read_bytes[np.isin(graph.op_block, list(blocks))].sum())
    return d, p.time_s + pre_link, sp, read1


def _group_position(plan: Plan, graph: Graph, system: System, pos, nxt: list[str], dec: Workload, pre: Workload,
                    one: Workload, kv_element_bytes: float, seqs: int):
    """A tensor group: (decode seconds, its output link, prefill seconds with its link, bytes read for one token
    at batch 1, one StagePrediction per die)."""
    wl = plan.workload
    dies = [st.die for _, st in pos]
    recipes = [plan.stage_recipe(i) for i, _ in pos]
    parts = [shard_parts(graph, st) for _, st in pos]
    s, e = pos[0][1].blocks
    gd = group_step(graph, system, dies, parts, recipes, dec, kv_element_bytes)
    gp = group_step(graph, system, dies, parts, recipes, pre, kv_element_bytes)
    g1 = group_step(graph, system, dies, parts, recipes, one, kv_element_bytes)
    act = max(die_rates(system, d, r.default).act_element_bytes for d, r in zip(dies, recipes))
    hidden = graph.hidden_features[1] * act
    if nxt == [HOST]:
        link = gather_to_host_s(system, [(d, 4.0 * seqs * p["vocab"]) for d, p in zip(dies, parts)])
        pre_link = gather_to_host_s(system, [(d, 4.0 * p["vocab"]) for d, p in zip(dies, parts)])
    else:
        link = hand_over_s(system, dies, nxt, hidden * seqs)
        pre_link = hand_over_s(system, dies, nxt, hidden * wl.prompt_tokens)
    t = float(gd.block_s[s:e].sum())
    coll = float(gd.collective_s[s:e].sum())
    layers = sum(1 for b in graph.blocks[s:e] if b.kind == "layer")
    widths = graph.shard_widths
    sps = []
    for i, (die, r) in enumerate(zip(dies, recipes)):
        rates = die_rates(system, die, r.default)
        comp, mem = float(gd.die_compute_s[i, s:e].sum()), float(gd.die_memory_s[i, s:e].sum())
        read = float(gd.die_read_bytes[i, s:e].sum())
        bound = "link" if coll + link > t - coll else ("memory" if mem > comp else "compute")
        need = read / comp / GB if comp > 0 else None
        share = (f"{parts[i]['kv_heads']}/{widths['kv_heads']} KV heads, {parts[i]['mlp_columns']}/"
                 f"{widths['mlp_columns']} MLP columns")
        has = rates.bytes_per_s / GB
        reads = f"reads {read / 1e9:.3g} GB a step at {has:.1f} GB/s"
        reason = (f"{die}: {bound}-bound shard {i + 1} of {len(dies)} ({share}), {reads}; the group's step takes "
                  f"{t * 1e6:.0f} us, "
                  f"{coll * 1e6:.0f} us of it in {2 * layers} all-reduces ({gd.algorithm}, "
                  f"{gd.allreduce_s * 1e6:.1f} us each)")
        sps.append(StagePrediction(
            die=die, decode_s=t, prefill_s=float(gp.block_s[s:e].sum()), link_out_s=link, bound=bound,
            compute_utilisation=comp / t if t else 0.0, bandwidth_needed_gb_per_s=need,
            bandwidth_has_gb_per_s=has, read_bytes_per_step=read, reason=reason))
    return t, link, float(gp.block_s[s:e].sum()) + pre_link, float(g1.die_read_bytes[:, s:e].sum()), sps
