"""`Device`: N emulated dies behind one interface. The user never addresses a die.

    with chipfuse.api.open_device("talk-4die-d2d") as dev:      # SmolLM2 on four dies
        for piece in dev.chat([{"role": "user", "content": "Hi"}]):
            print(piece, end="")

The host takes a compiled plan (the API compiles it), starts one worker process per stage (executor.py),
tokenises, schedules requests into micro-batches (scheduler.py: up to one per die in flight),
samples and detokenises; hidden states flow die to die over torch.distributed (gloo, transport.py).
One Device per process at a time (the host joins torch.distributed's default group).
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..frontends import resolve_name
from ..frontends.config import ModelConfig
from ..frontends.model_files import default_gguf
from ..plan.plan import Plan
from .executor import (  # noqa: F401 (re-exported)
    DeviceError,
    Executor,
    ForkedWorker,
    dist_initialized,
    fork_workers,
    free_port,
    worker_env,
)
from .model_config import gguf_config
from .recorder import HOST, SEND, WAIT_IN, Batch, Interval, Recorder, Recording
from .scheduler import Request, Scheduler
from .tokenizer import StreamDecoder, load_tokenizer

DEFAULT_MODELS = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}
_free_port, _dist_initialized = free_port, dist_initialized  # the names before the executor split


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


class _Job:
    """fn() to run on the scheduling loop's thread (which owns the pipeline's ends); result() waits for it."""

    def __init__(self, fn):
        self.fn, self._done = fn, threading.Event()
        self._value, self._error = None, None

    def run(self) -> None:
        try:
            self._value = self.fn()
        except BaseException as e:  # re-raised in result()
            self._error = e
        self._done.set()

    def result(self, timeout_s: float):
        if not self._done.wait(timeout_s):
            raise DeviceError(f"the device did not get to the request within {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        return self._value


def planning_only(plan: Plan) -> str | None:
    """Why the runtime cannot hold a plan's weight formats (llama.cpp's GGUF types plan and predict only), or None."""
    from ..quant.formats import RUNNABLE

    held = {f.name for i in range(len(plan.stages)) for f in plan.stage_recipe(i).formats() if not f.runnable}
    if not held:
        return None
    return (f"the plan holds {', '.join(sorted(held))}: llama.cpp's GGUF types are for planning and prediction; "
            f"chipfuse's dies run {', '.join(RUNNABLE)} (e.g. --precision int4-g64 or int8)")


class Device:
    """Every die of a system as one device: load a compiled plan onto the dies, generate, close.

    Three parts: an `Executor` runs the worker processes, a `Scheduler` decides what runs each
    step, and this facade holds the API and the loop that carries the scheduler's decisions out."""

    def __init__(self, plan: Plan, model: str | Path | None = None, *, threads: int | None = None, spawn: bool = True,
                 master: str | None = None, startup_timeout_s: float = 300.0, on_status=None,
                 started_at: float | None = None, trace: bool = False, prefill_chunk: int | None = None,
                 adapter: str | Path | None = None):
        """Start the dies of a compiled `plan` with the model file it was made for (`model`: the same file or
        folder, None for the embedded SmolLM2). Compile plans with `chipfuse.api.open_device` or `api.plan`:
        the runtime obeys a plan, it never makes one. `trace`: the host and every die record what they do
        and when, for `recording()` (a few clock reads per message). `prefill_chunk`: prompts go to the dies in
        pieces of at most this many tokens, with the running requests' decode steps between them. `adapter`: a
        LoRA folder (peft's layout, `chipfuse finetune`'s output) the dies serve unmerged."""
        if not isinstance(plan, Plan):
            raise DeviceError(f"Device takes a compiled Plan (got {type(plan).__name__}); start one with "
                              "chipfuse.api.open_device(system, model, precision, ...)")
        self.marks = {"init": started_at or time.time()}  # wall-clock start-up milestones (startup_report)
        self._status = on_status or (lambda msg: None)
        self.model_path, self.config = resolve_model(model)
        if getattr(self.config, "is_moe", False):
            raise DeviceError(f"{self.config.name} is a mixture of experts: chipfuse plans and predicts it "
                              "(`chipfuse plan`), and its dies run dense models only")
        reason = plan.unsupported() or planning_only(plan)
        if reason:
            raise DeviceError(reason)
        self.adapter = None
        if adapter is not None:  # checked here, before any die starts
            from .adapters import read_adapter

            if any(st.kind != "layers" for st in plan.stages):
                raise DeviceError("tensor-split plans do not serve adapters yet: run with --split pipeline")
            self.adapter = read_adapter(adapter, self.config)
        self.plan = plan
        self.max_batch = plan.workload.batch
        self.context = plan.workload.context
        self.n_stages = len(plan.stages)
        self.world = self.n_stages + 1
        self.threads = threads or os.cpu_count() or 1
        self.marks["planned"] = time.time()
        self._closed = False
        self.error: BaseException | None = None
        self._pending: queue.Queue[Request] = queue.Queue()  # submit() (any thread) -> the scheduling loop
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._control: queue.Queue[_Job] = queue.Queue()  # work for the scheduling loop once it is idle
        self.recorder = Recorder(trace)
        self._batches: list[Batch] = []
        self.executor = Executor(plan, self.model_path, self.threads, on_status=self._status, marks=self.marks,
                                 trace=trace, adapter=str(adapter) if adapter is not None else None)
        if prefill_chunk is not None and not (isinstance(prefill_chunk, int) and prefill_chunk >= 1):
            raise DeviceError(f"prefill_chunk {prefill_chunk!r}: give a whole number of tokens, at least 1")
        self.scheduler = Scheduler(self.max_batch, self.n_stages, prefill_chunk=prefill_chunk)
        self._start(spawn, master, startup_timeout_s)
        try:
            self.tokenizer = self._tokenizer_job.result()
        except BaseException:
            self.close()
            raise
        self.eos_ids = frozenset(i for i in (self.tokenizer.eos_token_id,) if i is not None)
        self.marks["ready"] = time.time()
        # results are received on a thread of their own: a host blocked sending the next micro-batch to the
        # first die must still take the last die's result, or a full pipeline waits on itself (gloo sends
        # complete only when the peer receives)
        self._results: queue.Queue = queue.Queue()
        self._expect = threading.Semaphore(0)  # one permit per FORWARD sent: results owed by the last die
        self._receiver = threading.Thread(target=self._receive, name="chipfuse-receiver", daemon=True)
        self._receiver.start()
        self._thread = threading.Thread(target=self._run, name="chipfuse-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # ---------------------------------------------------------------- start-up
    def _start(self, spawn: bool, master: str | None, timeout_s: float) -> None:
        def tokenizer():  # transformers: ~1 s of imports, while the dies join and load
            self._tokenizer_job = _Background(load_tokenizer, self.model_path)

        self.executor.start(spawn, master, timeout_s, meanwhile=tokenizer)
        self.worker_info = self.executor.setup()

    @property
    def master(self) -> str:
        """HOST:PORT of the rendezvous the workers joined."""
        return self.executor.master

    @property
    def _procs(self) -> list:
        """The worker processes (rank order), for tests and tools that watch them."""
        return self.executor.procs

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
        stops = frozenset(self.eos_ids if stop_ids is None else stop_ids)
        req = Request(next(self._ids), ids, max_tokens, params, stops, gen=gen, greedy=params.temperature == 0,
                      t_submit=time.perf_counter())
        self._pending.put(req)
        self._wake.set()
        return Generation(self, req)

    def generate(self, prompt: str | list[int], max_tokens: int = 128, **kw) -> Generation:
        return self.submit(prompt, max_tokens, **kw)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids for a chat: the model's template with the assistant's turn opened (our tokenizer
        returns a list, a transformers one may return a mapping with `input_ids`)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def chat(self, messages: list[dict], max_tokens: int = 128, **kw) -> Generation:
        return self.submit(self.chat_ids(messages), max_tokens, **kw)

    # ---------------------------------------------------------------- the loop
    def _receive(self) -> None:
        """Take each result the last die owes (one per FORWARD sent) as soon as it comes, whatever the sender does."""
        from_last, rec = self.executor.from_last, self.recorder
        while True:
            self._expect.acquire()
            if self._closed:
                return
            try:
                t_wait = rec.now()
                h, out = from_last.recv()
                self._results.put((h, out, t_wait, rec.now()))
            except BaseException as err:  # a dead die: the scheduling loop reports it
                self._results.put(err)
                return

    def _run(self) -> None:
        """Carry out the scheduler's decisions: send micro-batches and FREEs, sample results, stream tokens."""
        import torch

        from .sampling import sample
        from .stage import Segment
        from .transport import FORWARD, IDS, TOKENS, Header

        sched, pending, to_first = self.scheduler, self._pending, self.executor.to_first
        rec = self.recorder
        try:
            while not self._closed:
                while not pending.empty():
                    sched.submit(pending.get())
                retired, batches = sched.step()
                for r in retired:
                    self._finish(r, to_first)
                for mb in batches:
                    segs = tuple(Segment(*s) for s in mb.segs)
                    t0 = rec.now()
                    to_first.send(Header(FORWARD, mb.id, segs, IDS, greedy=int(mb.greedy)),
                                  torch.tensor(mb.token_ids, dtype=torch.int64))
                    self._expect.release()
                    if rec.enabled:
                        rec.add(SEND, mb.id, t0, None, 8 * len(mb.token_ids))
                        self._batches.append(Batch(mb.id, mb.prefill, tuple(r.id for r in mb.requests), len(mb.token_ids)))
                mb = sched.oldest
                if mb is None:
                    while sched.idle and not self._control.empty():
                        self._control.get().run()
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                item = self._results.get()
                if isinstance(item, BaseException):
                    raise item
                h, out, t_wait, t_got = item
                now = time.perf_counter()
                if h.kind == TOKENS:
                    tokens = out.tolist()
                else:
                    tokens = [sample(out[i], r.params, r.gen) for i, r in enumerate(mb.requests)]
                finished = sched.complete(tokens)
                if not mb.final:  # a prompt chunk: nothing to stream yet
                    tokens = []
                for r, tok in zip(mb.requests, tokens):
                    if r.t_first is None:
                        r.t_first = now
                    r.t_last = now
                    r.out.put(tok)
                for r in finished:
                    self._finish(r, to_first)
                if rec.enabled:
                    rec.add(WAIT_IN, mb.id, t_wait, t_got, out.numel() * out.element_size())
                    rec.add(HOST, mb.id, t_got)
        except BaseException as err:  # a dead die: fail every request, stop every process
            if self._closed:
                return
            time.sleep(0.1)  # let the watchdog name the die that died
            self.error = self.executor.error() or (err if isinstance(err, DeviceError)
                                                   else DeviceError(f"device failed: {err}"))
            for r in sched.unfinished():
                r.out.put(self.error)
            while not pending.empty():
                pending.get().out.put(self.error)
            self.executor.kill()

    def recording(self, timeout_s: float = 60.0) -> Recording:
        """What the host and every die did so far, on the host's clock (a device opened with trace=True). Waits
        until no micro-batch is in flight, then asks the dies for their records through the pipeline."""
        if not self.recorder.enabled:
            raise DeviceError("this device records nothing: open it with trace=True (chipfuse run --trace)")
        if self._closed or self.error:
            raise DeviceError(f"the device is closed{': ' + str(self.error) if self.error else ''}")
        job = _Job(self.executor.collect_trace)
        self._control.put(job)
        self._wake.set()
        dies = job.result(timeout_s)
        conv = [tuple(Interval.from_list(r) for r in rows) for rows, _ in dies]
        return Recording(tuple(self.recorder.rows), tuple(conv), tuple(self._batches),
                         tuple(u for _, u in self.executor.clocks),
                         self.recorder.dropped + sum(d for _, d in dies))

    @staticmethod
    def _finish(r: Request, to_first) -> None:
        """End a request's stream; free its KV slot on every die if anything was sent for it."""
        from .stage import Segment
        from .transport import FREE, Header

        r.out.put(None)
        if r.started:
            to_first.send(Header(FREE, 0, (Segment(r.slot, 0, 0),)))

    # ---------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop every worker and release the rendezvous. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if hasattr(self, "_expect"):
            self._expect.release()  # the receiver leaves instead of waiting for a result
        if self.error is None and hasattr(self, "_thread"):
            self._thread.join(timeout=5)
        self.executor.shutdown(graceful=self.error is None)
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
