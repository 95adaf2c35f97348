"""A LoRA fine-tuning job's plan: what each die holds while it trains, counted before any step runs.

Per die: the base weights in the die's format (as the inference plan holds them), the adapters of its
layers, their gradients and the optimiser's state, and the activations kept for the backward pass of
the micro-batches it has in flight under the one-forward-one-backward schedule (stage s of S holds at
most S - s of them). The activation count is each saved tensor autograd keeps for our layer (runtime/lora.py),
summed by hand here and checked against the runtime's own saved-tensor count in the tests.
A job that does not fit is refused with the die, the excess, and what would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..frontends.config import ModelConfig
from ..plan.plan import Plan
from ..plan.train import (  # noqa: F401 (the job's settings, re-exported)
    ATTENTION_TARGETS,
    TARGETS,
    LoraSpec,
    TrainPlanError,
    TrainSpec,
    adapter_shapes,
    adapter_values_per_layer,
    check_trainable,
)
from ..units import MiB as MIB

FP32 = 4
ADAMW_STATE_VALUES = 2  # first and second moments per trainable value
MIN_SEQ = 16  # shorter sequences are not offered as a fix: too short to learn from

def layer_activation_bytes(cfg: ModelConfig, lora: LoraSpec, tokens: int) -> int:
    """Bytes autograd keeps for one layer's backward over `tokens` tokens (FP32 activations).

    Counted from runtime/lora.py's layer, tensor by tensor, and checked against autograd's own saved tensors
    in the tests: each norm's input and per-token rms; the fused q/k/v output; q and k after the rotary
    embedding; the attention output and its log-sum-exp per head (CPU attention keeps no T x T matrix);
    the fused gate/up output and silu(gate). A frozen base product keeps nothing (no weight gradient is
    wanted). Each adapter keeps its input (with dropout, its own dropped-out copy and the one-byte mask)
    and its rank-r middle."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.q_dim, cfg.kv_dim
    per_token = FP32 * (
        (h + 1) * 2  # the two norms: input and rms
        + (q + 2 * kv)  # q, k, v projections' output
        + (q + kv)  # q and k rotated
        + q + cfg.num_heads  # attention output and its log-sum-exp
        + 2 * i + i  # gate and up outputs, silu(gate)
    )
    ins = {"q_proj": "h", "k_proj": "h", "v_proj": "h", "o_proj": "o", "gate_proj": "h2", "up_proj": "h2",
           "down_proj": "act"}
    width = {"h": h, "o": q, "h2": h, "act": i}
    if lora.dropout > 0:  # every adapter its own mask and dropped-out input
        per_token += sum((FP32 + 1) * width[ins[t]] for t in lora.targets)
    else:  # adapters reading the same tensor share it; o's input is the attention output's own storage
        per_token += sum(FP32 * width[w] for w in {ins[t] for t in lora.targets} - {"o"})
    per_token += FP32 * lora.rank * len(lora.targets)
    return per_token * tokens


def head_activation_bytes(cfg: ModelConfig, tokens: int) -> int:
    """What the last die keeps for the loss's backward: the final norm's input and rms, the logits (FP32) and
    their log-softmax, and the int64 targets."""
    return tokens * (FP32 * (cfg.hidden_size + 1 + 2 * cfg.vocab_size) + 8)


def head_transient_bytes(cfg: ModelConfig, tokens: int) -> int:
    """Briefly alive besides: the shifted copy of the logits the loss reads, then the logits' gradient."""
    return tokens * FP32 * cfg.vocab_size


@dataclass(frozen=True)
class DieTrainMemory:
    die: str
    stage: int
    layers: int
    base_weight_bytes: int
    adapter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    in_flight: int
    memory_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.base_weight_bytes + self.adapter_bytes + self.gradient_bytes + self.optimizer_bytes + \
            self.activation_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.memory_bytes


@dataclass(frozen=True)
class TrainMemory:
    spec: TrainSpec
    dies: tuple[DieTrainMemory, ...]
    trainable_values: int

    @property
    def fits(self) -> bool:
        return all(d.fits for d in self.dies)


def _stage_layers(plan: Plan, j: int) -> int:
    lo, hi = plan.stages[j].blocks
    last = ModelConfig.model_validate(plan.models[0].config).num_layers
    return max(0, min(hi, last + 1) - max(lo, 1))


def train_memory(plan: Plan, spec: TrainSpec) -> TrainMemory:
    """Every die's training memory for `spec` on a pipeline `plan` (its stage order is the pipeline's)."""
    check_trainable(plan)
    cfg = ModelConfig.model_validate(plan.models[0].config)
    s_count = len(plan.stages)
    per_layer = adapter_values_per_layer(cfg, spec.lora)
    tokens = spec.micro_batch * spec.seq_len
    dies = []
    for j, st in enumerate(plan.stages):
        n = _stage_layers(plan, j)
        values = n * per_layer
        in_flight = min(s_count - j, spec.micro_batches)
        layer_acts = layer_activation_bytes(cfg, spec.lora, tokens)
        if spec.checkpointing:  # each layer's input kept; one layer's activations rebuilt at a time
            acts = in_flight * n * tokens * cfg.hidden_size * FP32 + (layer_acts if n else 0)
        else:
            acts = in_flight * n * layer_acts
        if st.has_lm_head:  # the loss is taken and differentiated one micro-batch at a time
            acts += head_activation_bytes(cfg, tokens) + head_transient_bytes(cfg, tokens)
        dies.append(DieTrainMemory(
            die=st.die, stage=j, layers=n, base_weight_bytes=st.weight_bytes, adapter_bytes=values * FP32,
            gradient_bytes=values * FP32, optimizer_bytes=values * FP32 * ADAMW_STATE_VALUES,
            activation_bytes=acts, in_flight=in_flight, memory_bytes=st.memory_bytes))
    return TrainMemory(spec, tuple(dies), per_layer * cfg.num_layers)


def _largest(ok, hi: int, lo: int = 1) -> int | None:
    """The largest v in [lo, hi] with ok(v) (ok monotone: true up to some point), or None."""
    if hi < lo or not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def check_fits(plan: Plan, spec: TrainSpec) -> TrainMemory:
    """The plan's training memory, or TrainPlanError naming the die, the excess and what would fit."""
    mem = train_memory(plan, spec)
    if mem.fits:
        return mem
    worst = max(mem.dies, key=lambda d: d.total_bytes - d.memory_bytes)
    over = worst.total_bytes - worst.memory_bytes
    parts = (f"base weights {worst.base_weight_bytes / MIB:,.0f} MiB, adapters + gradients + AdamW state "
             f"{(worst.adapter_bytes + worst.gradient_bytes + worst.optimizer_bytes) / MIB:,.0f} MiB, activations of "
             f"{worst.in_flight} micro-batch(es) in flight {worst.activation_bytes / MIB:,.0f} MiB")
    fixes = []

    def fits(**change) -> bool:
        try:
            return train_memory(plan, replace(spec, **change)).fits
        except TrainPlanError:
            return False

    mb = _largest(lambda v: fits(micro_batch=v), spec.micro_batch - 1) if spec.micro_batch > 1 else None
    if mb:
        fixes.append(f"--micro-batch {mb} (with --micro-batches {-(-spec.sequences_per_step // mb)} keeps "
                     f"{spec.sequences_per_step} sequences per step)")
    if not spec.checkpointing and fits(checkpointing=True):
        fixes.append("--checkpointing (recompute each layer's activations in the backward pass)")
    seq = _largest(lambda v: fits(seq_len=v), spec.seq_len - 1, lo=MIN_SEQ)
    if seq:
        fixes.append(f"--seq-len {seq}")
    if spec.lora.rank > 1:
        r = _largest(lambda v: fits(lora=replace(spec.lora, rank=v)), spec.lora.rank - 1)
        if r:
            fixes.append(f"--rank {r}")
    if not fixes:  # no one change is enough: the smallest step there is, and the longest sequences it allows
        if fits(micro_batch=1, checkpointing=True):
            fixes.append("--micro-batch 1 --checkpointing")
        else:
            seq = _largest(lambda v: fits(micro_batch=1, checkpointing=True, seq_len=v), spec.seq_len - 1,
                           lo=MIN_SEQ)
            if seq:
                fixes.append(f"--micro-batch 1 --checkpointing --seq-len {seq}")
    fixes.append("more dies (a system with more or larger dies spreads the layers thinner)")
    raise TrainPlanError(
        f"training does not fit {worst.die} (stage {worst.stage}, {worst.layers} layers): it needs "
        f"{worst.total_bytes / MIB:,.0f} MiB of its {worst.memory_bytes / MIB:,.0f} MiB, {over / MIB:,.0f} MiB too "
        f"many ({parts}). What fits: " + "; or ".join(fixes))
