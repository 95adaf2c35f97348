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
