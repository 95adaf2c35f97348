"""The predicted fine-tuning step: the 1F1B schedule's arithmetic and what changes it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.compile.train import TrainSpec
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system
from chipfuse.sim.train import predict_train

SMOL = load_model_config("smollm2-135m")


def plan(n: int):
    return compile_plan(SMOL, load_system("talk-4die-d2d"), "int8", context=256, batch=1, prompt_tokens=64,
                        max_dies=n, split="pipeline")


def test_one_die_runs_its_micro_batches_back_to_back():
    spec = TrainSpec(seq_len=128, micro_batch=2, micro_batches=5)
    p = predict_train(plan(1), spec)
    d = p.dies[0]
    assert p.bubble == 0
    assert p.step_s == pytest.approx(5 * (d.forward_s + d.backward_s))
    assert p.tokens_per_s == pytest.approx(2 * 5 * 128 / p.step_s)


def test_the_pipeline_fills_once_then_the_slowest_die_paces_it():
    spec = TrainSpec(seq_len=128, micro_batch=2, micro_batches=8)
    p = predict_train(plan(4), spec)
    rounds = [d.forward_s + d.backward_s for d in p.dies]
    assert p.bubble == pytest.approx(3 / 11)
    assert p.step_s == pytest.approx(sum(rounds) + sum(d.link_s for d in p.dies) + 7 * max(rounds))
    assert all(d.link_s > 0 for d in p.dies[:-1]) and p.dies[-1].link_s == 0


def test_checkpointing_costs_a_forward_and_more_micro_batches_cost_more_time():
    spec = TrainSpec(seq_len=128, micro_batch=2, micro_batches=4)
    base = predict_train(plan(2), spec)
    ck = predict_train(plan(2), replace(spec, checkpointing=True))
    for a, b in zip(base.dies, ck.dies):
        assert b.backward_s == pytest.approx(a.backward_s + a.forward_s)
    assert predict_train(plan(2), replace(spec, micro_batches=8)).step_s > base.step_s
    assert base.j_per_step == pytest.approx(base.power_w * base.step_s)


def test_a_die_with_its_own_training_rate_runs_the_step_at_it():
    """DieType.train (what `chipfuse probe --train` measures): FLOP of the forward and backward at its rate plus its
    fixed cost per layer, in place of the prefill roofline."""
    import numpy as np

    from chipfuse.hw.load import parse_system
    from chipfuse.ir.graph import Workload, op_costs
    from chipfuse.ir.llm import build_llm_graph

    d = load_system("talk-4die-d2d").model_dump(mode="json", exclude_none=True)
    for dt in d["die_types"].values():
        dt["train"] = {"tops": 0.2, "layer_overhead_s": 0.004}
    sysm = parse_system(d, "test")
    p = compile_plan(SMOL, sysm, "int8", context=256, batch=1, prompt_tokens=64, max_dies=2, split="pipeline")
    spec = TrainSpec(seq_len=128, micro_batch=2, micro_batches=3)
    pred = predict_train(p, spec)
    graph = build_llm_graph(SMOL)
    for j, st in enumerate(p.stages):
        c = op_costs(graph, p.stage_recipe(j), Workload.prefill(128, 2), 2.0, 2.0)
        mask = np.isin(graph.op_block, list(range(*st.blocks)))
        flop = float((2 * c.weight_flop + 3 * c.act_flop)[mask].sum())
        layers = sum(1 for b in range(*st.blocks) if 1 <= b <= SMOL.num_layers)
        d_ = pred.dies[j]
        assert d_.forward_s + d_.backward_s == pytest.approx(flop / 0.2e12 + 0.004 * layers, rel=1e-6)
    assert pred.step_s > predict_train(plan(2), spec).step_s  # 0.2 TFLOP/s is slower than the preset's roofline
