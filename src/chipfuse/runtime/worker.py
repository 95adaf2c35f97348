"""An emulated die: one process that holds one stage of the plan and runs it on request.

Started by `Device` on this machine, or by hand on another (`chipfuse worker --rank K
--master HOST:PORT`). It joins the TCP rendezvous, receives the plan (JSON) from the host,
loads only its own blocks, reports its resident bytes, then serves FORWARD / FREE / SHUTDOWN
messages from the previous rank and passes results to the next one. Locally, `Device` starts
one launcher that imports torch once and forks every die from it (`launch`); its blocks come
from the prepared-weights cache when a previous start left them (prepared.py).
"""

from __future__ import annotations

import time

STARTED_AT = time.time()  # wall clock at import, before torch: start-up timings include the interpreter's

import argparse
import json
import os
import sys
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from ..frontends.config import ModelConfig
from ..plan.plan import Plan
from ..quant.formats import get_format
from . import prepared
from .recorder import ALL_REDUCE, COMPUTE, GATHER, PINGS, SEND, WAIT_IN, Recorder, boot_id
from .stage import ShardSpec, StageModel
from .transport import (
    FORWARD,
    FREE,
    HIDDEN,
    LOGITS,
    SHUTDOWN,
    TOKENS,
    TRACE,
    Channel,
    Fanout,
    Header,
    inline_bytes,
    places,
    recv_json,
    send_json,
    tensor_groups,
)
from .weights import open_weights, wanted_names


def _watch_parent(pid: int, before_exit=lambda: None) -> None:
    """Exit if the process that started us is gone (no orphans after a host crash). That is our parent, or
    the host a resident launcher forked us for (then its pidfd says when it ends)."""
    pidfd = None
    if pid != os.getppid():
        try:
            pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # already gone
            before_exit()
            os._exit(3)

    def gone() -> bool:
        if pidfd is None:
            return os.getppid() != pid
        import select

        return bool(select.select([pidfd], [], [], 0)[0])

    def loop():
        while True:
            if gone():
                before_exit()
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True).start()


def _die(rank: int, world: int, master: str, timeout_s: float, log: str) -> None:
    """A forked die: its own stderr log, the launcher as its parent to watch, then serve; never returns."""
    code = 0
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        _watch_parent(os.getppid())
        serve(rank, world, master, timeout_s)
    except BaseException as err:  # a dead peer or a bad setup: say so and leave, never hang
        print(f"chipfuse worker rank {rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)


def _wait_listening(master: str, timeout_s: float) -> None:
    """Until the host's rendezvous accepts connections (a die that comes too early backs off ~1 s)."""
    import socket

    host, port = master.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.005)


def launch(ranks: list[int], world: int, master: str, parent_pid: int | None, timeout_s: float, logdir: str) -> None:
    """Fork one die per rank from this process, so they share one set of imports (torch: ~1 s of CPU each).

    Torch is imported but has run nothing here (no OpenMP pool yet), so the children start clean.
    Prints "PIDS rank:pid ..." for the host, then reaps the children, writing each one's exit
    status (Popen's convention: -signal or the code) to LOGDIR/workerK.status for the host.
    """
    import importlib

    from . import fastpath

    for mod in ("safetensors.torch", "chipfuse.hw.spec"):  # what serve() imports later
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    children: dict[int, int] = {}

    def kill_children():
        for pid in children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    if parent_pid:  # from the start: a host killed while we still import or wait must not leave us behind
        _watch_parent(parent_pid, kill_children)
    fastpath.load()  # build or map the compiled kernel once, before the children need it
    _wait_listening(master, timeout_s)
    for rank in ranks:
        pid = os.fork()
        if pid == 0:
            _die(rank, world, master, timeout_s, os.path.join(logdir, f"worker{rank}.log"))
        children[pid] = rank
    print("PIDS " + " ".join(f"{r}:{p}" for p, r in children.items()), flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    while children:
        pid, status = os.waitpid(-1, 0)
        if pid not in children:
            continue
        rank = children.pop(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        tmp = os.path.join(logdir, f".worker{rank}.status")
        with open(tmp, "w") as f:
            f.write(str(code))
        os.replace(tmp, os.path.join(logdir, f"worker{rank}.status"))


def serve(rank: int, world: int, master: str, timeout_s: float = 600.0) -> None:
    marks = {"started": STARTED_AT, "imported": time.time()}  # wall-clock times, compared with the host's
    dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    marks["joined"] = time.time()
    setup = recv_json(0)
    marks["setup"] = time.time()
    if setup.get("tasks"):  # a die holding pieces of vision models (runtime.tasks), not an LLM stage
        from .tasks import serve_tasks

        serve_tasks(rank, setup)
        dist.destroy_process_group()
        return
    if setup.get("train"):  # a die fine-tuning its layers (runtime.train_worker), not serving requests
        from .train_worker import serve_train

        serve_train(rank, setup)
        dist.destroy_process_group()
        return
    torch.set_num_threads(int(setup.get("threads", 1)))
    plan = Plan.model_validate(setup["plan"])
    stage = plan.stages[rank - 1]
    cfg = ModelConfig.model_validate(plan.model.config)
    t0 = time.perf_counter()
    recipe = plan.stage_recipe(rank - 1)  # decided by the compiler, after any die fallback: read, not re-derived
    layers = {b - 1: recipe.for_block(b) for b, _ in recipe.blocks}
    fmt = recipe.default
    head_fmt = get_format(stage.head_format) if stage.head_format else None
    blocks = tuple(stage.blocks)

    def build(shard: ShardSpec | None = None) -> StageModel:
        """Dequantize this stage's blocks from the model file and pack them (the slow, cold path)."""
        weights = open_weights(setup["weights"], cfg).load(wanted_names(cfg, range(*blocks)))
        quantized = None
        if plan.quantized_weights:
            from ..quant.checkpoint import load_quantized

            quantized = load_quantized(plan.quantized_weights, set(wanted_names(cfg, range(*blocks))))
        return StageModel(cfg, weights, blocks, fmt, plan.workload.context, plan.workload.kv_precision, head_fmt,
                          layer_formats=layers, quantized=quantized, shard=shard)

    shard = ShardSpec(stage.shard.kv_heads, stage.shard.mlp_columns, stage.shard.vocab) if stage.shard else None
    if shard is None:
        model, cache = prepared.stage(setup["weights"], cfg, blocks, fmt, head_fmt, layers, plan.quantized_weights,
                                      plan.workload.context, plan.workload.kv_precision, build)
    else:  # the prepared cache keys whole stages; a shard is cut from the whole weights each start
        model, cache = build(shard), "off"
    if setup.get("adapter"):  # LoRA adapters served unmerged (runtime.adapters; the host checked them)
        from .adapters import read_adapter

        model.attach_adapters(read_adapter(setup["adapter"], cfg))
    place = places(plan)[rank]
    groups = tensor_groups(plan)
    rec = Recorder(bool(setup.get("trace")))
    mb = [0]  # the micro-batch being computed, for the collectives' records
    if shard is not None:
        _join_group(model, groups[place.group], rec, mb)
    marks["weights"] = time.time()
    model._compiled()  # load the compiled decode path now, not inside the first generated token
    marks["fastpath"] = time.time()
    same_clock = bool(setup.get("boot_id")) and setup.get("boot_id") == boot_id()  # one machine, one wall clock
    send_json({"rank": rank, "die": stage.die, "resident_weight_bytes": model.resident_weight_bytes(),
               "load_s": time.perf_counter() - t0, "cache": cache, "marks": marks, "pid": os.getpid(),
               "same_clock": same_clock}, 0)
    if rec.enabled and not same_clock:  # the host measures this die's clock against its own
        for _ in range(PINGS):
            recv_json(0)
            send_json({"t": rec.now()}, 0)
    stats = _Stats(setup.get("stats_dir"), rank, [plan.stages[r - 1].die if r else "host" for r in place.outbox])
    inbox = Channel(place.inbox, inline_bytes(plan, place.inbox, rank))
    outbox = Fanout([Channel(r, inline_bytes(plan, rank, r)) for r in place.outbox])  # empty unless it leads
    to_host = place.outbox == (0,)
    while True:
        t_wait = rec.now()
        h, payload = inbox.recv()
        t_got = rec.now()
        if h.cmd == SHUTDOWN:
            if not to_host:
                outbox.send(h)
            send_json({"bye": rank}, 0)  # the host tears its end down only after every die has left the loop
            break
        if h.cmd == FREE:
            for s in h.segs:
                model.free(s.slot)
            if not to_host:
                outbox.send(h)
            continue
        if h.cmd == TRACE:  # pass it on, then report (the host reads the dies in rank order)
            if not to_host:
                outbox.send(h)
            send_json(rec.to_json(), 0)
            continue
        if h.route:  # a backward pass or a collective: the header can say so, this worker cannot do it yet
            raise RuntimeError(f"unsupported message: direction {h.direction}, collective {h.collective}")
        if h.cmd == FORWARD:
            rec.add(WAIT_IN, h.mb, t_wait, t_got, payload.numel() * payload.element_size())
            mb[0] = h.mb
            out = model.forward(payload, list(h.segs))
            kind = LOGITS if model.has_head else HIDDEN
            if model.has_head and h.greedy:  # choose here: one id a sequence crosses back, not the logits
                out, kind = out.argmax(-1), TOKENS
            t_done = rec.now()
            rec.add(COMPUTE, h.mb, t_got, t_done)
            outbox.send(Header(FORWARD, h.mb, h.segs, kind, out.shape[-1], greedy=h.greedy), out)
            sent = out.numel() * out.element_size() if outbox.channels else 0
            if sent:
                rec.add(SEND, h.mb, t_done, None, sent)
            stats.add(t_done - t_got, sent)
    dist.destroy_process_group()


class _Stats:
    """This die's running totals (seconds computing, bytes sent on to each of the next dies, which all receive the
    same payload), written for the host to a small JSON file when the host gave a folder on this machine
    (`chipfuse serve`'s metrics): at once, then every half second while they change, by a thread of its own so
    the last step's counts arrive even when the die goes idle after it."""

    PERIOD_S = 0.5

    def __init__(self, folder: str | None, rank: int, to: list[str]):
        self.path = os.path.join(folder, f"worker{rank}.stats.json") if folder and os.path.isdir(folder) else None
        self.to, self.busy_s, self.sent_bytes, self.steps = to, 0.0, 0, 0
        if self.path:
            self._write()
            threading.Thread(target=self._writer, name="chipfuse-stats", daemon=True).start()

    def add(self, busy_s: float, sent_bytes: int) -> None:
        self.busy_s += busy_s
        self.sent_bytes += sent_bytes
        self.steps += 1

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"busy_s": self.busy_s, "sent_bytes": self.sent_bytes, "steps": self.steps, "to": self.to,
                       "at": time.time()}, f)
        os.replace(tmp, self.path)

    def _writer(self) -> None:
        written = self.steps
        while True:
            time.sleep(self.PERIOD_S)
            if self.steps != written:
                written = self.steps
                try:
                    self._write()
                except OSError:  # the host removed its folder: it is shutting down
                    return


COLLECTIVE_TAG = 7  # a group's exchanges, apart from the pipeline's messages (tag 0) between the same ranks


def _join_group(model: StageModel, group, rec: Recorder, mb: list[int]) -> None:
    """Give a tensor shard its collectives: partial outputs summed over the group, logits joined in vocabulary
    order (the shards' row counts differ, so each pads to the largest and the padding is cut). Each is
    recorded against micro-batch `mb[0]` when `rec` is on."""
    size = dist.get_world_size(group)
    members = sorted(dist.get_process_group_ranks(group))
    me = dist.get_rank()

    def reduce(part: torch.Tensor) -> torch.Tensor:
        """Direct exchange (the model's algorithm at decode sizes): every die sends its part to every other and
        adds all parts in the group's rank order, so every die holds the identical sum after one round."""
        part = part.contiguous()
        t0 = rec.now()
        got = {r: torch.empty_like(part) for r in members if r != me}
        reqs = [dist.isend(part, r, tag=COLLECTIVE_TAG) for r in got]
        reqs += [dist.irecv(buf, r, tag=COLLECTIVE_TAG) for r, buf in got.items()]
        for q in reqs:
            q.wait()
        total = None
        for r in members:
            x = part if r == me else got[r]
            total = x.clone() if total is None else total.add_(x)
        rec.add(ALL_REDUCE, mb[0], t0, None, part.numel() * part.element_size())
        return total

    def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
        t0 = rec.now()
        out = _gather(logits)
        rec.add(GATHER, mb[0], t0, None, out.numel() * out.element_size())
        return out

    def _gather(logits: torch.Tensor) -> torch.Tensor:
        n = torch.tensor([logits.shape[-1]], dtype=torch.int64)
        counts = [torch.zeros_like(n) for _ in range(size)]
        dist.all_gather(counts, n, group=group)
        widest = max(int(c) for c in counts)
        padded = torch.nn.functional.pad(logits.contiguous(), (0, widest - logits.shape[-1]))
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([p[..., : int(c)] for p, c in zip(parts, counts)], -1)

    model.reduce, model.gather_vocab = reduce, gather_vocab


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="chipfuse-worker", description="serve one emulated die")
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--master", required=True, help="HOST:PORT of the host's rendezvous")
    ap.add_argument("--parent-pid", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--fork-ranks", default=None, help=argparse.SUPPRESS)  # Device's launcher: "1,2,3"
    ap.add_argument("--logdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.fork_ranks:
        launch([int(r) for r in a.fork_ranks.split(",")], a.world, a.master, a.parent_pid, a.timeout, a.logdir)
        return
    if a.rank is None:
        ap.error("--rank is required")
    if a.parent_pid:
        _watch_parent(a.parent_pid)
    try:
        serve(a.rank, a.world, a.master, a.timeout)
    except Exception as err:  # a dead peer or a bad setup: say so and leave, never hang
        print(f"chipfuse worker rank {a.rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    main()
