"""GPTQ codes saved by `chipfuse quantize --save` run on the dies exactly as they were measured."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_gptq_checkpoint_runs_on_the_dies_as_measured(smollm2_gguf, tmp_path):
    from chipfuse.frontends import load_model_config
    from chipfuse.quant import accuracy as acc
    from chipfuse.quant.checkpoint import load_quantized, save_quantized
    from chipfuse.quant.formats import Recipe, get_format
    from chipfuse.quant.gptq import collect_hessians, gptq_weights, to_quantized
    from chipfuse.quant.quantize import dequantize_int4
    from chipfuse.runtime.device import Device
    from chipfuse.runtime.reference import greedy, reference_for_plan
    from chipfuse.runtime.tokenizer import load_tokenizer
    from chipfuse.runtime.weights import open_weights, wanted_names

    cfg = load_model_config(smollm2_gguf)
    tok = load_tokenizer(smollm2_gguf)
    fmt = get_format("int4-g128")
    w = open_weights(smollm2_gguf, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    hess = collect_hessians(cfg, w, acc.windows(tok, acc.shipped_text("calibration"), 256, limit=2))
    g = gptq_weights(cfg, w, hess, fmt)
    ckpt = tmp_path / "gptq.safetensors"
    save_quantized(ckpt, {k: to_quantized(w[k], v, fmt) for k, v in g.items()},
                   {"format": fmt.name, "layers": cfg.num_layers, "method": "gptq", "model": cfg.name})
    # the stored codes decode to exactly the weights the accuracy report scored
    back = load_quantized(ckpt, {"layers.3.down_proj"})["layers.3.down_proj"]
    assert torch.allclose(dequantize_int4(back)[:, :1536], g["layers.3.down_proj"], atol=1e-5)
    ids = tok.encode("The three primary colours are", add_special_tokens=False)
    with Device("talk-heavy-2die-d2d", precision="int4-g128", context=256, quantized=ckpt) as dev:
        assert dev.plan.quantized_weights == str(ckpt)
        gen = dev.submit(ids, 16, stop_ids=set())
        list(gen)
        want = greedy(reference_for_plan(smollm2_gguf, dev.plan), ids, 16)
    assert gen.tokens == want
    # and they differ from round-to-nearest at the same format (the codes were really used)
    rtn = Recipe.of(fmt)
    assert not torch.equal(acc.quantized_weights(w, cfg, rtn)["layers.3.down_proj"], g["layers.3.down_proj"])
