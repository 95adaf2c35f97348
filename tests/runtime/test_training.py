"""Fine-tuning over worker processes: the dies' gradients and losses are the single process's."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system
from chipfuse.plan.train import LoraSpec, TrainSpec
from chipfuse.quant.formats import get_format
from chipfuse.runtime.executor import DeviceError
from chipfuse.runtime.lora import IGNORE, load_stage
from chipfuse.runtime.train_worker import clip_and_step, grad_sq, make_optimizer, set_lr
from chipfuse.runtime.trainer import Batch, TrainSession, reference_step

pytestmark = pytest.mark.slow
SPEC = TrainSpec(LoraSpec(rank=4, dropout=0.1), seq_len=32, micro_batch=2, micro_batches=4)


def _plan(gguf, dies: int):
    return compile_plan(load_model_config(gguf), load_system("talk-4die-d2d"), "int8", context=64, batch=1,
                        prompt_tokens=32, max_dies=dies, split="pipeline", model_source=str(gguf))


def _batch(seed: int, vocab: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (SPEC.micro_batches, SPEC.micro_batch, SPEC.seq_len), generator=g)
    labels = ids.clone()
    labels[..., :10] = IGNORE
    return Batch(ids, labels)


def _reference(gguf, plan):
    cfg = load_model_config(gguf)
    head = plan.stages[0].head_format or plan.stages[-1].head_format
    return load_stage(gguf, cfg, (0, cfg.num_layers + 2), get_format(plan.stages[0].format), SPEC.lora, 5,
                      get_format(head) if head else None)


def test_four_dies_give_the_single_process_gradients_and_loss_curve(smollm2_gguf):
    plan = _plan(smollm2_gguf, 4)
    assert len(plan.stages) == 4
    vocab = load_model_config(smollm2_gguf).vocab_size
    ref = _reference(smollm2_gguf, plan)
    opt = make_optimizer(ref.parameters(), 0.0)
    with TrainSession(plan, smollm2_gguf, SPEC, seed=5) as s:
        st = s.step(_batch(0, vocab), 0, 1e-3, apply=False)
        grads = s.grads()
        loss = reference_step(ref, _batch(0, vocab), 0)
        assert st.loss == pytest.approx(loss, rel=1e-5)
        ref_grads = ref.named_adapters()
        assert set(grads) == set(ref_grads) and len(grads) == 30 * 7 * 2
        for name, p in ref_grads.items():
            assert torch.allclose(grads[name], p.grad, rtol=1e-3, atol=1e-6), name
        assert st.grad_norm == pytest.approx(grad_sq(ref.parameters()) ** 0.5, rel=1e-4)
        for p in ref.parameters():  # the dies kept theirs (apply=False): start the curve from zero on both sides
            p.grad = None
        s.load_state({n: p.detach() for n, p in ref.named_adapters().items()})
        curve, ref_curve = [], []
        for k in range(1, 3):
            curve.append(s.step(_batch(k, vocab), k, 1e-3, max_grad_norm=0.5).loss)
            ref_curve.append(reference_step(ref, _batch(k, vocab), k))
            set_lr(opt, 1e-3)
            clip_and_step(opt, ref.parameters(), grad_sq(ref.parameters()), 0.5)
    assert curve == pytest.approx(ref_curve, rel=1e-4)
    assert curve[-1] < curve[0]  # it learns (the same tokens seen with different batches: a weak check)


def test_state_round_trip_resumes_where_it_stopped(smollm2_gguf):
    """Adapters and AdamW state taken from two dies and given to a fresh pair: the next step is the same."""
    plan = _plan(smollm2_gguf, 2)
    vocab = load_model_config(smollm2_gguf).vocab_size
    with TrainSession(plan, smollm2_gguf, SPEC, seed=1) as s:
        s.step(_batch(0, vocab), 0, 2e-3)
        state = s.state()
        after = s.step(_batch(1, vocab), 1, 2e-3).loss
        assert any(k.startswith("exp_avg_sq/") for k in state)
    with TrainSession(plan, smollm2_gguf, SPEC, seed=1) as s:
        s.load_state(state)
        assert s.step(_batch(1, vocab), 1, 2e-3).loss == pytest.approx(after, rel=1e-6)


def test_a_die_killed_mid_training_is_an_error_not_a_hang(smollm2_gguf):
    plan = _plan(smollm2_gguf, 2)
    vocab = load_model_config(smollm2_gguf).vocab_size
    s = TrainSession(plan, smollm2_gguf, SPEC, seed=1)
    procs = list(s.executor.procs)
    try:
        s.step(_batch(0, vocab), 0, 1e-3)
        os.kill(procs[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="die1"):
            for k in range(1, 5):
                s.step(_batch(k, vocab), k, 1e-3)
        assert time.monotonic() - t0 < 60  # a bound against hanging, not a speed goal
    finally:
        s.close()
    for p in procs:
        assert p.wait(timeout=10) is not None
