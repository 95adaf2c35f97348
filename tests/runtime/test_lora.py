"""LoRA training stages: what the dies train is the model they run, split anywhere, counted as planned."""

from __future__ import annotations

import pytest
import torch

from chipfuse.compile.train import TARGETS, LoraSpec, head_activation_bytes, layer_activation_bytes
from chipfuse.frontends.config import ModelConfig
from chipfuse.quant.formats import get_format
from chipfuse.runtime.lora import IGNORE, TrainStage, held_values
from chipfuse.runtime.trainer import Batch, reference_step

CFG = ModelConfig(name="tiny", family="llama", hidden_size=64, intermediate_size=160, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=16, vocab_size=300)


def tiny_weights(cfg: ModelConfig = CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    w = {"embed": torch.randn(cfg.vocab_size, h, generator=g) * 0.5, "final_norm": 1 + 0.1 * torch.randn(h, generator=g),
         "lm_head": torch.randn(cfg.vocab_size, h, generator=g) * 0.2}
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q), "gate_proj": (i, h),
              "up_proj": (i, h), "down_proj": (h, i)}
    for layer in range(cfg.num_layers):
        p = f"layers.{layer}."
        for n, shape in shapes.items():
            w[p + n] = torch.randn(*shape, generator=g) / shape[1] ** 0.5
        w[p + "attn_norm"] = 1 + 0.1 * torch.randn(h, generator=g)
        w[p + "mlp_norm"] = 1 + 0.1 * torch.randn(h, generator=g)
    return w


def stage(blocks, spec=LoraSpec(rank=4, dropout=0.1), fmt="fp32", seed=7, **kw) -> TrainStage:
    return TrainStage(CFG, tiny_weights(), blocks, get_format(fmt), spec, seed, **kw)


def batch(m=3, b=2, t=20, seed=1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG.vocab_size, (m, b, t), generator=g)
    labels = ids.clone()
    labels[..., : t // 3] = IGNORE  # a prompt, unscored
    labels[0, 1, t - 4:] = IGNORE  # padding
    return Batch(ids, labels)


def _train_once(spec: LoraSpec) -> TrainStage:
    """A whole-model stage after one AdamW step, so the adapters' B are no longer zero."""
    st = stage((0, CFG.num_layers + 2), spec)
    reference_step(st, batch(), 0)
    opt = torch.optim.AdamW(st.parameters(), lr=0.05)
    opt.step()
    opt.zero_grad()
    return st


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_a_split_anywhere_gives_the_whole_models_loss_and_gradients(cut):
    """Two stages chained by hand (the dies' exchange in one process) equal the whole model, dropout on."""
    spec = LoraSpec(rank=4, dropout=0.2)
    whole = stage((0, CFG.num_layers + 2), spec)
    loss = reference_step(whole, batch(), 3)
    a, b = stage((0, cut), spec), stage((cut, CFG.num_layers + 2), spec)
    bt = batch()
    total = 0.0
    for m in range(bt.ids.shape[0]):
        h = a.forward(bt.ids[m], key=(3, m))
        x = h.detach().requires_grad_()
        ls = b.loss_sum(b.forward(x, key=(3, m)), bt.labels[m])
        total += float(ls.detach())
        (ls / bt.n_labels).backward()
        if h.requires_grad:
            h.backward(x.grad)
    assert total / bt.n_labels == pytest.approx(loss, rel=1e-6)
    grads = {n: p.grad for s in (a, b) for n, p in s.named_adapters().items()}
    ref = whole.named_adapters()
    assert set(grads) == set(ref)
    for n, p in ref.items():
        assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7), n


def test_dropout_changes_the_gradient_and_evaluation_has_none():
    """The dropout mask is drawn (the gradients differ with and without it), and evaluation (key None) is
    deterministic: the masks come from seeds, not from a global generator."""
    a, b = _train_once(LoraSpec(rank=4, dropout=0.3)), _train_once(LoraSpec(rank=4, dropout=0.0))
    ids = batch().ids[0]
    with torch.no_grad():
        assert torch.equal(a.forward(ids), a.forward(ids))
        assert not torch.equal(a.forward(ids, key=(0, 0)), a.forward(ids, key=(0, 1)))
    assert not torch.allclose(a.parameters()[1], b.parameters()[1])


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("targets", [TARGETS, ("q_proj", "v_proj"), ("down_proj",)])
def test_planned_activation_bytes_are_what_autograd_keeps(dropout, targets):
    """compile/train.py's count of one layer's (and the head's) saved activations against autograd's own
    saved tensors, counted once per storage, weights and the rotary tables left out."""
    spec = LoraSpec(rank=4, dropout=dropout, targets=targets)
    for blocks, want in (((1, 3), 2 * layer_activation_bytes(CFG, spec, 2 * 24)),
                         ((CFG.num_layers + 1, CFG.num_layers + 2), head_activation_bytes(CFG, 2 * 24))):
        st = stage(blocks, spec)
        held = {p.data_ptr() for p in st.parameters()}
        if st.has_head:
            held |= {st.head.data_ptr(), st.final_norm.data_ptr()}
        for layer in st.layers:
            held |= {t.data_ptr() for t in (layer.qkv, layer.o, layer.gate_up, layer.down, layer.attn_norm,
                                             layer.mlp_norm)}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, held=held, seen=seen) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            if t.data_ptr() not in held and key not in seen and tuple(t.shape[:2]) != (1, 1):
                seen[key] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(2, 24, CFG.hidden_size, requires_grad=True)
        labels = torch.randint(0, CFG.vocab_size, (2, 24))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = st.forward(x, key=(0, 0))
            if st.has_head:
                seen[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()  # alive until the loss
                st.loss_sum(out, labels)
        assert sum(seen.values()) == pytest.approx(want, rel=0.02), blocks


def test_checkpointing_gives_the_same_gradients():
    spec = LoraSpec(rank=4, dropout=0.2)
    plain, ck = stage((0, CFG.num_layers + 2), spec), stage((0, CFG.num_layers + 2), spec, checkpointing=True)
    assert reference_step(plain, batch(), 1) == pytest.approx(reference_step(ck, batch(), 1), rel=1e-6)
    for p, q in zip(plain.parameters(), ck.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_the_base_is_held_at_the_dies_format():
    """INT8 base values are exactly the INT8 kernel's rows (bfloat16 scales); INT4 ones sit on 16 levels per group."""
    from chipfuse.runtime.kernels import make_linear

    w = torch.randn(48, 64)
    fmt = get_format("int8")
    assert torch.equal(held_values(w, fmt), make_linear(w, fmt).rows(torch.arange(48)))
    v = held_values(w, get_format("int4-g32"))
    assert v.shape == w.shape
    assert all(len(torch.unique(v[r, g * 32:(g + 1) * 32])) <= 16 for r in range(4) for g in range(2))
    assert not torch.equal(v, w)


def test_adapters_load_by_peft_names_and_refuse_a_wrong_shape():
    a, b = _train_once(LoraSpec(rank=4)), stage((0, CFG.num_layers + 2))
    b.load_adapters({k: v.detach() for k, v in a.named_adapters().items()})
    with torch.no_grad():
        assert torch.equal(a.forward(batch().ids[0]), b.forward(batch().ids[0]))
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert name in a.named_adapters()
    with pytest.raises(ValueError, match="expected shape"):
        b.load_adapters({**a.named_adapters(), name: torch.zeros(3, 3)})
