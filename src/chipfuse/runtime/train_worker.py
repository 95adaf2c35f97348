"""A die's side of LoRA fine-tuning: its layers, their adapters and optimiser state, and the 1F1B schedule.

The host sends every die the step's micro-batches (token ids and labels: a few kilobytes); the dies then
run the one-forward-one-backward schedule among themselves. Stage s of S first runs min(S - s - 1, M)
forwards, then alternates one forward and one backward, then drains the remaining backwards; hidden
states go forward to the next die and their gradients come back over the same link. Sends are
asynchronous and receives block, so no two dies wait on each other. The bubble, the share of a step a
die idles, is (S - 1) / (M + S - 1) for M micro-batches. After the last backward every rank (host too)
sums the squared gradient norms once, so each die clips by the global norm, then steps AdamW on its own
adapters.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from ..frontends.config import ModelConfig
from ..plan.plan import Plan
from ..plan.train import LoraSpec
from ..quant.formats import get_format
from .lora import TrainStage, load_stage
from .tasks import recv_msg, send_msg
from .transport import send_json

TAG_ACT, TAG_GRAD = 21, 22
OPTIMIZER = "adamw"
BETAS, EPS = (0.9, 0.999), 1e-8


def make_optimizer(params: list[torch.Tensor], weight_decay: float) -> torch.optim.Optimizer | None:
    """AdamW over a die's adapters (foreach off: the same arithmetic on every split of the layers)."""
    if not params:
        return None
    return torch.optim.AdamW(params, lr=0.0, betas=BETAS, eps=EPS, weight_decay=weight_decay, foreach=False)


def set_lr(opt: torch.optim.Optimizer | None, lr: float) -> None:
    if opt is not None:
        for g in opt.param_groups:
            g["lr"] = lr


def grad_sq(params: list[torch.Tensor]) -> float:
    return float(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))


def clip_and_step(opt: torch.optim.Optimizer | None, params: list[torch.Tensor], total_sq: float,
                  max_norm: float) -> None:
    """Scale the gradients by min(1, max_norm / global norm) (as torch's clip_grad_norm_), step, zero them."""
    norm = total_sq ** 0.5
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    if opt is not None:
        opt.step()
    for p in params:
        p.grad = None


def optimizer_state(stage: TrainStage, opt: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """AdamW's moments and step count per adapter tensor, by the adapter's name."""
    out: dict[str, torch.Tensor] = {}
    if opt is None:
        return out
    for name, p in stage.named_adapters().items():
        st = opt.state.get(p)
        if st:
            out[f"exp_avg/{name}"] = st["exp_avg"].clone()
            out[f"exp_avg_sq/{name}"] = st["exp_avg_sq"].clone()
            out[f"step/{name}"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
    return out


def load_optimizer_state(stage: TrainStage, opt: torch.optim.Optimizer | None, tensors: dict[str, torch.Tensor]
                         ) -> None:
    if opt is None:
        return
    for name, p in stage.named_adapters().items():
        if f"exp_avg/{name}" not in tensors:
            opt.state.pop(p, None)
            continue
        opt.state[p] = {"step": torch.tensor(float(tensors[f"step/{name}"][0])),
                        "exp_avg": tensors[f"exp_avg/{name}"].float().clone(),
                        "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].float().clone()}


class Pipeline:
    """This die's place in the training pipeline: position `pos` of `count`, its neighbours' ranks."""

    def __init__(self, stage: TrainStage, pos: int, count: int, prev: int | None, nxt: int | None, hidden: int):
        self.stage, self.pos, self.count, self.prev, self.nxt, self.hidden = stage, pos, count, prev, nxt, hidden

    def _input(self, ids: torch.Tensor, m: int, grad: bool) -> torch.Tensor:
        if self.prev is None:
            return ids[m]
        b, t = ids.shape[1:]
        x = torch.empty(b, t, self.hidden)
        dist.recv(x, self.prev, tag=TAG_ACT)
        return x.requires_grad_(grad)

    def step(self, ids: torch.Tensor, labels: torch.Tensor, n_labels: int, key0: int) -> tuple[float, float]:
        """One step's forwards and backwards (gradients accumulate in the adapters); (loss sum, busy seconds)."""
        st, m_count = self.stage, ids.shape[0]
        warm = min(self.count - self.pos - 1, m_count)
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        sends: list = []
        loss = [0.0]
        busy = [0.0]

        def forward(m: int) -> None:
            x = self._input(ids, m, True)
            t0 = time.perf_counter()
            out = st.forward(x, key=(key0, m))
            if st.has_head:
                ls = st.loss_sum(out, labels[m])
                loss[0] += float(ls.detach())
                out = ls / n_labels
            else:
                sends.append(dist.isend(out.detach().contiguous(), self.nxt, tag=TAG_ACT))
            busy[0] += time.perf_counter() - t0
            saved[m] = (x, out)

        def backward(m: int) -> None:
            x, out = saved.pop(m)
            if st.has_head:
                t0 = time.perf_counter()
                if out.requires_grad:
                    out.backward()
            else:
                g = torch.empty_like(out)
                dist.recv(g, self.nxt, tag=TAG_GRAD)
                t0 = time.perf_counter()
                if out.requires_grad:  # a stage of the embedding alone has nothing to differentiate
                    out.backward(g)
            busy[0] += time.perf_counter() - t0
            if self.prev is not None:
                sends.append(dist.isend(x.grad.contiguous(), self.prev, tag=TAG_GRAD))

        for m in range(warm):
            forward(m)
        for i in range(m_count - warm):
            forward(warm + i)
            backward(i)
        for m in range(m_count - warm, m_count):
            backward(m)
        for w in sends:
            w.wait()
        return loss[0], busy[0]

    @torch.no_grad()
    def evaluate(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """Forward only, every micro-batch in order; the loss sum (at the head, else 0)."""
        st, sends, total = self.stage, [], 0.0
        for m in range(ids.shape[0]):
            out = st.forward(self._input(ids, m, False), key=None)
            if st.has_head:
                total += float(st.loss_sum(out, labels[m]))
            else:
                sends.append(dist.isend(out.contiguous(), self.nxt, tag=TAG_ACT))
        for w in sends:
            w.wait()
        return total


def serve_train(rank: int, setup: dict) -> None:
    """A die's training loop: build its stage from the plan, report, then serve the host's commands."""
    torch.set_num_threads(int(setup.get("threads", 1)))
    t0 = time.perf_counter()
    plan = Plan.model_validate(setup["plan"])
    train = setup["train"]
    j = rank - 1
    stage_plan = plan.stages[j]
    cfg = ModelConfig.model_validate(plan.model.config)
    recipe = plan.stage_recipe(j)
    layers = {b - 1: recipe.for_block(b) for b, _ in recipe.blocks}
    head_fmt = get_format(stage_plan.head_format) if stage_plan.head_format else None
    lora = LoraSpec(rank=train["rank"], alpha=train["alpha"], dropout=train["dropout"], targets=tuple(train["targets"]))
    stage = load_stage(setup["weights"], cfg, tuple(stage_plan.blocks), recipe.default, lora, int(train["seed"]),
                       head_fmt, layers, plan.quantized_weights, bool(train["checkpointing"]))
    params = stage.parameters()
    opt = make_optimizer(params, float(train.get("weight_decay", 0.0)))
    count = len(plan.stages)
    pipe = Pipeline(stage, j, count, rank - 1 if j > 0 else None, rank + 1 if j < count - 1 else None,
                    cfg.hidden_size)
    send_json({"rank": rank, "die": stage_plan.die, "pid": os.getpid(), "load_s": time.perf_counter() - t0,
               "adapter_values": sum(p.numel() for p in params)}, 0)
    while True:
        header, tensors, _ = recv_msg(0)
        cmd = header["cmd"]
        if cmd == "shutdown":
            send_msg({"cmd": "bye"}, {}, 0)
            return
        if cmd == "step":
            t_step = time.perf_counter()
            for p in params:  # a step starts from zero (one kept for `grads` after apply=False included)
                p.grad = None
            loss, busy = pipe.step(tensors["ids"], tensors["labels"], int(header["n_labels"]), int(header["step"]))
            sq = torch.tensor([grad_sq(params)], dtype=torch.float64)
            dist.all_reduce(sq)  # every rank, the host's zero included: the global norm
            if header.get("apply", True):
                set_lr(opt, float(header["lr"]))
                clip_and_step(opt, params, float(sq[0]), float(header["max_grad_norm"]))
            if stage.has_head:
                send_msg({"cmd": "stepped", "loss_sum": loss}, {}, 0)
            send_msg({"cmd": "busy", "busy_s": busy, "step_s": time.perf_counter() - t_step}, {}, 0)
        elif cmd == "eval":
            loss = pipe.evaluate(tensors["ids"], tensors["labels"])
            if stage.has_head:
                send_msg({"cmd": "evaluated", "loss_sum": loss}, {}, 0)
        elif cmd == "grads":
            send_msg({"cmd": "grads"}, {n: (p.grad if p.grad is not None else torch.zeros_like(p))
                                        for n, p in stage.named_adapters().items()}, 0)
        elif cmd == "state":
            send_msg({"cmd": "state"}, {**{n: p.detach() for n, p in stage.named_adapters().items()},
                                        **optimizer_state(stage, opt)}, 0)
        elif cmd == "load":
            stage.load_adapters({k: v for k, v in tensors.items() if "/" not in k})
            load_optimizer_state(stage, opt, tensors)
            send_msg({"cmd": "loaded"}, {}, 0)
        else:
            raise RuntimeError(f"unknown training command {cmd!r}")
