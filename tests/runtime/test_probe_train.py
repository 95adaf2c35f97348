"""`chipfuse probe --train`: the training rate it fits predicts a micro-batch size it was not fitted on."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_the_fitted_training_rate_predicts_another_micro_batch():
    from chipfuse.frontends import load_model_config
    from chipfuse.ir.graph import Workload, op_costs
    from chipfuse.ir.llm import build_llm_graph
    from chipfuse.plan.train import LoraSpec
    from chipfuse.quant.formats import Recipe, get_format
    from chipfuse.runtime.lora import TrainStage
    from chipfuse.runtime.probe import TRAIN_SHAPES, measure_train

    tops, overhead = measure_train()
    assert 0 < tops < 1000 and 0 <= overhead < 1
    b, t = 3, 96
    assert (b, t) not in TRAIN_SHAPES
    cfg = load_model_config("smollm2-135m").model_copy(update={"num_layers": 1, "vocab_size": 64})
    w = {"embed": torch.randn(64, cfg.hidden_size)}
    shapes = {"q_proj": (cfg.q_dim, cfg.hidden_size), "k_proj": (cfg.kv_dim, cfg.hidden_size),
              "v_proj": (cfg.kv_dim, cfg.hidden_size), "o_proj": (cfg.hidden_size, cfg.q_dim),
              "gate_proj": (cfg.intermediate_size, cfg.hidden_size), "up_proj": (cfg.intermediate_size, cfg.hidden_size),
              "down_proj": (cfg.hidden_size, cfg.intermediate_size)}
    for n, s in shapes.items():
        w[f"layers.0.{n}"] = torch.randn(*s) / s[1] ** 0.5
    w["layers.0.attn_norm"] = w["layers.0.mlp_norm"] = torch.ones(cfg.hidden_size)
    stage = TrainStage(cfg, w, (1, 2), get_format("fp32"), LoraSpec(), 0)
    x = torch.randn(b, t, cfg.hidden_size)
    best = float("inf")
    for _ in range(4):
        xi = x.clone().requires_grad_()
        t0 = time.perf_counter()
        out = stage.forward(xi, key=(0, 0))
        out.backward(torch.ones_like(out))
        best = min(best, time.perf_counter() - t0)
        for p in stage.parameters():
            p.grad = None
    graph = build_llm_graph(cfg)
    c = op_costs(graph, Recipe.of(get_format("fp32")), Workload.prefill(t, b), 4.0, 2.0)
    flop = float((2 * c.weight_flop + 3 * c.act_flop)[np.isin(graph.op_block, [1])].sum())
    predicted = overhead + flop / (tops * 1e12)
    assert predicted == pytest.approx(best, rel=0.5), (predicted, best)  # a loose bound: timings on a shared machine
