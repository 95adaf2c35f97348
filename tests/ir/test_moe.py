"""Mixture-of-experts models: held whole, read by their active experts at decode, all of them over a long prompt."""

from __future__ import annotations

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.errors import SpecError
from chipfuse.frontends import load_model_config
from chipfuse.frontends.config import from_hf_config
from chipfuse.hw.load import load_system
from chipfuse.ir.graph import Workload, block_weight_bytes, op_costs
from chipfuse.ir.llm import build_llm_graph
from chipfuse.quant.formats import Recipe


def _params(g, attr: str) -> float:
    return sum(op.in_features * op.out_features * getattr(op, attr) for op in g.ops
               if op.kind in ("matmul", "embedding") and not op.tied_to)


@pytest.mark.parametrize("name, total_b, active_b", [
    ("mixtral-8x7b", 46.7, 12.9),  # Mistral AI's Mixtral announcement: 46.7B total, 12.9B used per token
    ("qwen3-30b-a3b", 30.5, 3.3),  # Qwen3-30B-A3B model card: 30.5B parameters, 3.3B activated
])  # the active counts here include the embedding table (0.31B for Qwen3), which a token only looks a row up in
def test_total_and_active_parameters_are_the_published_ones(name, total_b, active_b):
    g = build_llm_graph(load_model_config(name))
    assert _params(g, "experts") / 1e9 == pytest.approx(total_b, abs=0.05)
    assert _params(g, "active") / 1e9 == pytest.approx(active_b, abs=0.06)


def test_an_moe_models_decode_reads_its_active_experts_not_all():
    """At batch 1 a token reads the weights of its 2 of 8 experts: the predicted bytes per token are the active
    parameters' bytes (plus the KV cache), and its memory holds all of them."""
    cfg = load_model_config("mixtral-8x7b")
    g = build_llm_graph(cfg)
    r = Recipe.of("int8")
    held = float(block_weight_bytes(g, r).sum())
    plan = compile_plan(cfg, load_system("jetson-agx-orin-64gb"), "int8", context=2048, prompt_tokens=256,
                        split="pipeline")
    assert sum(st.weight_bytes for st in plan.stages) == pytest.approx(held, rel=1e-9)  # every expert is held
    c = op_costs(g, r, Workload.decode(2048, 1), 2.0, 2.0)
    active_weights = sum(op.weight_bytes(r.for_op(op)) / op.experts * op.active for op in g.ops
                         if op.kind == "matmul")
    kv = float(sum(c.read_bytes[i] for i, op in enumerate(g.ops) if op.kind == "attention"))
    read = plan.prediction.bytes_read_per_token
    assert read == pytest.approx(active_weights + kv, rel=0.02)
    assert read < 0.35 * held  # 12.9B of 46.7B parameters, not all of them
    dense_twin = cfg.model_copy(update={"num_experts": 0, "experts_per_token": 0, "intermediate_size": 2 * 14336})
    twin = compile_plan(dense_twin, load_system("jetson-agx-orin-64gb"), "int8", context=2048, prompt_tokens=256,
                        split="pipeline")
    # a dense model as wide as the two active experts (and without the small router) decodes at the same speed
    assert plan.prediction.decode_tokens_per_s == pytest.approx(twin.prediction.decode_tokens_per_s, rel=0.01)


def test_a_long_prompt_reads_every_expert():
    g = build_llm_graph(load_model_config("qwen3-30b-a3b"))
    up = next(op for op in g.ops if op.name.endswith("layers.0.up_proj"))
    assert up.experts_read(1) == pytest.approx(8)
    assert up.experts_read(512) == pytest.approx(128, rel=1e-3)
    r = Recipe.of("int4")
    pre = op_costs(g, r, Workload.prefill(512, 1), 2.0, 2.0)
    i = g.ops.index(up)
    assert pre.read_bytes[i] >= 0.999 * up.weight_bytes(r.for_op(up))


def test_moe_configs_are_read_and_checked():
    base = {"model_type": "qwen3_moe", "hidden_size": 256, "intermediate_size": 1024, "moe_intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
            "num_experts": 16, "num_experts_per_tok": 4}
    cfg = from_hf_config(base, "toy")
    assert (cfg.num_experts, cfg.experts_per_token, cfg.intermediate_size) == (16, 4, 64)
    with pytest.raises(SpecError, match="num_experts_per_tok 32 does not fit num_experts 16"):
        from_hf_config({**base, "num_experts_per_tok": 32}, "toy")
    with pytest.raises(SpecError, match="shared experts are not modelled"):
        from_hf_config({**base, "shared_expert_intermediate_size": 512}, "toy")
    with pytest.raises(SpecError, match="mlp_only_layers"):
        from_hf_config({**base, "mlp_only_layers": [0]}, "toy")
    with pytest.raises(SpecError, match="num_local_experts and num_experts_per_tok"):
        from_hf_config({**base, "model_type": "mixtral", "num_experts": None}, "toy")


def test_the_runtime_refuses_a_mixture_of_experts(tmp_path):
    """A Hugging Face folder of a mixture of experts is refused before any die starts."""
    import json

    from chipfuse.errors import ChipfuseError
    from chipfuse.runtime.device import Device

    cfg_json = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "num_local_experts": 4,
                "num_experts_per_tok": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg_json))
    cfg = load_model_config(tmp_path)
    plan = compile_plan(cfg, load_system("talk-light-d2d"), "int8", context=256, prompt_tokens=16)
    with pytest.raises(ChipfuseError, match="mixture of experts"):
        Device(plan, tmp_path)
