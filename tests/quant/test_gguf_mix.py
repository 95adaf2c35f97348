"""llama.cpp's GGUF types and mixes plan with their real bytes: checked against a real GGUF file's tensor types and
bytes, and against published file sizes; the runtime and the quantizer refuse them by name."""

from __future__ import annotations

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.errors import ChipfuseError, SpecError
from chipfuse.frontends import load_model_config
from chipfuse.ir.graph import block_weight_bytes
from chipfuse.ir.llm import build_llm_graph
from chipfuse.quant.formats import FORMATS, get_format
from chipfuse.quant.gguf_mix import mix_recipe

GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def _gguf_name(op_name: str) -> str:
    if op_name == "embed":
        return "token_embd.weight"
    if op_name == "lm_head":
        return "output.weight"
    _, i, role = op_name.split(".")
    return f"blk.{i}.{GGUF_NAMES[role]}.weight"


@pytest.mark.parametrize("name, weights, nbytes", [("q4_0", 32, 18), ("q8_0", 32, 34), ("q2_k", 256, 84),
                                                   ("q3_k", 256, 110), ("q4_k", 256, 144), ("q5_k", 256, 176),
                                                   ("q6_k", 256, 210)])
def test_block_layouts_give_the_known_bits_per_weight(name, weights, nbytes):
    f = FORMATS[name]
    assert f.matrix_bytes(3, 4 * weights) == 3 * 4 * nbytes
    assert f.bits_per_weight(4096) == pytest.approx(8 * nbytes / weights)
    assert not f.runnable


def test_the_rules_reproduce_a_real_gguf_file():
    """SmolLM2-135M's shipped Q4_1 file: every tensor's type, and its bytes, as the recipe says (the tied table
    takes the output's Q6_K, which its 576 columns turn into Q8_0)."""
    from gguf import GGUFReader

    from chipfuse.frontends.model_files import default_gguf

    reader = GGUFReader(str(default_gguf()))
    held = {t.name: (t.tensor_type.name.lower(), int(t.n_bytes)) for t in reader.tensors}
    cfg = load_model_config("smollm2-135m")
    g = build_llm_graph(cfg)
    r = mix_recipe("q4_1", g)
    seen = 0
    for op in g.ops:
        if op.kind not in ("matmul", "embedding") or (op.kind == "matmul" and op.tied_to):
            continue
        kind, nbytes = held[_gguf_name(op.name)]
        assert r.for_op(op).name == kind, op.name
        assert op.weight_bytes(r.for_op(op)) == nbytes, op.name
        seen += 1
    assert seen == 1 + 7 * cfg.num_layers


# Published sizes of llama.cpp's Llama-2-13B files (GB = 1e9 bytes), from the "Provided files" table of
# https://huggingface.co/localmodels/Llama-2-13B-ggml (README): the mixes whose rules have not changed since
@pytest.mark.parametrize("mix, published_gb", [("q4_k_m", 7.87), ("q3_k_l", 6.93), ("q5_0", 8.95), ("q4_1", 8.14)])
def test_mixes_match_published_file_sizes(mix, published_gb):
    g = build_llm_graph(load_model_config("llama-2-13b"))
    total = float(block_weight_bytes(g, mix_recipe(mix, g)).sum())
    assert total / 1e9 == pytest.approx(published_gb, rel=0.005)


def test_a_q5_k_m_plan_counts_its_real_bits_per_weight():
    """Q5_K_M: Q5_K, with Q6_K for attention V and FFN down in half the layers and the head: the plan's bytes are
    those, between Q5_K's 5.5 and Q6_K's 6.5625 bits a weight, not a nominal 5."""
    from chipfuse.hw.load import load_system

    cfg = load_model_config("llama-2-7b")
    g = build_llm_graph(cfg)
    r = mix_recipe("q5_k_m", g)
    six = [o for o, f in r.ops if f == "q6_k"]
    assert sum(o.endswith("v_proj") for o in six) == sum(o.endswith("down_proj") for o in six) == cfg.num_layers // 2
    assert r.for_op(next(op for op in g.ops if op.name == "lm_head")).name == "q6_k"
    params = sum(op.in_features * op.out_features for op in g.ops if op.kind in ("matmul", "embedding"))
    total = float(block_weight_bytes(g, r).sum())
    assert 5.5 < 8 * total / params < 6.5625
    plan = compile_plan(cfg, load_system("jetson-agx-orin-64gb"), "q5_k_m", split="pipeline")
    assert plan.model.mix == "q5_k_m" and plan.precision_label == "q5_k_m"
    assert sum(st.weight_bytes for st in plan.stages) == pytest.approx(total, rel=1e-9)
    one_token = plan.prediction.bytes_read_per_token
    assert one_token > total  # every weight once, plus the KV cache and activations
    nominal = compile_plan(cfg, load_system("jetson-agx-orin-64gb"), "q5_k", split="pipeline")
    assert plan.prediction.decode_tokens_per_s < nominal.prediction.decode_tokens_per_s  # more bytes, slower


def test_the_runtime_and_the_quantizer_refuse_gguf_types():
    from chipfuse.api.quantize import _formats
    from chipfuse.hw.load import load_system
    from chipfuse.runtime.device import planning_only

    plan = compile_plan(load_model_config("smollm2-135m"), load_system("talk-light-d2d"), "q4_k_m")
    assert "planning and prediction" in planning_only(plan)
    with pytest.raises(SpecError, match="planning only"):
        _formats(["int8", "q4_k"])
    assert get_format("Q6_K").name == "q6_k"
    with pytest.raises(ChipfuseError, match="sets the head's type itself"):
        compile_plan(load_model_config("smollm2-135m"), load_system("talk-light-d2d"), "q4_k_m", head_precision="fp16")


def test_q4_k_m_bits_match_llama_cpps_own_file():
    """llama.cpp quantized SmolLM2 to Q4_K_M in benchmarks/bench_quantizers.py (BENCHMARKS.md: 6.17 bits a weight,
    its file's tensor bytes over the parameters, norms included); the mix's rules give the same within 0.5%."""
    g = build_llm_graph(load_model_config("smollm2-135m"))
    r = mix_recipe("q4_k_m", g)
    ops = [op for op in g.ops if op.kind in ("matmul", "embedding") and not op.tied_to]
    params = sum(op.in_features * op.out_features for op in ops)
    assert 8 * sum(op.weight_bytes(r.for_op(op)) for op in ops) / params == pytest.approx(6.17, rel=0.005)
