"""Adapters served unmerged: the dies' inference with an adapter is the trained model; bad folders are named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from chipfuse.api.finetuning import save_adapter
from chipfuse.plan.train import LoraSpec
from chipfuse.quant.formats import get_format
from chipfuse.runtime.adapters import AdapterError, read_adapter
from chipfuse.runtime.stage import Segment, StageModel

sys.path.insert(0, str(Path(__file__).parent))
from test_lora import CFG, _train_once, tiny_weights  # noqa: E402

SPEC = LoraSpec(rank=4, alpha=8.0, dropout=0.1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    st = _train_once(SPEC)
    folder = tmp_path_factory.mktemp("adapter")
    save_adapter(folder, {k: v.detach() for k, v in st.named_adapters().items()}, SPEC, "tiny", {})
    return st, folder


def test_inference_with_the_adapter_is_the_trained_model(trained):
    st, folder = trained
    model = StageModel(CFG, tiny_weights(), (0, CFG.num_layers + 2), get_format("fp32"), 64, "fp32")
    model.attach_adapters(read_adapter(folder, CFG))
    ids = torch.randint(0, CFG.vocab_size, (1, 17))
    with torch.no_grad():
        want = st.forward(ids)[0]
    got = model.forward(ids[0], [Segment(0, 0, 17)], all_logits=True)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    base = StageModel(CFG, tiny_weights(), (0, CFG.num_layers + 2), get_format("fp32"), 64, "fp32")
    assert not torch.allclose(base.forward(ids[0], [Segment(0, 0, 17)], all_logits=True), want, atol=1e-3)


def test_a_two_stage_split_serves_each_stage_its_own_layers(trained):
    st, folder = trained
    ads = read_adapter(folder, CFG)
    a = StageModel(CFG, tiny_weights(), (0, 3), get_format("fp32"), 64, "fp32")
    b = StageModel(CFG, tiny_weights(), (3, CFG.num_layers + 2), get_format("fp32"), 64, "fp32")
    a.attach_adapters(ads)
    b.attach_adapters(ads)
    assert sorted(a.lora) == [0, 1] and sorted(b.lora) == [0, 1]  # layers 0-1 and 2-3, by their index on the die
    ids = torch.randint(0, CFG.vocab_size, (9,))
    got = b.forward(a.forward(ids, [Segment(0, 0, 9)]), [Segment(0, 0, 9)], all_logits=True)
    with torch.no_grad():
        assert torch.allclose(got, st.forward(ids[None])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["fp32", "int8"])
def test_decode_steps_with_the_adapter_continue_the_prefill(trained, fmt):
    """One token at a time on the compiled decode path (with the adapters' term) gives the Python prefill's logits."""
    from chipfuse.runtime import fastpath

    _, folder = trained
    model = StageModel(CFG, tiny_weights(), (0, CFG.num_layers + 2), get_format(fmt), 64, "fp32")
    model.attach_adapters(read_adapter(folder, CFG))
    ids = torch.randint(0, CFG.vocab_size, (8,))
    whole = model.forward(ids, [Segment(1, 0, 8)], all_logits=True)
    model.forward(ids[:7], [Segment(2, 0, 7)])
    last = model.forward(ids[7:], [Segment(2, 7, 1)])
    assert torch.allclose(last[0], whole[-1], rtol=1e-4, atol=1e-5)
    if fastpath.load() is not None:  # where the compiled path builds, the decode step took it, adapters and all
        assert model._fast is not None


def _copy(folder: Path, tmp: Path) -> Path:
    out = tmp / "copy"
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_bad_adapter_folders_are_named(trained, tmp_path):
    _, folder = trained
    with pytest.raises(AdapterError, match="no such folder"):
        read_adapter(tmp_path / "nope", CFG)
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_adapter(tmp_path, CFG)
    bad = _copy(folder, tmp_path)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(AdapterError, match="DoRA"):
        read_adapter(bad, CFG)
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(AdapterError, match="expected lora_A .* at rank 8"):
        read_adapter(bad, CFG)
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "adapter_model.safetensors").unlink()
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(AdapterError, match="never pickled"):
        read_adapter(bad, CFG)
    other = CFG.model_copy(update={"num_layers": 2})
    with pytest.raises(AdapterError, match="does not belong to tiny"):
        read_adapter(folder, other)


@pytest.mark.slow
def test_dies_serving_an_adapter_answer_as_the_single_process_reference(smollm2_gguf, tmp_path):
    """Two dies (each its own layers' adapters, in worker processes) give the greedy tokens of the whole model with
    the adapter in one process; a random adapter large enough to change the answer."""
    from chipfuse import api
    from chipfuse.frontends import load_model_config
    from chipfuse.plan.train import TARGETS, adapter_shapes
    from chipfuse.runtime.lora import HF_NAMES
    from chipfuse.runtime.reference import greedy, reference_for_plan
    from chipfuse.runtime.tokenizer import load_tokenizer

    cfg = load_model_config(smollm2_gguf)
    spec = LoraSpec(rank=4, alpha=4.0)
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for i in range(cfg.num_layers):
        for t, (fin, fout) in adapter_shapes(cfg, spec).items():
            base = f"base_model.model.model.layers.{i}.{HF_NAMES[t]}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(4, fin, generator=g) / fin ** 0.5
            tensors[f"{base}.lora_B.weight"] = torch.randn(fout, 4, generator=g) * 0.02
    assert set(adapter_shapes(cfg, spec)) == set(TARGETS)
    save_adapter(tmp_path, tensors, spec, str(smollm2_gguf), {})
    prompt = load_tokenizer(smollm2_gguf).encode("The three primary colours are", add_special_tokens=False)
    with api.open_device("talk-4die-d2d", precision="int8", context=128, max_batch=1, dies=2,
                         adapter=tmp_path) as dev:
        gen = dev.submit(prompt, 12, stop_ids=set())
        list(gen)  # run it to the end
        got_tokens, plan = gen.tokens, dev.plan
    ref = reference_for_plan(smollm2_gguf, plan)
    plain = greedy(ref, prompt, 12)
    ref.attach_adapters(read_adapter(tmp_path, cfg))
    assert got_tokens == greedy(ref, prompt, 12)
    assert got_tokens != plain  # the adapter changes the answer
