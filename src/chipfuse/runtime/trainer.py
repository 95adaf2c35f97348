"""The host's side of fine-tuning: the dies of a pipeline plan, each training its own layers' adapters.

`TrainSession` starts one worker per stage (as `Device` does), sends each step's micro-batches to every
die, and collects the loss (from the last die), the global gradient norm (a sum every rank joins) and
each die's busy time. It also gathers and restores the adapters and optimiser state (checkpoints) and
the raw gradients (tests). `reference_step` is the same step in this process over a whole-model
`TrainStage`: what the dies' gradients are checked against.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..plan.plan import Plan
from ..plan.train import TrainSpec, check_trainable
from .executor import DeviceError, Executor
from .lora import TrainStage
from .tasks import recv_msg, send_msg
from .train_worker import Pipeline


@dataclass(frozen=True)
class Batch:
    """One step's micro-batches: ids and labels [M, B, T] (labels IGNORE where unscored); n_labels scored."""

    ids: torch.Tensor
    labels: torch.Tensor

    @property
    def n_labels(self) -> int:
        return int((self.labels[:, :, 1:] != -100).sum())

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


@dataclass(frozen=True)
class StepStats:
    loss: float  # mean cross-entropy over the step's scored tokens
    grad_norm: float  # before clipping
    busy_s: tuple[float, ...]  # per die: computing
    step_s: tuple[float, ...]  # per die: the whole step, waits included


def reference_step(stage: TrainStage, batch: Batch, step: int) -> float:
    """The step's gradients accumulated in a whole-model stage in this process; the mean loss."""
    loss, _ = Pipeline(stage, 0, 1, None, None, stage.cfg.hidden_size).step(batch.ids, batch.labels,
                                                                          batch.n_labels, step)
    return loss / max(batch.n_labels, 1)


class TrainExecutor(Executor):
    """The worker processes of a training job: rank k trains stage k-1 of the plan."""

    def __init__(self, plan: Plan, model_path: Path, threads: int, train: dict, **kw):
        super().__init__(plan, model_path, threads, **kw)
        self.train = train

    def setup(self) -> list[dict]:
        plan_json = self.plan.model_dump(mode="json", by_alias=True)
        return self.send_setups([{"train": self.train, "plan": plan_json, "weights": str(self.model_path),
                                  "threads": self.threads} for _ in range(1, self.world)],
                                "dies loading their layers for training")


class TrainSession:
    """The dies of `plan` training LoRA adapters on `model` (a path) under `spec`; close() when done."""

    def __init__(self, plan: Plan, model_path: Path, spec: TrainSpec, *, seed: int = 0, weight_decay: float = 0.0,
                 threads: int = 1, timeout_s: float = 300.0, on_status=lambda m: None):
        check_trainable(plan)
        self.plan, self.spec = plan, spec
        lora = spec.lora
        train = {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.targets),
                 "seed": seed, "checkpointing": spec.checkpointing, "weight_decay": weight_decay}
        self.executor = TrainExecutor(plan, model_path, threads, train, on_status=on_status)
        self.executor.start(spawn=True, master=None, timeout_s=timeout_s)
        self.info = self.executor.setup()
        self.world = self.executor.world
        self._closed = False

    def _call(self, fn):
        """Run a transfer; a die's death becomes the executor's clear error, not gloo's."""
        try:
            return fn()
        except DeviceError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken connection: say which die died and why
            deadline = time.monotonic() + 3.0  # the watchdog needs a moment to see the death and read its log
            while self.executor.death is None and time.monotonic() < deadline:
                time.sleep(0.05)
            raise self.executor.error() or DeviceError(f"the training dies stopped: {e}") from None

    def _all(self, header: dict, tensors: dict) -> None:
        for rank in range(1, self.world):
            send_msg(header, tensors, rank)

    def step(self, batch: Batch, step: int, lr: float, max_grad_norm: float = 1.0, apply: bool = True) -> StepStats:
        """One optimiser step over `batch` (with apply False the gradients stay for `grads()`)."""
        import torch.distributed as dist

        def run() -> StepStats:
            self._all({"cmd": "step", "step": step, "lr": lr, "max_grad_norm": max_grad_norm, "apply": apply,
                       "n_labels": batch.n_labels}, {"ids": batch.ids, "labels": batch.labels})
            sq = torch.zeros(1, dtype=torch.float64)
            dist.all_reduce(sq)
            loss_sum = float(recv_msg(self.world - 1)[0]["loss_sum"])
            busy = [recv_msg(rank)[0] for rank in range(1, self.world)]
            return StepStats(loss_sum / max(batch.n_labels, 1), float(sq[0]) ** 0.5,
                             tuple(b["busy_s"] for b in busy), tuple(b["step_s"] for b in busy))

        return self._call(run)

    def evaluate(self, batch: Batch) -> float:
        """Mean loss over the scored tokens of `batch`, adapters as they are, no dropout."""
        def run() -> float:
            self._all({"cmd": "eval"}, {"ids": batch.ids, "labels": batch.labels})
            return float(recv_msg(self.world - 1)[0]["loss_sum"]) / max(batch.n_labels, 1)

        return self._call(run)

    def _gather(self, cmd: str) -> dict[str, torch.Tensor]:
        def run() -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            self._all({"cmd": cmd}, {})
            for rank in range(1, self.world):
                out.update(recv_msg(rank)[1])
            return out

        return self._call(run)

    def grads(self) -> dict[str, torch.Tensor]:
        """Every die's adapter gradients (after a step with apply=False), by peft name."""
        return self._gather("grads")

    def state(self) -> dict[str, torch.Tensor]:
        """Adapters (peft names) and AdamW state (exp_avg/NAME, exp_avg_sq/NAME, step/NAME) of every die."""
        return self._gather("state")

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Give every die its adapters and optimiser state from a `state()` (a checkpoint)."""
        def run() -> None:
            self._all({"cmd": "load"}, tensors)
            for rank in range(1, self.world):
                recv_msg(rank)

        self._call(run)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.executor.death is None:
            def goodbyes() -> None:
                try:
                    self._all({"cmd": "shutdown"}, {})
                    for rank in range(1, self.world):
                        recv_msg(rank)
                except Exception:  # noqa: BLE001 - a die already gone: the shutdown below ends the rest
                    pass

            t = threading.Thread(target=goodbyes, daemon=True)  # bounded: a wedged die must not hang the close
            t.start()
            t.join(10)
        self.executor.shutdown(graceful=False)

    def __enter__(self) -> TrainSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
