"""Tensor and hybrid plans on the dies: the reference's greedy tokens, exact FP32 logits, clear failures."""

from __future__ import annotations

import threading

import pytest
import torch

from chipfuse.api import open_device
from chipfuse.runtime.stage import Segment, ShardSpec, StageModel
from chipfuse.runtime.weights import open_weights, wanted_names
from tests.conftest import make_system
from tests.runtime.conftest import kill_die_mid_answer, reference_tokens

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    return reference_tokens(smollm2_gguf, 12, context=256, batch=2)


@pytest.mark.parametrize("dies,split", [(2, "tensor"), (3, "tensor"), (4, "tensor"), (4, "hybrid")])
def test_tensor_and_hybrid_plans_give_the_reference_tokens(smollm2_gguf, reference, dies, split):
    """SmolLM2's 3 KV heads over 2 and 4 dies are uneven shards; 3 dies get one KV group each."""
    ids, want = reference
    system = make_system(dies, topology="star")
    with open_device(system, smollm2_gguf, "int4", context=256, max_batch=2, split=split) as dev:
        kinds = [st.kind for st in dev.plan.stages]
        assert "shard" in kinds and (split == "tensor") == (len(set(tuple(st.shard.group) for st in dev.plan.stages
                                                                         if st.shard)) == 1 and "layers" not in kinds)
        got = []
        for prompt in ids:
            g = dev.submit(prompt, 12, stop_ids=set())
            list(g)
            got.append(g.tokens)
        for r in dev.memory_report():  # a die holds its shard only, as much as the plan says
            assert r["resident_weight_bytes"] == pytest.approx(r["plan_weight_bytes"], rel=0.01)
    assert got == want


def _shards(path, cfg, spans, fmt):
    """In-process shards of the whole model, summing through a barrier: the collectives without processes."""
    from chipfuse.quant.formats import get_format

    w = open_weights(path, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    models = [StageModel(cfg, w, (0, cfg.num_layers + 2), get_format(fmt), 64, "fp32", get_format(fmt),
                         shard=ShardSpec(kv, cols, voc)) for kv, cols, voc in spans]
    n = len(models)
    barrier, parts, out = threading.Barrier(n), [None] * n, [None]

    def hooks(i):
        def reduce(part):
            parts[i] = part
            if barrier.wait() == 0:
                out[0] = sum(parts[1:], parts[0].clone())
            barrier.wait()
            return out[0].clone()

        def gather(logits):
            parts[i] = logits
            barrier.wait()
            joined = torch.cat(list(parts), -1)
            barrier.wait()
            return joined
        return reduce, gather

    for i, m in enumerate(models):
        m.reduce, m.gather_vocab = hooks(i)
    return models


def test_fp32_shards_give_the_whole_models_logits(smollm2_gguf):
    from chipfuse.quant.formats import get_format
    from chipfuse.runtime.device import resolve_model

    path, cfg = resolve_model(smollm2_gguf)
    cfg = cfg.model_copy(update={"num_layers": 4})
    w = open_weights(path, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    whole = StageModel(cfg, w, (0, cfg.num_layers + 2), get_format("fp32"), 64, "fp32", get_format("fp32"))
    spans = [((0, 2), (0, 1024), (0, 20000)), ((2, 1), (1024, 512), (20000, 29152))]  # uneven: 2 + 1 KV groups
    shards = _shards(path, cfg, spans, "fp32")
    ids = torch.tensor([1, 504, 3458, 2476, 281, 253, 1744])
    want = whole.forward(ids, [Segment(0, 0, len(ids))], all_logits=True)
    got = [None, None]

    def run(i):
        got[i] = shards[i].forward(ids, [Segment(0, 0, len(ids))], all_logits=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for g in got:
        assert ((g - want).abs().max() / want.abs().max()).item() < 1e-4


def test_killed_worker_in_a_tensor_group_is_a_clear_error(smollm2_gguf):
    dev = open_device(make_system(3, topology="star"), smollm2_gguf, "int4", context=512, max_batch=1,
                      split="tensor")
    err = kill_die_mid_answer(dev, 1, 400)
    assert "die1" in err and "signal 9" in err


def test_run_with_a_tensor_split_answers_and_says_why_it_predicts_nothing_here():
    from chipfuse import api

    res = api.run(make_system(2, topology="star"), max_tokens=12, split="tensor")
    assert "Paris" in res.text and all(st.kind == "shard" for st in res.plan.stages)
    assert res.predicted_decode_tokens_per_s is None and "take turns" in res.note
    assert res.to_json()["predicted"]["decode_tokens_per_s"] is None


@pytest.mark.parametrize("compiled", [True, False])
def test_int4_shards_decode_the_whole_models_hidden_state_exactly(smollm2_gguf, compiled):
    """Three shards (one KV group each) of two int4 layers: each computes its part of the output projections in
    fp32 and the group's sum is rounded as the whole kernel rounds, so a decode step's hidden state equals the
    whole stage's in every element, on the compiled path and on the Python path (prefill: within 1e-4)."""
    from chipfuse.quant.formats import get_format
    from chipfuse.runtime.device import resolve_model

    path, cfg = resolve_model(smollm2_gguf)
    cfg = cfg.model_copy(update={"num_layers": 2})
    w = open_weights(path, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    blocks, fmt = (0, 3), get_format("int4")
    whole = StageModel(cfg, w, blocks, fmt, 64, "fp32")
    shards = [StageModel(cfg, w, blocks, fmt, 64, "fp32", shard=ShardSpec((k, 1), (512 * k, 512), None))
              for k in range(3)]
    barrier, parts, total = threading.Barrier(3), [None] * 3, [None]

    def hook(i):
        def reduce(part):
            parts[i] = part.clone()
            if barrier.wait() == 0:
                total[0] = sum(parts[1:], parts[0].clone())
            barrier.wait()
            return total[0].clone()
        return reduce

    for i, m in enumerate(shards):
        m.reduce = hook(i)
        m._fast_tried = not compiled  # True: never build the compiled path
    ids = torch.tensor([1, 504, 3458, 2476, 281, 253, 1744])
    want_pre = whole.forward(ids, [Segment(0, 0, len(ids))])
    want = whole.forward(torch.tensor([42]), [Segment(0, len(ids), 1)])
    got, pre = [None] * 3, [None] * 3

    def run(i):
        pre[i] = shards[i].forward(ids, [Segment(0, 0, len(ids))])
        got[i] = shards[i].forward(torch.tensor([42]), [Segment(0, len(ids), 1)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all((s._fast is not None) == compiled for s in shards)
    for g, p in zip(got, pre):
        assert torch.equal(g, want)
        assert ((p - want_pre).abs().max() / want_pre.abs().max()).item() < 1e-4
