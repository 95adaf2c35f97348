"""A placement running on emulated dies behind one device: `submit(model, ...)` for any model of the workload.

The placement record (plan/placement.py) says which pieces each die holds and what rate each
deployment of a model is predicted to take. A request for a model goes to the deployment whose
queue, in proportion to its predicted rate, is shortest: replicas share a stream in proportion to
their speed, and a slow one does not pile up work. Each completion is timed per model, so a run
can set the measured rate beside the predicted one.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ChipfuseError
from ..plan.placement import Deployment, ModelRecord, Placement
from .tasks import LLMSpec, ProgramSpec, TaskDevice


def llm_weights(source: str) -> Path:
    """The GGUF an LLM of the workload runs from: its path, or the embedded SmolLM2 for its names."""
    from ..frontends.model_files import default_gguf

    if source.lower() in ("smollm2", "smollm2-135m", "default", "smollm2-135m-instruct"):
        return default_gguf(quiet=True)
    p = Path(source)
    if p.suffix.lower() == ".gguf" and p.is_file():
        return p
    raise ChipfuseError(f"the runtime runs LLMs from GGUF files: {source!r} is a name it can plan but not run; "
                        "give `llm: path/to/model.gguf` (or `smollm2`, the embedded default)")


@dataclass
class _Route:
    deployment: Deployment
    hops: list[tuple[str, str]]
    in_flight: int = 0
    done: int = 0


@dataclass
class ModelStats:
    """What a model's requests did: completions with their latencies, per deployment."""

    name: str
    unit: str
    predicted: float  # items per second the placement predicts for this model
    latencies_s: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    items: list[int] = field(default_factory=list)  # items each completion counts (frames, or tokens generated)
    errors: list[str] = field(default_factory=list)


class WorkloadDevice:
    """The dies of a placement, started and loaded; one `submit` for every model."""

    def __init__(self, placement: Placement, threads: int = 1, timeout_s: float = 300.0, on_status=lambda m: None):
        self.placement = placement
        self.records = {m.name: m for m in placement.models}
        programs: dict[str, list[ProgramSpec | LLMSpec]] = {}
        self.routes: dict[str, list[_Route]] = {m.name: [] for m in placement.models}
        for i, dep in enumerate(placement.deployments):
            if dep.rate <= 0:
                continue
            rec = self.records[dep.model]
            if dep.kind == "cv":
                hops = []
                for k, piece in enumerate(dep.pieces):
                    pid = f"{dep.model}/{i}/{k}"
                    programs.setdefault(piece.die, []).append(ProgramSpec(
                        pid, rec.source, dep.model, tuple(rec.frame or ()), dep.precision, piece.start, piece.end))
                    hops.append((piece.die, pid))
            else:
                from ..frontends.gguf_meta import from_gguf

                weights = llm_weights(rec.source)
                cfg = from_gguf(weights)
                fmt = dep.format or "int4-g32"
                head = "int8" if fmt.startswith("int4") else fmt
                ctx = max(256, (rec.prompt_tokens or 256) + (rec.output_tokens or 128))
                pid = f"{dep.model}/{i}"
                programs.setdefault(dep.dies[0], []).append(LLMSpec(pid, str(weights), cfg.model_dump(mode="json"),
                                                                    fmt, head, ctx, rec.batch or 1))
                hops = [(dep.dies[0], pid)]
            self.routes[dep.model].append(_Route(dep, hops))
        missing = [m for m, r in self.routes.items() if not r]
        if missing:
            raise ChipfuseError(f"the placement runs no deployment of {', '.join(missing)}")
        self.tasks = TaskDevice(programs, threads, timeout_s, on_status)
        self.stats = {m.name: ModelStats(m.name, m.unit, m.served) for m in placement.models}
        self._lock = threading.Lock()
        self.tokenizer = None

    def _pick(self, model: str) -> _Route:
        routes = self.routes.get(model)
        if routes is None:
            raise ChipfuseError(f"no model {model!r} in this workload ({', '.join(self.routes)})")
        return min(routes, key=lambda r: (r.in_flight + 1) / max(r.deployment.rate, 1e-12))

    def submit(self, model: str, inputs: dict | np.ndarray | torch.Tensor | list[int], **args) -> Future:
        """A request for `model`: a vision model's input (its tensor, or a dict by input name), or an LLM's prompt
        token ids (with max_tokens, stop). A Future of the outputs (dict of arrays; an LLM's "tokens")."""
        rec = self.records.get(model)
        if rec is None:
            raise ChipfuseError(f"no model {model!r} in this workload ({', '.join(self.records)})")
        if rec.kind == "llm":
            tensors = {"ids": torch.as_tensor(np.asarray(inputs, dtype=np.int64))}
        elif isinstance(inputs, dict):
            tensors = inputs
        else:
            tensors = {"__first__": inputs}
        with self._lock:
            route = self._pick(model)
            route.in_flight += 1
        if "__first__" in tensors:
            first = self.tasks.info[route.hops[0][0]]["programs"][route.hops[0][1]]["inputs"][0]
            tensors = {first: tensors.pop("__first__")}
        t0 = time.perf_counter()
        inner = self.tasks.submit(route.hops, tensors, args if rec.kind == "llm" else None)
        outer: Future = Future()

        def done(f: Future) -> None:
            with self._lock:
                route.in_flight -= 1
                route.done += 1
            st = self.stats[model]
            try:
                out, _spent = f.result()
            except Exception as e:  # noqa: BLE001 - passed to the caller, counted here
                st.errors.append(str(e))
                outer.set_exception(e)
                return
            now = time.perf_counter()
            st.latencies_s.append(now - t0)
            st.finished_at.append(now)
            st.items.append(int(out["tokens"].size) if rec.kind == "llm" else int(_batch(out)))
            outer.set_result(out)

        inner.add_done_callback(done)
        return outer

    def record(self, model: str) -> ModelRecord:
        return self.records[model]

    def close(self) -> None:
        self.tasks.close()

    def __enter__(self) -> WorkloadDevice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _batch(out: dict) -> int:
    first = next(iter(out.values()))
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


__all__ = ["WorkloadDevice", "ModelStats", "llm_weights"]
