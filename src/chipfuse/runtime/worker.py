"""An emulated die: one process that holds one stage of the plan and runs it on request.

Started by `Device` on this machine, or by hand on another (`chipfuse worker --rank K
--master HOST:PORT`). It joins the TCP rendezvous, receives the plan (JSON) from the host,
loads only its own blocks, reports its resident bytes, then serves FORWARD / FREE / SHUTDOWN
messages from the previous rank and passes results to the next one.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from ..frontends.config import ModelConfig
from ..plan.plan import Plan
from ..quant.formats import get_format
from .stage import StageModel
from .transport import FORWARD, FREE, HIDDEN, LOGITS, SHUTDOWN, TOKENS, Channel, Header, inline_bytes, recv_json, send_json
from .weights import open_weights, wanted_names


def _watch_parent(pid: int) -> None:
    """Exit if the process that started us is gone (no orphans after a host crash)."""
    def loop():
        while True:
            if os.getppid() != pid:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True).start()


def serve(rank: int, world: int, master: str, timeout_s: float = 600.0) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    setup = recv_json(0)
    torch.set_num_threads(int(setup.get("threads", 1)))
    plan = Plan.model_validate(setup["plan"])
    stage = plan.stages[rank - 1]
    cfg = ModelConfig.model_validate(plan.model.config)
    t0 = time.perf_counter()
    weights = open_weights(setup["weights"], cfg).load(wanted_names(cfg, range(*stage.blocks)))
    from ..hw.spec import System
    from ..sim.perf import die_recipe

    recipe = die_recipe(System.model_validate(plan.system), stage.die, plan.recipe())
    layers = {b - 1: recipe.for_block(b) for b, _ in recipe.blocks}
    quantized = None
    if plan.quantized_weights:
        from ..quant.checkpoint import load_quantized

        quantized = load_quantized(plan.quantized_weights, {n for n in wanted_names(cfg, range(*stage.blocks))})
    model = StageModel(cfg, weights, stage.blocks, get_format(stage.format), plan.workload.context,
                       plan.workload.kv_precision, get_format(stage.head_format) if stage.head_format else None,
                       layer_formats=layers, quantized=quantized)
    del weights
    model._compiled()  # load the compiled decode path now, not inside the first generated token
    send_json({"rank": rank, "die": stage.die, "resident_weight_bytes": model.resident_weight_bytes(),
               "load_s": time.perf_counter() - t0, "pid": os.getpid()}, 0)
    prev, nxt = rank - 1, (rank + 1) % world
    inbox = Channel(prev, inline_bytes(plan, prev, rank))
    outbox = Channel(nxt, inline_bytes(plan, rank, nxt))
    while True:
        h, payload = inbox.recv()
        if h.cmd == SHUTDOWN:
            if nxt != 0:
                outbox.send(h)
            break
        if h.cmd == FREE:
            for s in h.segs:
                model.free(s.slot)
            if nxt != 0:
                outbox.send(h)
            continue
        if h.cmd == FORWARD:
            out = model.forward(payload, list(h.segs))
            kind = LOGITS if model.has_head else HIDDEN
            if model.has_head and h.greedy:  # choose here: one id a sequence crosses back, not the logits
                out, kind = out.argmax(-1), TOKENS
            outbox.send(Header(FORWARD, h.mb, h.segs, kind, out.shape[-1], greedy=h.greedy), out)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="chipfuse-worker", description="serve one emulated die")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--master", required=True, help="HOST:PORT of the host's rendezvous")
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args(argv)
    if a.parent_pid:
        _watch_parent(a.parent_pid)
    try:
        serve(a.rank, a.world, a.master, a.timeout)
    except Exception as err:  # a dead peer or a bad setup: say so and leave, never hang
        print(f"chipfuse worker rank {a.rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    main()
