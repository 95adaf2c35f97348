"""Predict a LoRA fine-tuning step on a pipeline plan: seconds, tokens/s, joules and watts.

A die's forward over one micro-batch (B sequences of T tokens) is the roofline of its blocks' ops
at prefill (the same op costs `predict` uses). Its backward over a frozen base computes only the
inputs' gradients: one more pass of every weight product (the weights read again) and twice the
attention's activation products; with checkpointing the forward runs again first. A die type that states
its own training rate (`DieType.train`: what `chipfuse probe --train` measures of autograd on this host)
runs those FLOP at that rate plus a fixed cost per layer instead of the prefill roofline. Hidden states go
forward and their gradients come back (FP32, B x T x hidden each way). The one-forward-one-backward
schedule of M micro-batches over S dies takes the sum of every die's first micro-batch and then
M - 1 rounds of the slowest die: the bubble is (S - 1) / (M + S - 1) of the step for balanced dies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.spec import System
from ..ir.graph import Graph, Workload, op_costs
from ..ir.llm import build_llm_graph
from ..plan.plan import Plan
from ..plan.train import TrainSpec, check_trainable
from ..quant.formats import PRECISION_BYTES, get_format
from .energy import memory_pj_per_byte, pj_per_op, route_j_per_byte, static_w
from .perf import die_rates, roofline_s, transfer_s

FP32 = 4.0


@dataclass(frozen=True)
class DieTrainStep:
    die: str
    forward_s: float  # one micro-batch
    backward_s: float  # one micro-batch (its recomputed forward included, with checkpointing)
    link_s: float  # the hidden state on and its gradient back, one micro-batch
    dynamic_j: float  # one step: every micro-batch's compute, DRAM reads and link bytes


@dataclass(frozen=True)
class TrainPrediction:
    step_s: float
    tokens_per_s: float  # tokens of the step's sequences (padding included) per second
    bubble: float  # the share of the step a balanced die idles: (S - 1) / (M + S - 1)
    j_per_step: float
    power_w: float
    dies: tuple[DieTrainStep, ...]
    assumed: tuple[str, ...]


def predict_train(plan: Plan, spec: TrainSpec, tokens_per_sequence: int | None = None, graph: Graph | None = None,
                  system: System | None = None) -> TrainPrediction:
    """The step of `spec` (sequences of `tokens_per_sequence`, default spec.seq_len) on `plan`'s dies."""
    from ..frontends.config import ModelConfig
    from .predict import _plan_system

    check_trainable(plan)
    system = system or _plan_system(plan)
    cfg = ModelConfig.model_validate(plan.models[0].config)
    graph = graph or build_llm_graph(cfg)
    t = tokens_per_sequence or spec.seq_len
    b, m = spec.micro_batch, spec.micro_batches
    wl = Workload.prefill(t, b)
    kv_bytes = PRECISION_BYTES[get_format(plan.workload.kv_precision).precision]
    hidden_bytes = b * t * cfg.hidden_size * FP32
    assumed: set[str] = set()
    dies = []
    for j, st in enumerate(plan.stages):
        recipe = plan.stage_recipe(j)
        r = die_rates(system, st.die, recipe.default, prefill=True)
        c = op_costs(graph, recipe, wl, r.act_element_bytes, kv_bytes)
        mask = np.isin(graph.op_block, list(range(*st.blocks)))
        n_ops = len(range(*st.blocks))
        path = system.die_type(st.die).train
        if path is not None:  # the die's measured training rate and per-layer cost (chipfuse probe --train)
            rate = path.tops * 1e12
            fwd_flop = float((c.weight_flop + c.act_flop)[mask].sum())
            bwd_flop = float((c.weight_flop + 2 * c.act_flop)[mask].sum())
            layers = sum(1 for b in range(*st.blocks) if 1 <= b <= cfg.num_layers)
            share = fwd_flop / (fwd_flop + bwd_flop) if fwd_flop + bwd_flop else 0.5
            fwd = fwd_flop / rate + share * path.layer_overhead_s * layers
            bwd = bwd_flop / rate + (1 - share) * path.layer_overhead_s * layers
        else:
            w_s = c.weight_flop / r.weight_flop_per_s
            a_s = c.act_flop / r.act_flop_per_s
            fwd = float(roofline_s(w_s + a_s, c.read_bytes, r.bytes_per_s)[mask].sum()) + r.op_overhead_s * n_ops
            bwd = float(roofline_s(w_s + 2 * a_s, c.read_bytes, r.bytes_per_s)[mask].sum()) + r.op_overhead_s * n_ops
        if spec.checkpointing:
            bwd += fwd
        link = 0.0
        if j + 1 < len(plan.stages):
            nxt = plan.stages[j + 1].die
            link = transfer_s(system, st.die, nxt, hidden_bytes) + transfer_s(system, nxt, st.die, hidden_bytes)
        passes = 3.0 if spec.checkpointing else 2.0  # weight products: forward, input gradients (+ recompute)
        flop_w = float(c.weight_flop[mask].sum()) * passes
        flop_a = float(c.act_flop[mask].sum()) * (passes + 1.0)
        read = float(c.read_bytes[mask].sum()) * passes
        compute_j = (flop_w * pj_per_op(system, st.die, r.weight_precision, assumed)
                     + flop_a * pj_per_op(system, st.die, r.act_precision, assumed)) * 1e-12
        dram_j = read * memory_pj_per_byte(system, st.die) * 1e-12
        link_j = 2 * hidden_bytes * route_j_per_byte(system, st.die, plan.stages[j + 1].die, hidden_bytes) \
            if j + 1 < len(plan.stages) else 0.0
        dies.append(DieTrainStep(st.die, fwd, bwd, link, (compute_j + dram_j + link_j) * m))
    rounds = [d.forward_s + d.backward_s for d in dies]
    step_s = sum(rounds) + sum(d.link_s for d in dies) + (m - 1) * max(max(rounds), max(d.link_s for d in dies))
    s_count = len(dies)
    j_step = sum(d.dynamic_j for d in dies) + static_w(system) * step_s
    return TrainPrediction(step_s=step_s, tokens_per_s=b * m * t / step_s, bubble=(s_count - 1) / (m + s_count - 1),
                           j_per_step=j_step, power_w=j_step / step_s, dies=tuple(dies),
                           assumed=tuple(sorted(assumed)))
