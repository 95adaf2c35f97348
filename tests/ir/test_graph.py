"""The IR's byte and FLOP counts, checked against numbers computed by hand from the architecture."""

from __future__ import annotations

import numpy as np
import pytest

from chipfuse.frontends import load_model_config
from chipfuse.ir.graph import Workload, block_weight_bytes, kv_cache_bytes, op_costs, tied_shared_bytes
from chipfuse.ir.llm import build_llm_graph
from chipfuse.quant.formats import Recipe, get_format


def _params(cfg) -> int:
    """Parameters of a Llama-style decoder, written out by hand (norms included, tied table once)."""
    h, kv, inter, L, V = cfg.hidden_size, cfg.kv_dim, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    layer = h * cfg.q_dim + 2 * h * kv + cfg.q_dim * h + 3 * h * inter + 2 * h
    return V * h * (1 if cfg.tied_embeddings else 2) + L * layer + h


@pytest.mark.parametrize("name", ["smollm2", "llama-2-7b", "qwen2.5-0.5b"])
def test_fp32_weight_bytes_are_four_per_parameter(name):
    cfg = load_model_config(name)
    g = build_llm_graph(cfg)
    fp32 = Recipe.of(get_format("fp32"))
    total = block_weight_bytes(g, fp32).sum() - tied_shared_bytes(g, fp32, range(g.n_blocks))
    bias = 0 if not cfg.attention_bias else 4 * cfg.num_layers * (cfg.q_dim + 2 * cfg.kv_dim)
    assert total == 4 * _params(cfg) + bias


def test_blocks_are_embedding_layers_head():
    cfg = load_model_config("smollm2")
    g = build_llm_graph(cfg)
    assert g.n_blocks == cfg.num_layers + 2
    assert [b.kind for b in g.blocks][:2] == ["embedding", "layer"] and g.blocks[-1].kind == "head"


def test_kv_cache_is_two_vectors_per_layer_per_token():
    cfg = load_model_config("llama-2-7b")
    g = build_llm_graph(cfg)
    kv = kv_cache_bytes(g, 2.0, context=4096, seqs=1)
    assert kv.sum() == 2 * cfg.num_layers * cfg.kv_dim * 2.0 * 4096  # K and V, fp16


def test_decode_flop_is_about_two_per_weight():
    """One decode token multiplies every weight once (a MAC is 2 FLOP); attention over a short context adds little."""
    cfg = load_model_config("llama-2-7b")
    g = build_llm_graph(cfg)
    c = op_costs(g, Recipe.of(get_format("fp16")), Workload.decode(16, 1))
    matmul_params = _params(cfg) - cfg.vocab_size * cfg.hidden_size  # the embedding is a lookup, not a matmul
    flop = float(np.sum(c.weight_flop))
    assert 2 * matmul_params * 0.99 < flop < 2 * matmul_params * 1.01
