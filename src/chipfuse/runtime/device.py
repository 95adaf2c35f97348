"""`Device`: N emulated dies behind one interface. The user never addresses a die.

    with Device("talk-4die-d2d") as dev:              # SmolLM2 on four dies
        for piece in dev.chat([{"role": "user", "content": "Hi"}]):
            print(piece, end="")

The host compiles a plan (or takes one), starts one worker process per stage, tokenises,
schedules requests into micro-batches (up to one per die in flight), samples and
detokenises; hidden states flow die to die over torch.distributed (gloo).
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import ChipfuseError
from ..frontends import resolve_name
from ..frontends.config import ModelConfig
from ..hw.load import load_system
from ..hw.spec import System
from ..plan.plan import Plan
from ..quant.formats import Recipe
from .model_config import gguf_config
from .model_files import default_gguf
from .tokenizer import StreamDecoder, load_tokenizer

if TYPE_CHECKING:  # torch is imported only once the dies' launcher is on its way (Device._start): ~1 s each
    import torch

    from .sampling import SamplingParams

DEFAULT_SYSTEM = "talk-4die-d2d"
DEFAULT_MODELS = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}


class DeviceError(ChipfuseError):
    """A die failed or the device was used wrongly; the message says which and what happened."""


def resolve_model(model: str | Path | None) -> tuple[Path, ModelConfig]:
    """A runnable model: None or 'smollm2' (the embedded default), a .gguf file, or a HF folder."""
    if model is None or str(model).lower() in DEFAULT_MODELS:
        p = default_gguf()
        return p, gguf_config(p)
    p = Path(model)
    if p.suffix == ".gguf" and p.exists():
        return p, gguf_config(p)
    if p.is_dir() and (p / "config.json").exists():
        from ..frontends import load_model_config

        return p, load_model_config(p)  # the config read and checked like any config.json
    if resolve_name(str(model)):
        raise DeviceError(f"{model!r} is a catalogue entry (architecture only, no weights); to run it give a "
                          f".gguf file or a folder with config.json and *.safetensors (the default is smollm2)")
    raise DeviceError(f"{model}: no such model file or folder")


@dataclass
class Request:
    """One generation in flight: its own slot (KV cache on every die), sampling and output queue."""

    id: int
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    stop_ids: frozenset[int]
    out: queue.Queue = field(default_factory=queue.Queue)
    gen: torch.Generator | None = None
    slot: int = -1
    pos: int = 0
    next_token: int | None = None
    generated: list[int] = field(default_factory=list)
    t_submit: float = 0.0
    t_first: float | None = None
    t_last: float | None = None
    cancelled: bool = False
    finish_reason: str = ""


class Generation:
    """An iterator over text pieces of one request; speed figures are filled in as it runs."""

    def __init__(self, device: Device, req: Request):
        self.device, self.req = device, req
        self.decoder = StreamDecoder(device.tokenizer)
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self.req.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            piece = self.decoder.push(item)
            if piece:
                self.text += piece
                yield piece

    def cancel(self) -> None:
        self.req.cancelled = True

    @property
    def tokens(self) -> list[int]:
        return list(self.req.generated)

    @property
    def ttft_s(self) -> float | None:
        return None if self.req.t_first is None else self.req.t_first - self.req.t_submit

    @property
    def decode_tokens_per_s(self) -> float | None:
        r = self.req
        n = len(r.generated) - 1
        if r.t_first is None or r.t_last is None or n < 1 or r.t_last <= r.t_first:
            return None
        return n / (r.t_last - r.t_first)

    @property
    def finish_reason(self) -> str:
        return self.req.finish_reason


def worker_env() -> dict[str, str]:
    """Environment for worker processes. The dies of a pipeline take turns on the same cores: an
    OpenMP thread spins briefly between kernels of its own stage, then sleeps, so an idle die does
    not starve the active one. Measured on 2 cores (benchmarks/bench_runtime.py): fully passive
    waits lose ~10% at 1 die; 30000 spins (~0.6 ms of pause loops after each stage) slowed every
    stage of a 4-die pipeline by ~1.5x; 3000 keeps the spin inside one stage's kernels."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "ACTIVE")
    env.setdefault("GOMP_SPINCOUNT", "3000")
    return env


def fork_workers() -> bool:
    """Start the dies by forking one launcher (Linux; CHIPFUSE_FORK_WORKERS=0 starts one interpreter per die)."""
    return sys.platform.startswith("linux") and os.environ.get("CHIPFUSE_FORK_WORKERS", "1") not in ("0", "no", "off")


class ForkedWorker:
    """A die forked by the launcher, seen through Popen's poll / wait / kill / pid.

    It is the launcher's child, not ours: the launcher reaps it and writes its exit status (Popen's
    convention, -signal or the code) to a file, which poll() reads."""

    def __init__(self, pid: int, status: Path, launcher: subprocess.Popen):
        self.pid, self._status, self._launcher = pid, status, launcher
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._status.exists():
                self.returncode = int(self._status.read_text())
            elif self._launcher.poll() is not None and not os.path.exists(f"/proc/{self.pid}"):
                self.returncode = self._launcher.returncode or -9  # the launcher died before reaping it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"die pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


class _Background:
    """fn(*args) on a thread; result() waits and returns its value or raises its error."""

    def __init__(self, fn, *args):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="chipfuse-background", daemon=True)
        self._thread.start()

    def _run(self, fn, args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # re-raised in result()
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _dist_initialized() -> bool:
    """torch.distributed's default group is up in this process (False if torch is not even imported yet)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Device:
    """Every die of a system as one device: compile, load, generate, close."""

    def __init__(self, system: str | Path | System = DEFAULT_SYSTEM, model: str | Path | None = None,
                 precision: "str | Recipe | None" = None, *, head_precision: str | None = None, context: int = 2048,
                 max_batch: int = 4, kv_precision: str = "fp16", threads: int | None = None, dies: int | None = None,
                 plan: Plan | None = None, spawn: bool = True, master: str | None = None,
                 quantized: str | Path | None = None,
                 startup_timeout_s: float = 300.0, on_status=None):
        from ..compile.compiler import compile_plan

        self.marks = {"init": time.time()}  # wall-clock start-up milestones (startup_report)
        self._status = on_status or (lambda msg: None)
        self.system = system if isinstance(system, System) else load_system(system)
        self.model_path, self.config = resolve_model(model)
        if plan is None:
            plan = compile_plan(self.config, self.system, precision, head_precision=head_precision, context=context,
                                batch=max_batch, prompt_tokens=min(512, context), kv_precision=kv_precision,
                                max_dies=dies, model_source=str(self.model_path),
                                quantized_weights=str(quantized) if quantized else None)
        self.plan = plan
        self.max_batch = plan.workload.batch
        self.context = plan.workload.context
        self.n_stages = len(plan.stages)
        self.world = self.n_stages + 1
        self.threads = threads or os.cpu_count() or 1
        self.marks["planned"] = time.time()
        self._procs: list[subprocess.Popen | ForkedWorker] = []
        self._logs: list[Path] = []
        self._closed = False
        self.error: BaseException | None = None
        self._pending: queue.Queue[Request] = queue.Queue()
        self._ids = itertools.count()
        self._wake = threading.Event()
        self.worker_info: list[dict] = []
        self._start(spawn, master, startup_timeout_s)
        try:
            self.tokenizer = self._tokenizer_job.result()
        except BaseException:
            self.close()
            raise
        self.eos_ids = frozenset(i for i in (self.tokenizer.eos_token_id,) if i is not None)
        self.marks["ready"] = time.time()
        from .transport import Channel, inline_bytes

        last = self.world - 1
        self._to_first = Channel(1, inline_bytes(self.plan, 0, 1))
        self._from_last = Channel(last, inline_bytes(self.plan, last, 0))
        self._thread = threading.Thread(target=self._run, name="chipfuse-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ---------------------------------------------------------------- start-up
    def _start(self, spawn: bool, master: str | None, timeout_s: float) -> None:
        if _dist_initialized():
            raise DeviceError("another Device is open in this process; close it first")
        host, port = (master.rsplit(":", 1) if master else ("127.0.0.1", "0"))
        port = int(port) or _free_port()
        self.master = f"{host}:{port}"
        err: list[BaseException] = []
        forked = spawn and fork_workers()
        self.marks["spawned"] = time.time()
        if forked:  # before this process imports torch: the launcher imports its own copy meanwhile
            self._logdir = Path(tempfile.mkdtemp(prefix="chipfuse-workers-"))
            self._logs = [self._logdir / f"worker{rank}.log" for rank in range(1, self.world)]
            self._launch_forked(self._worker_args(timeout_s))
        import torch.distributed as dist

        def init():
            try:
                dist.init_process_group("gloo", init_method=f"tcp://{self.master}", rank=0, world_size=self.world,
                                        timeout=timedelta(seconds=timeout_s))
            except BaseException as e:  # reported below
                err.append(e)

        # the rendezvous server before the dies: a die that finds it not listening backs off for most of a second
        # (the forked dies' launcher waits for it to listen)
        t = threading.Thread(target=init, daemon=True)
        t.start()
        # the tokenizer (transformers: ~1 s of imports) while the dies join and load; started after this
        # thread's own torch import, which the dies wait for (two imports at once in one process take turns)
        self._tokenizer_job = _Background(load_tokenizer, self.model_path)
        if forked:
            self._forked_pids()
        elif spawn:
            self._logdir = Path(tempfile.mkdtemp(prefix="chipfuse-workers-"))
            self._logs = [self._logdir / f"worker{rank}.log" for rank in range(1, self.world)]
            for rank, log in enumerate(self._logs, start=1):
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-m", "chipfuse.runtime.worker", "--rank", str(rank), *self._worker_args(timeout_s)],
                    stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True, env=worker_env()))
        else:
            self._status(f"waiting for {self.world - 1} workers: chipfuse worker --rank K --world {self.world} "
                         f"--master {self.master}  (K = 1..{self.world - 1})")
        self._status(f"starting {self.n_stages} worker process(es)")
        self._death: DeviceError | None = None
        threading.Thread(target=self._watchdog, name="chipfuse-watchdog", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive():
            t.join(0.05)
            try:
                self._alive()
            except DeviceError:
                self._kill()
                raise
            if time.monotonic() > deadline:
                self._kill()
                raise DeviceError(f"workers did not join the rendezvous at {self.master} within {timeout_s:.0f} s")
        if err:
            self._kill()
            raise self._death or DeviceError(f"rendezvous at {self.master} failed: {err[0]}")
        self.marks["joined"] = time.time()
        try:
            self._setup_workers()
        except DeviceError:
            raise
        except BaseException as e:
            self._kill()
            raise self._death or DeviceError(f"workers failed during setup: {e}") from None

    def _worker_args(self, timeout_s: float) -> list[str]:
        return ["--world", str(self.world), "--master", self.master, "--parent-pid", str(os.getpid()),
                "--timeout", str(timeout_s)]

    def _launch_forked(self, common: list[str]) -> None:
        """One launcher process imports torch once and forks every die (worker.launch): on a few cores,
        N interpreters each importing torch at once were most of a warm start."""
        ranks = ",".join(str(r) for r in range(1, self.world))
        log = self._logdir / "launcher.log"
        self._launcher = subprocess.Popen(
            [sys.executable, "-m", "chipfuse.runtime.worker", "--fork-ranks", ranks, "--logdir", str(self._logdir),
             *common], stdout=subprocess.PIPE, stderr=open(log, "w"), start_new_session=True, env=worker_env(),
            text=True)

    def _forked_pids(self) -> None:
        """The dies' pids, once the launcher has forked them (it prints them)."""
        log = self._logdir / "launcher.log"
        line = self._launcher.stdout.readline()
        if not line.startswith("PIDS "):
            self._launcher.wait(timeout=10)
            tail = log.read_text().strip().splitlines()
            raise DeviceError(f"the worker launcher exited with code {self._launcher.returncode}"
                              f"{': ' + tail[-1] if tail else ''}")
        pids = dict(item.split(":") for item in line.split()[1:])
        for rank in range(1, self.world):
            self._procs.append(ForkedWorker(int(pids[str(rank)]), self._logdir / f"worker{rank}.status",
                                            self._launcher))

    def _setup_workers(self) -> None:
        from .transport import recv_json, send_json

        plan_json = self.plan.model_dump(mode="json", by_alias=True)
        for rank in range(1, self.world):
            send_json({"plan": plan_json, "weights": str(self.model_path), "threads": self.threads}, rank)
        self._status("dies loading their layers")
        for rank in range(1, self.world):
            info = recv_json(rank)
            stage = self.plan.stages[rank - 1]
            info["plan_weight_bytes"] = stage.weight_bytes
            info["die_memory_bytes"] = stage.memory_bytes
            if info["resident_weight_bytes"] + stage.kv_bytes > stage.memory_bytes:
                self.close()
                raise DeviceError(f"{stage.die} holds {info['resident_weight_bytes']:,} weight bytes plus "
                                  f"{stage.kv_bytes:,} of KV cache: more than its {stage.memory_bytes:,} bytes")
            self.worker_info.append(info)
        self.marks["loaded"] = time.time()

    def _watchdog(self) -> None:
        """If a worker dies, record why and kill the others: every blocked transfer then fails fast."""
        while not self._closed:
            try:
                self._alive()
            except DeviceError as e:
                if not self._closed:
                    self._death = e
                    self._kill()
                return
            time.sleep(0.05)

    def _alive(self) -> None:
        """Raise DeviceError if any worker process has exited, naming the one that died first.

        A killed die takes its neighbours down with it (their sockets close), so when several are
        gone a death by signal is the cause; the others get a moment to show theirs."""
        dead = [(rank, p, p.poll()) for rank, p in enumerate(self._procs, start=1)]
        dead = [d for d in dead if d[2] is not None]
        if dead and not any(code < 0 for _, _, code in dead):
            time.sleep(0.2)
            again = [(rank, p, p.poll()) for rank, p in enumerate(self._procs, start=1)]
            dead = [d for d in again if d[2] is not None and d[2] < 0] or dead
        for rank, p, code in sorted(dead, key=lambda d: d[2] >= 0)[:1]:
            if code is not None:
                stage = self.plan.stages[rank - 1]
                tail = ""
                try:
                    lines = self._logs[rank - 1].read_text().strip().splitlines()
                    tail = f": {lines[-1]}" if lines else ""
                except OSError:
                    pass
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise DeviceError(f"die {stage.die} (worker rank {rank}, pid {p.pid}) {how}{tail}")

    # ---------------------------------------------------------------- API
    def submit(self, prompt: str | list[int], max_tokens: int = 128, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop_ids: set[int] | None = None) -> Generation:
        """Queue a request; iterate the returned Generation for its text."""
        import torch

        from .sampling import SamplingParams
        if self._closed or self.error:
            raise DeviceError(f"the device is closed{': ' + str(self.error) if self.error else ''}")
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise DeviceError("empty prompt")
        if max_tokens < 1:
            raise DeviceError("max_tokens must be at least 1")
        if len(ids) + max_tokens > self.context:
            raise DeviceError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceed the plan's context "
                              f"of {self.context} tokens; shorten one or plan a longer --context")
        params = SamplingParams(temperature, top_k, top_p, seed)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        req = Request(next(self._ids), ids, max_tokens, params, frozenset(self.eos_ids if stop_ids is None else stop_ids), gen=gen,
                      t_submit=time.perf_counter())
        self._pending.put(req)
        self._wake.set()
        return Generation(self, req)

    def generate(self, prompt: str | list[int], max_tokens: int = 128, **kw) -> Generation:
        return self.submit(prompt, max_tokens, **kw)

    def chat(self, messages: list[dict], max_tokens: int = 128, **kw) -> Generation:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return self.submit(list(ids), max_tokens, **kw)

    # ---------------------------------------------------------------- scheduler
    def _run(self) -> None:
        import torch

        from .sampling import sample
        from .stage import Segment
        from .transport import FORWARD, FREE, IDS, MAX_SEGS, TOKENS, Header

        free_slots = list(range(self.max_batch))
        active: dict[int, Request] = {}
        waiting_prefill: list[Request] = []
        ready: list[Request] = []
        inflight: list[list[Request]] = []
        mb_ids = itertools.count()
        try:
            while not self._closed:
                while free_slots and not self._pending.empty():
                    r = self._pending.get()
                    r.slot = free_slots.pop(0)
                    active[r.slot] = r
                    waiting_prefill.append(r)
                while len(inflight) < self.n_stages and (waiting_prefill or ready):
                    if waiting_prefill:
                        r = waiting_prefill.pop(0)
                        batch, ids = [r], torch.tensor(r.prompt, dtype=torch.int64)
                        segs = (Segment(r.slot, 0, len(r.prompt)),)
                    else:
                        batch, ready = ready[:MAX_SEGS], ready[MAX_SEGS:]
                        ids = torch.tensor([r.next_token for r in batch], dtype=torch.int64)
                        segs = tuple(Segment(r.slot, r.pos, 1) for r in batch)
                    greedy = int(all(r.params.temperature == 0 for r in batch))
                    self._to_first.send(Header(FORWARD, next(mb_ids), segs, IDS, greedy=greedy), ids)
                    inflight.append(batch)
                if not inflight:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                h, out = self._from_last.recv()
                batch = inflight.pop(0)
                now = time.perf_counter()
                done = []
                for i, r in enumerate(batch):
                    tok = int(out[i]) if h.kind == TOKENS else sample(out[i], r.params, r.gen)
                    r.pos = len(r.prompt) if r.t_first is None else r.pos + 1
                    if r.t_first is None:
                        r.t_first = now
                    r.t_last = now
                    r.generated.append(tok)
                    r.out.put(tok)
                    if r.cancelled or tok in r.stop_ids or len(r.generated) >= r.max_tokens:
                        r.finish_reason = "cancelled" if r.cancelled else ("stop" if tok in r.stop_ids else "length")
                        done.append(r)
                    else:
                        r.next_token = tok
                        ready.append(r)
                for r in done:
                    r.out.put(None)
                    active.pop(r.slot)
                    self._to_first.send(Header(FREE, 0, (Segment(r.slot, 0, 0),)))
                    free_slots.append(r.slot)
        except BaseException as err:  # a dead die: fail every request, stop every process
            if self._closed:
                return
            time.sleep(0.1)  # let the watchdog name the die that died
            self.error = self._death or (err if isinstance(err, DeviceError) else DeviceError(f"device failed: {err}"))
            for r in list(active.values()) + waiting_prefill:
                r.out.put(self.error)
            while not self._pending.empty():
                self._pending.get().out.put(self.error)
            self._kill()

    # ---------------------------------------------------------------- shutdown
    def _kill(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        launcher = getattr(self, "_launcher", None)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)  # it leaves once it has reaped every die
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
            if launcher.stdout:
                launcher.stdout.close()

    def close(self) -> None:
        """Stop every worker and release the rendezvous. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self.error is None and _dist_initialized():
            from .transport import SHUTDOWN, Header

            if hasattr(self, "_thread"):
                self._thread.join(timeout=5)
            try:
                self._to_first.send(Header(SHUTDOWN))
            except BaseException:
                pass
            for p in self._procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self._kill()
        if _dist_initialized():
            import torch.distributed as dist

            t = threading.Thread(target=dist.destroy_process_group, daemon=True)
            t.start()
            t.join(5)
        atexit.unregister(self.close)

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reports
    def startup_report(self) -> dict[str, float]:
        """Seconds spent in each start-up phase: the host's, then the slowest die's (from its own clock marks).

        plan: model config + plan; spawn_to_import: process start + imports (torch) in the slowest die;
        rendezvous: until every die joined; weights: cache load or dequantize + pack; fastpath: the
        compiled decode path; ready: tokenizer and the rest until the device accepts requests.
        """
        m = self.marks
        rep = {"plan_s": m["planned"] - m["init"]}
        if self.worker_info and "marks" in self.worker_info[0]:
            w = [i["marks"] for i in self.worker_info]
            rep["spawn_to_import_s"] = max(x["imported"] for x in w) - m.get("spawned", m["planned"])
            rep["rendezvous_s"] = m["joined"] - max(x["imported"] for x in w)
            rep["weights_s"] = max(x["weights"] - x["setup"] for x in w)
            rep["fastpath_s"] = max(x["fastpath"] - x["weights"] for x in w)
        rep["loaded_s"] = m["loaded"] - m["init"]
        rep["ready_s"] = m["ready"] - m["init"]
        return {k: round(v, 3) for k, v in rep.items()}

    def memory_report(self) -> list[dict]:
        """Per die: resident weight bytes measured in the worker, beside the plan's figures."""
        return [dict(die=i["die"], resident_weight_bytes=i["resident_weight_bytes"],
                     plan_weight_bytes=i["plan_weight_bytes"], die_memory_bytes=i["die_memory_bytes"],
                     load_s=round(i["load_s"], 2)) for i in self.worker_info]
