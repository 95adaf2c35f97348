"""Dies that each host several programs (pieces of vision models), and the host that sends work along routes.

A request names a route: (die, program) hops in order. The host sends the input tensors to the first
die; each die runs its program on what it received and passes the result to the next hop; the last
sends it back to the host. A die serves requests in arrival order from any sender: a receiver
thread always accepts messages (so two dies sending to each other never wait on each other) and
the die's main thread computes and sends. A program that fails on a request (a wrong input) answers
that request with an error and keeps serving.

Messages travel as a JSON header (the command, the route left, the tensors' names, shapes and
dtypes) then the tensors, on tags of their own apart from the LLM pipeline's.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ChipfuseError
from .executor import DeviceError, Executor

TAG_LEN, TAG_HEADER, TAG_DATA = 11, 12, 13
_DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
       "int32": torch.int32, "uint8": torch.uint8, "int8": torch.int8, "bool": torch.bool, "float64": torch.float64}


def send_msg(header: dict, tensors: dict[str, torch.Tensor], dst: int) -> int:
    """Send a header and its tensors to rank `dst`; the payload bytes sent."""
    meta = [[k, list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in tensors.items()]
    data = torch.frombuffer(bytearray(json.dumps({**header, "tensors": meta}).encode()), dtype=torch.uint8)
    dist.send(torch.tensor([data.numel()], dtype=torch.int64), dst, tag=TAG_LEN)
    dist.send(data, dst, tag=TAG_HEADER)
    sent = 0
    for t in tensors.values():
        t = t.contiguous()
        dist.send(t, dst, tag=TAG_DATA)
        sent += t.numel() * t.element_size()
    return sent


def recv_msg(src: int | None = None) -> tuple[dict, dict[str, torch.Tensor], int]:
    """The next header and its tensors, from `src` or from any rank; and the sender."""
    n = torch.empty(1, dtype=torch.int64)
    sender = dist.recv(n, src, tag=TAG_LEN)
    data = torch.empty(int(n[0]), dtype=torch.uint8)
    dist.recv(data, sender, tag=TAG_HEADER)
    header = json.loads(data.numpy().tobytes().decode())
    tensors = {}
    for name, shape, dtype in header.pop("tensors"):
        t = torch.empty(shape, dtype=_DT[dtype])
        dist.recv(t, sender, tag=TAG_DATA)
        tensors[name] = t
    return header, tensors, sender


@dataclass(frozen=True)
class ProgramSpec:
    """One piece a die holds: nodes [start, end) of the ONNX model at `path`, run at `precision`."""

    id: str
    path: str
    name: str
    frame: tuple[int, ...]
    precision: str
    start: int
    end: int | None = None

    def to_json(self) -> dict:
        return {"kind": "cv", "id": self.id, "path": self.path, "name": self.name, "frame": list(self.frame),
                "precision": self.precision, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class LLMSpec:
    """A whole LLM on one die (a replica): its GGUF, configuration, formats, KV cache and `slots` sequences
    decoded together. A request is a prompt's token ids; the die prefills them and decodes greedily up to
    `max_tokens` or a stop token, in a batch with the other requests it holds."""

    id: str
    weights: str
    config: dict
    format: str
    head_format: str
    context: int
    slots: int = 1
    kv_precision: str = "fp16"

    def to_json(self) -> dict:
        return {"kind": "llm", "id": self.id, "weights": self.weights, "config": self.config, "format": self.format,
                "head_format": self.head_format, "context": self.context, "slots": self.slots,
                "kv_precision": self.kv_precision}


@dataclass
class _Seq:
    header: dict
    slot: int
    pos: int
    last: int
    out: list[int]
    max_tokens: int
    stop: set[int]
    spent_s: float


class _LLMProgram:
    """A die's whole-model LLM with `slots` KV slots: requests join the running batch as slots free up
    (continuous batching); each `step` decodes one token for every running sequence."""

    def __init__(self, spec: dict):
        from ..frontends.config import ModelConfig
        from ..quant.formats import get_format
        from . import prepared
        from .stage import StageModel
        from .weights import open_weights, wanted_names

        cfg = ModelConfig.model_validate(spec["config"])
        fmt, head = get_format(spec["format"]), get_format(spec["head_format"])
        blocks = (0, cfg.num_layers + 2)

        def build() -> StageModel:
            w = open_weights(spec["weights"], cfg).load(wanted_names(cfg, range(*blocks)))
            return StageModel(cfg, w, blocks, fmt, spec["context"], spec["kv_precision"], head)

        self.model, _ = prepared.stage(spec["weights"], cfg, blocks, fmt, head, {}, None, spec["context"],
                                       spec["kv_precision"], build)
        self.context, self.slots = spec["context"], int(spec.get("slots", 1))
        self.resident_bytes = self.model.resident_weight_bytes()
        self.inputs, self.outputs = ["ids"], ["tokens"]
        self.running: list[_Seq] = []
        self.waiting: list[tuple[dict, torch.Tensor]] = []

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def admit(self, header: dict, tensors: dict[str, torch.Tensor]) -> list[tuple[dict, torch.Tensor | str]]:
        """Take a request: prefill it now if a slot is free, else queue it. What finished (header, tokens) or
        failed (header, message)."""
        self.waiting.append((header, tensors.get("ids", torch.empty(0))))
        return self._fill()

    def _fill(self) -> list[tuple[dict, torch.Tensor | str]]:
        from .stage import Segment

        done: list[tuple[dict, torch.Tensor | str]] = []
        while self.waiting and len(self.running) < self.slots:
            header, ids = self.waiting.pop(0)
            args = header.get("args", {})
            ids = ids.long().reshape(-1)
            n, limit = int(ids.numel()), int(args.get("max_tokens", 32))
            if n == 0 or limit < 1 or n + limit > self.context:
                done.append((header, f"a prompt of {n} tokens + {limit} to generate does not fit the context of "
                                     f"{self.context} (at least one token each)"))
                continue
            slot = min(set(range(self.slots)) - {q.slot for q in self.running})
            t0 = time.perf_counter()
            self.model.free(slot)
            with torch.inference_mode():
                logits = self.model.forward(ids, [Segment(slot, 0, n)])
            tok = int(logits[-1].argmax())
            seq = _Seq(header, slot, n, tok, [tok], limit, set(args.get("stop", [])), time.perf_counter() - t0)
            if tok in seq.stop or limit == 1:
                done.append(self._finish(seq))
            else:
                self.running.append(seq)
        return done

    def step(self) -> list[tuple[dict, torch.Tensor | str]]:
        """One decode step for every running sequence; those that end leave, waiting ones take their slots."""
        from .stage import Segment

        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model.forward(torch.tensor([q.last for q in self.running]),
                                        [Segment(q.slot, q.pos, 1) for q in self.running])
        share = (time.perf_counter() - t0) / len(self.running)
        done, keep = [], []
        for q, row in zip(self.running, logits):
            tok = int(row.argmax())
            q.pos, q.last, q.spent_s = q.pos + 1, tok, q.spent_s + share
            q.out.append(tok)
            (done if tok in q.stop or len(q.out) >= q.max_tokens else keep).append(q)
        self.running = keep
        finished: list[tuple[dict, torch.Tensor | str]] = [self._finish(q) for q in done]
        return finished + self._fill()

    def _finish(self, q: _Seq) -> tuple[dict, torch.Tensor]:
        self.model.free(q.slot)
        q.header["_spent_s"] = q.spent_s
        return q.header, torch.tensor(q.out, dtype=torch.int64)


# ------------------------------------------------------------------ the die's side
def serve_tasks(rank: int, setup: dict) -> None:
    """A die's loop for task setups (called by the worker once it has read `setup`): load, report, serve.

    Messages are served in arrival order; between two of them, every LLM program with running sequences
    decodes one step, so a long generation and a stream of frames share the die (as the placement's
    time shares assume) instead of one waiting for the other to finish."""
    from ..frontends.onnx_model import load_onnx
    from .cv import CVProgram
    from .transport import send_json

    torch.set_num_threads(int(setup.get("threads", 1)))
    t0 = time.perf_counter()
    models: dict = {}
    programs: dict = {}
    for spec in setup["programs"]:
        if spec.get("kind") == "llm":
            programs[spec["id"]] = _LLMProgram(spec)
            continue
        key = (spec["path"], tuple(spec["frame"]))
        if key not in models:
            models[key] = load_onnx(spec["path"], spec["name"], tuple(spec["frame"]))
        programs[spec["id"]] = CVProgram(models[key], spec["precision"], spec["start"], spec["end"])
    die = setup["die"]
    send_json({"rank": rank, "die": die, "pid": os.getpid(), "load_s": time.perf_counter() - t0,
               "programs": {k: {"resident_bytes": p.resident_bytes, "inputs": p.inputs, "outputs": p.outputs}
                            for k, p in programs.items()}}, 0)
    inbox: queue.Queue = queue.Queue()

    def receive():
        while True:
            msg = recv_msg(None)
            inbox.put(msg)
            if msg[0].get("cmd") == "shutdown":
                return

    def forward(header: dict, out: dict[str, torch.Tensor], spent_s: float) -> None:
        spent = header.get("spent", []) + [[die, header["program"], spent_s]]
        route = header["route"]
        if route:
            (nxt, program), rest = route[0], route[1:]
            send_msg({"cmd": "run", "req": header["req"], "program": program, "route": rest, "spent": spent}, out,
                     nxt)
        else:
            send_msg({"cmd": "done", "req": header["req"], "spent": spent}, out, 0)

    def fail(header: dict, message: str) -> None:
        send_msg({"cmd": "error", "req": header["req"], "die": die,
                  "message": f"{header['program']} on {die}: {message}"}, {}, 0)

    def settle(results) -> None:
        for header, result in results:
            if isinstance(result, str):
                fail(header, result)
            else:
                forward(header, {"tokens": result}, header.pop("_spent_s", 0.0))

    llms = [p for p in programs.values() if isinstance(p, _LLMProgram)]
    threading.Thread(target=receive, name="chipfuse-task-inbox", daemon=True).start()
    while True:
        decoding = any(p.busy for p in llms)
        try:
            header, tensors, _sender = inbox.get(block=not decoding)
        except queue.Empty:
            header = None
        if header is not None:
            if header["cmd"] == "shutdown":
                send_msg({"cmd": "bye", "rank": rank}, {}, 0)
                return
            prog = programs.get(header["program"])
            t_got = time.perf_counter()
            try:
                if prog is None:
                    raise ChipfuseError(f"die {die} holds no program {header['program']!r}")
                if isinstance(prog, _LLMProgram):
                    settle(prog.admit(header, tensors))
                else:
                    forward(header, prog.run(tensors), time.perf_counter() - t_got)
            except Exception as e:  # noqa: BLE001 - this request fails, the die goes on serving
                fail(header, f"{type(e).__name__}: {e}")
        for p in llms:
            if p.busy:
                try:
                    settle(p.step())
                except Exception as e:  # noqa: BLE001 - its running requests fail, the die goes on serving
                    for q in p.running:
                        p.model.free(q.slot)
                        fail(q.header, f"{type(e).__name__}: {e}")
                    p.running = []


# ------------------------------------------------------------------ the host's side
class TaskExecutor(Executor):
    """The worker processes of a task device: rank k is dies[k-1]; each gets its programs at setup."""

    def __init__(self, dies: list[str], programs: dict[str, list[ProgramSpec | LLMSpec]], threads: int, **kw):
        super().__init__(None, Path(), threads, dies=dies, **kw)
        self.programs = programs

    def setup(self) -> list[dict]:
        return self.send_setups([{"tasks": True, "die": die, "threads": self.threads,
                                  "programs": [p.to_json() for p in self.programs.get(die, [])]} for die in self.dies],
                                "dies loading their programs")


class TaskDevice:
    """Dies holding programs, behind one submit(): a route of (die, program) hops and the input tensors in, a
    Future of the outputs (numpy) and each hop's compute seconds out."""

    def __init__(self, programs: dict[str, list[ProgramSpec | LLMSpec]], threads: int = 1, timeout_s: float = 300.0,
                 on_status=lambda m: None):
        self.dies = list(programs)
        self.executor = TaskExecutor(self.dies, programs, threads, on_status=on_status)
        self.executor.start(spawn=True, master=None, timeout_s=timeout_s)
        self.info = {i["die"]: i for i in self.executor.setup()}
        self._rank = {d: r for r, d in enumerate(self.dies, start=1)}
        self._futures: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._byes = 0
        self._closed = False
        self.sent_bytes = 0
        self._receiver = threading.Thread(target=self._receive, name="chipfuse-task-results", daemon=True)
        self._receiver.start()
        self.executor.on_death.append(self._fail_all)

    def submit(self, route: list[tuple[str, str]], tensors: dict[str, np.ndarray | torch.Tensor],
               args: dict | None = None) -> Future:
        """Send `tensors` along `route`; a Future of (outputs, [(die, program, compute seconds)]). `args` go to an
        LLM program (max_tokens, stop)."""
        if self._closed:
            raise DeviceError("this task device is closed")
        if self.executor.death is not None:
            raise self.executor.error()
        if not route:
            raise DeviceError("a route needs at least one (die, program) hop")
        for die, prog in route:
            if die not in self._rank:
                raise DeviceError(f"no die {die!r} (the dies: {', '.join(self.dies)})")
            if prog not in self.info[die]["programs"]:
                raise DeviceError(f"die {die} holds no program {prog!r} ({', '.join(self.info[die]['programs'])})")
        fut: Future = Future()
        data = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in tensors.items()}
        with self._lock:
            req = self._next
            self._next += 1
            self._futures[req] = fut
            hops = [[self._rank[d], p] for d, p in route]
            self.sent_bytes += send_msg({"cmd": "run", "req": req, "program": route[0][1], "route": hops[1:],
                                         "spent": [], "args": args or {}}, data, hops[0][0])
        return fut

    def run(self, route: list[tuple[str, str]], tensors: dict, timeout_s: float = 120.0) -> dict[str, np.ndarray]:
        return self.submit(route, tensors).result(timeout_s)[0]

    def _receive(self) -> None:
        while True:
            try:
                header, tensors, _ = recv_msg(None)
            except Exception as e:  # noqa: BLE001 - the group is gone: a die died or we are closing
                self._fail_all(e)
                return
            cmd = header["cmd"]
            if cmd == "bye":
                self._byes += 1
                if self._byes == len(self.dies):
                    return
                continue
            fut = self._futures.pop(header["req"], None)
            if fut is None:
                continue
            if cmd == "error":
                fut.set_exception(DeviceError(header["message"]))
            else:
                fut.set_result(({k: v.float().numpy() if v.is_floating_point() else v.numpy()
                                 for k, v in tensors.items()}, header["spent"]))

    def _fail_all(self, why) -> None:
        err = why.error() if hasattr(why, "error") else DeviceError(f"the dies stopped: {why}")
        for req in list(self._futures):
            fut = self._futures.pop(req, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.executor.death is None:
            try:
                with self._lock:
                    for die in self.dies:
                        send_msg({"cmd": "shutdown"}, {}, self._rank[die])
                self._receiver.join(10)
            except Exception:  # noqa: BLE001 - a die already gone: the kill below ends the rest
                pass
        self.executor.shutdown(graceful=False)

    def __enter__(self) -> TaskDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["TaskDevice", "ProgramSpec", "LLMSpec", "serve_tasks", "send_msg", "recv_msg"]
