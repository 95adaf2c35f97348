"""GPTQ codes (INT4 and INT8 in one mixed recipe) saved by `chipfuse quantize --save` run on the dies as measured."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_gptq_checkpoint_runs_on_the_dies_as_measured(smollm2_gguf, tmp_path):
    from chipfuse.api import open_device
    from chipfuse.frontends import load_model_config
    from chipfuse.quant import accuracy as acc
    from chipfuse.quant.checkpoint import load_quantized, save_quantized
    from chipfuse.quant.formats import Recipe, get_format
    from chipfuse.quant.gptq import collect_hessians, dequantized, gptq_weights
    from chipfuse.quant.quantize import QuantizedInt4, QuantizedInt8
    from chipfuse.runtime.reference import greedy, reference_for_plan
    from chipfuse.runtime.tokenizer import load_tokenizer
    from chipfuse.runtime.weights import open_weights, wanted_names

    cfg = load_model_config(smollm2_gguf)
    tok = load_tokenizer(smollm2_gguf)
    fmt = get_format("int4-g128")
    recipe = Recipe(fmt, get_format("int8"), ((3, "int8"),))  # layer 2 (block 3) held as GPTQ int8 codes
    w = open_weights(smollm2_gguf, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    hess = collect_hessians(cfg, w, acc.windows(tok, acc.shipped_text("calibration"), 128, limit=1))
    codes = gptq_weights(cfg, w, hess, recipe)
    assert isinstance(codes["layers.2.o_proj"], QuantizedInt8) and isinstance(codes["layers.3.o_proj"], QuantizedInt4)
    g = dequantized(codes, w)
    ckpt = tmp_path / "gptq.safetensors"
    save_quantized(ckpt, codes, recipe, {"layers": cfg.num_layers, "method": "gptq", "model": cfg.name})
    # the stored codes decode to exactly the weights the accuracy report scored
    back = dequantized(load_quantized(ckpt, {"layers.3.down_proj"}), w)["layers.3.down_proj"]
    assert torch.equal(back, g["layers.3.down_proj"])
    ids = tok.encode("The three primary colours are", add_special_tokens=False)
    with open_device("talk-heavy-2die-d2d", context=256, quantized=ckpt) as dev:  # the checkpoint's recipe
        assert dev.plan.quantized_weights == str(ckpt) and dev.plan.recipe() == recipe
        gen = dev.submit(ids, 16, stop_ids=set())
        list(gen)
        want = greedy(reference_for_plan(smollm2_gguf, dev.plan), ids, 16)
    assert gen.tokens == want
    # and they differ from round-to-nearest at the same format (the codes were really used)
    rtn = acc.quantized_weights(w, cfg, recipe)
    for name in ("layers.3.down_proj", "layers.2.down_proj"):
        assert not torch.equal(rtn[name], g[name])
