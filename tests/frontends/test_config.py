"""Model front ends: the catalogue, config.json and GGUF metadata give the same facts."""

import json

import pytest

from chipfuse.errors import SpecError
from chipfuse.frontends import catalogue_names, load_model_config
from chipfuse.ir.graph import block_weight_bytes
from chipfuse.ir.llm import build_llm_graph
from chipfuse.quant.formats import get_format

# published parameter counts (billions), model cards
PARAMS_B = {"llama-2-7b": 6.74, "llama-2-13b": 13.0, "llama-2-70b": 69.0, "llama-3.1-8b": 8.03, "llama-3.2-1b": 1.24,
            "qwen2.5-0.5b": 0.49, "qwen2.5-7b": 7.61, "smollm2-135m": 0.135, "tinyllama-1.1b": 1.1,
            "phi-3-mini": 3.82, "gemma-2-2b": 2.61, "mistral-7b": 7.24, "qwen3-8b": 8.19}


def test_catalogue_has_the_required_models():
    names = set(catalogue_names())
    assert len(names) >= 15
    for n in ("llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b",
              "llama-3.1-70b", "qwen2.5-0.5b", "qwen2.5-7b", "smollm2-135m", "smollm2-360m", "smollm2-1.7b",
              "phi-3-mini", "tinyllama-1.1b", "mistral-7b", "gemma-2-2b", "gemma-3-1b", "qwen3-0.6b"):
        assert n in names


@pytest.mark.parametrize("name,billions", sorted(PARAMS_B.items()))
def test_parameter_counts_match_the_model_cards(name, billions):
    g = build_llm_graph(load_model_config(name))
    fp32 = get_format("fp32")
    params = block_weight_bytes(g, fp32).sum() / 4
    tied = load_model_config(name).tied_embeddings
    if tied:  # the head reuses the embedding table
        params -= g.op("lm_head").in_features * g.op("lm_head").out_features
    assert params / 1e9 == pytest.approx(billions, rel=0.02)


def test_gqa_and_windows():
    c = load_model_config("llama-2-70b")
    assert (c.num_heads, c.num_kv_heads) == (64, 8)
    g3 = load_model_config("gemma-3-1b")
    windows = [g3.window(i) for i in range(g3.num_layers)]
    assert windows.count(None) == g3.num_layers // 6 and windows[5] is None and windows[0] == 512


def test_aliases_and_unknown_names():
    assert load_model_config("smollm2").name == "smollm2-135m"
    with pytest.raises(SpecError) as e:
        load_model_config("lama-2-7b")
    assert "llama-2-7b" in str(e.value)


def test_config_json_path(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
           "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
    p = tmp_path / "my-model" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(cfg))
    c = load_model_config(p)
    assert c.name == "my-model" and c.attention_bias and c.head_dim == 64
    assert load_model_config(p.parent) == c


def test_bad_config_json_is_a_clear_error(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "bert", "hidden_size": 3}')
    with pytest.raises(SpecError, match="model_type 'bert' is not supported"):
        load_model_config(p)
    p.write_text('{"model_type": "llama", "hidden_size": 3}')
    with pytest.raises(SpecError, match="missing field"):
        load_model_config(p)
    p.write_text("{oops")
    with pytest.raises(SpecError, match="line 1"):
        load_model_config(p)


def test_gguf_metadata_matches_the_catalogue(smollm2_gguf):
    g = load_model_config(smollm2_gguf)
    c = load_model_config("smollm2-135m")
    for f in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
              "vocab_size", "tied_embeddings"):
        assert getattr(g, f) == getattr(c, f), f
