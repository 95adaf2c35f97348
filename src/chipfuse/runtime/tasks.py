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
        return {"id": self.id, "path": self.path, "name": self.name, "frame": list(self.frame),
                "precision": self.precision, "start": self.start, "end": self.end}


# ------------------------------------------------------------------ the die's side
def serve_tasks(rank: int, setup: dict) -> None:
    """A die's loop for task setups (called by the worker once it has read `setup`): load, report, serve."""
    from ..frontends.onnx_model import load_onnx
    from .cv import CVProgram
    from .transport import send_json

    torch.set_num_threads(int(setup.get("threads", 1)))
    t0 = time.perf_counter()
    models, programs = {}, {}
    for spec in setup["programs"]:
        key = (spec["path"], tuple(spec["frame"]))
        if key not in models:
            models[key] = load_onnx(spec["path"], spec["name"], tuple(spec["frame"]))
        programs[spec["id"]] = CVProgram(models[key], spec["precision"], spec["start"], spec["end"])
    send_json({"rank": rank, "die": setup["die"], "pid": os.getpid(), "load_s": time.perf_counter() - t0,
               "programs": {k: {"resident_bytes": p.resident_bytes, "inputs": p.inputs, "outputs": p.outputs}
                            for k, p in programs.items()}}, 0)
    inbox: queue.Queue = queue.Queue()

    def receive():
        while True:
            msg = recv_msg(None)
            inbox.put(msg)
            if msg[0].get("cmd") == "shutdown":
                return

    threading.Thread(target=receive, name="chipfuse-task-inbox", daemon=True).start()
    while True:
        header, tensors, sender = inbox.get()
        if header["cmd"] == "shutdown":
            send_msg({"cmd": "bye", "rank": rank}, {}, 0)
            return
        t_got = time.perf_counter()
        prog = programs.get(header["program"])
        try:
            if prog is None:
                raise ChipfuseError(f"die {setup['die']} holds no program {header['program']!r}")
            out = prog.run(tensors)
        except Exception as e:  # noqa: BLE001 - this request fails, the die goes on serving
            send_msg({"cmd": "error", "req": header["req"], "die": setup["die"],
                      "message": f"{header['program']} on {setup['die']}: {type(e).__name__}: {e}"}, {}, 0)
            continue
        spent = header.get("spent", []) + [[setup["die"], header["program"], time.perf_counter() - t_got]]
        route = header["route"]
        if route:
            (nxt, program), rest = route[0], route[1:]
            send_msg({"cmd": "run", "req": header["req"], "program": program, "route": rest, "spent": spent},
                     out, nxt)
        else:
            send_msg({"cmd": "done", "req": header["req"], "spent": spent}, out, 0)


# ------------------------------------------------------------------ the host's side
class TaskExecutor(Executor):
    """The worker processes of a task device: rank k is dies[k-1]; each gets its programs at setup."""

    def __init__(self, dies: list[str], programs: dict[str, list[ProgramSpec]], threads: int, **kw):
        super().__init__(None, Path(), threads, dies=dies, **kw)
        self.programs = programs

    def setup(self) -> list[dict]:
        from .transport import recv_json, send_json

        try:
            for rank, die in enumerate(self.dies, start=1):
                send_json({"tasks": True, "die": die, "threads": self.threads,
                           "programs": [p.to_json() for p in self.programs.get(die, [])]}, rank)
            self._status("dies loading their programs")
            self.worker_info = [recv_json(rank) for rank in range(1, self.world)]
        except BaseException as e:
            self.kill()
            err = e if isinstance(e, DeviceError) else self.error() or DeviceError(f"workers failed during setup: {e}")
            self.shutdown(graceful=False)
            raise err from None
        return self.worker_info


class TaskDevice:
    """Dies holding programs, behind one submit(): a route of (die, program) hops and the input tensors in, a
    Future of the outputs (numpy) and each hop's compute seconds out."""

    def __init__(self, programs: dict[str, list[ProgramSpec]], threads: int = 1, timeout_s: float = 300.0,
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

    def submit(self, route: list[tuple[str, str]], tensors: dict[str, np.ndarray | torch.Tensor]) -> Future:
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
                                         "spent": []}, data, hops[0][0])
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


__all__ = ["TaskDevice", "ProgramSpec", "serve_tasks", "send_msg", "recv_msg"]
