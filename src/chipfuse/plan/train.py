"""A LoRA fine-tuning job's settings: the adapters (rank, scale, dropout, targets) and one step's shape.

Plain data shared by the compiler (which counts the memory a job needs, compile/train.py), the simulator
(sim/train.py) and the runtime (which trains it, runtime/lora.py), so none of them reaches into another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ChipfuseError
from ..frontends.config import ModelConfig
from .plan import Plan

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class TrainPlanError(ChipfuseError):
    """A fine-tuning job that cannot run as asked (bad settings, or it does not fit the dies)."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters: rank r, scale alpha / r, dropout on the adapter's input, on the `targets` projections."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and 1 <= self.rank <= 1024):
            raise TrainPlanError(f"LoRA rank {self.rank!r}: give a whole number from 1 to 1024 (8 or 16 are usual)")
        if not (0 < float(self.alpha) <= 1e6):
            raise TrainPlanError(f"LoRA alpha {self.alpha!r}: give a positive number (often twice the rank)")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise TrainPlanError(f"LoRA dropout {self.dropout!r}: give a probability in [0, 1)")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise TrainPlanError(f"LoRA target modules {list(self.targets)}: choose distinct names among "
                                 f"{', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


@dataclass(frozen=True)
class TrainSpec:
    """One optimiser step: `micro_batches` micro-batches of `micro_batch` sequences of up to `seq_len` tokens,
    pipelined over the dies; `checkpointing` keeps only each layer's input and recomputes the rest."""

    lora: LoraSpec = field(default_factory=LoraSpec)
    seq_len: int = 256
    micro_batch: int = 4
    micro_batches: int = 4
    checkpointing: bool = False

    def __post_init__(self) -> None:
        for name, lo, hi in (("seq_len", 2, 1 << 17), ("micro_batch", 1, 4096), ("micro_batches", 1, 4096)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
                raise TrainPlanError(f"{name} {v!r}: give a whole number from {lo} to {hi}")

    @property
    def sequences_per_step(self) -> int:
        return self.micro_batch * self.micro_batches


def adapter_shapes(cfg: ModelConfig, lora: LoraSpec) -> dict[str, tuple[int, int]]:
    """(in, out) features of each target projection of one layer."""
    q, kv, h, i = cfg.q_dim, cfg.kv_dim, cfg.hidden_size, cfg.intermediate_size
    every = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
             "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    return {t: every[t] for t in lora.targets}


def adapter_values_per_layer(cfg: ModelConfig, lora: LoraSpec) -> int:
    return sum(lora.rank * (i + o) for i, o in adapter_shapes(cfg, lora).values())


def check_trainable(plan: Plan) -> None:
    """Plans the trainer runs: one model, each die a pipeline stage of whole layers."""
    if len(plan.models) != 1:
        raise TrainPlanError("fine-tuning takes a plan of one model")
    if any(st.kind != "layers" for st in plan.stages):
        raise TrainPlanError("tensor-split plans do not train yet: plan the dies as a pipeline "
                             "(--split pipeline) to fine-tune")


