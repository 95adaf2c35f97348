"""Weights from a Hugging Face folder (config.json + safetensors) run through the same stage code."""

import pytest
import torch


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_safetensors_folder_matches_transformers(tmp_path, model_type):
    import transformers

    from chipfuse.runtime.device import resolve_model
    from chipfuse.runtime.reference import reference_model
    from chipfuse.runtime.stage import Segment

    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[model_type]
    cfg = cls[0](vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=model_type == "qwen2",
                 rope_theta=10000.0)
    torch.manual_seed(0)
    hf = cls[1](cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    path, mcfg = resolve_model(tmp_path)
    ours = reference_model(path, mcfg, "fp32", "fp32", context=64, kv_precision="fp32")
    ids = torch.randint(0, 300, (10,))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    got = ours.forward(ids, [Segment(0, 0, 10)])[0]
    assert ((got - ref[-1]).abs().max() / ref[-1].abs().max()).item() < 1e-4


def test_the_kv_cache_holds_exactly_the_precisions_the_compiler_allows(tmp_path):
    """Each KV precision the compiler accepts becomes a cache in its registry dtype; every other format is refused."""
    import transformers

    from chipfuse.errors import SpecError
    from chipfuse.quant.formats import FORMATS, KV_PRECISIONS, get_format
    from chipfuse.runtime.device import resolve_model
    from chipfuse.runtime.stage import StageModel
    from chipfuse.runtime.weights import open_weights, wanted_names

    hf = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    transformers.LlamaForCausalLM(hf).save_pretrained(tmp_path, safe_serialization=True)
    path, cfg = resolve_model(tmp_path)
    w = open_weights(path, cfg).load(wanted_names(cfg, range(1, 2)))
    for name in FORMATS:
        if name in KV_PRECISIONS:
            stage = StageModel(cfg, w, (1, 2), get_format("fp32"), 8, kv_precision=name)
            assert stage.kv_dtype == getattr(torch, get_format(name).dtype)
        else:
            with pytest.raises(SpecError, match="KV precision"):
                StageModel(cfg, w, (1, 2), get_format("fp32"), 8, kv_precision=name)
