"""`run_workload`: a placement's streams on the emulated dies, each model's measured rate beside the predicted one.

Every model is offered requests at the rate the placement predicts for it (times `load`), paced, for a
bounded time: a frame for a vision model (values in [-1, 1] at its frame shape), a prompt of
`prompt_tokens` tokens asking for `output_tokens` for an LLM. A model whose deployments already
hold `max_in_flight` requests each skips the arrival (counted): the run never queues without bound.
The measured rate is the items finished inside the window, per second.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ChipfuseError
from .progress import Progress, Silent

MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class StreamRow:
    model: str
    unit: str
    predicted: float  # items per second the placement predicts
    offered: float  # items per second offered (predicted x load)
    measured: float  # items per second finished inside the window
    latency_p50_s: float | None
    latency_p99_s: float | None
    requests: int
    skipped: int  # arrivals not sent because every deployment was full
    errors: int

    @property
    def ratio(self) -> float | None:
        return self.measured / self.predicted if self.predicted > 0 else None


@dataclass(frozen=True)
class WorkloadRun:
    workload: str
    system: str
    seconds: float
    load: float
    rows: tuple[StreamRow, ...]
    placement: object

    def to_json(self) -> dict:
        d = asdict(self)
        d["placement"] = self.placement.model_dump(mode="json", by_alias=True)  # type: ignore[attr-defined]
        return d


PROMPT_TEXT = ("The patient was admitted on Monday with a cough and a mild fever. The ward nurse took a chest "
               "X-ray and booked an MRT scan for Tuesday morning. ")


def run_workload(workload: str | Path | None = None, system: str | Path | None = None, *,
                 placement: str | Path | object | None = None, seconds: float = 20.0, load: float = 1.0,
                 max_in_flight: int = 8, threads: int = 1, progress: Progress | None = None,
                 on_status=lambda m: None, device=None) -> WorkloadRun:
    """Place `workload` on `system` (or take a placement made by `place`), start its dies, offer each model
    its predicted rate x `load` for `seconds`, and measure what each finishes. `device`: an open
    WorkloadDevice to drive instead (its placement is used; it stays open)."""
    from ..plan.placement import Placement, load_placement
    from ..runtime.workload import WorkloadDevice
    from .place import place

    if not 0 < seconds <= MAX_SECONDS:
        raise ChipfuseError(f"--seconds {seconds}: give 0 < seconds <= {MAX_SECONDS:.0f}")
    if not 0 < load <= 100:
        raise ChipfuseError(f"--load {load}: give a factor in (0, 100] of the predicted rates")
    if max_in_flight < 1:
        raise ChipfuseError("max_in_flight must be at least 1")
    if device is not None:
        return _drive(device, seconds, load, max_in_flight, progress, on_status)
    if placement is None:
        if workload is None or system is None:
            raise ChipfuseError("give a workload and a system, or a placement from `chipfuse place --out`")
        on_status("placing the models")
        pl = place(workload, system).placement
    elif isinstance(placement, Placement):
        pl = placement
    else:
        pl = load_placement(placement)  # type: ignore[arg-type]
    assert isinstance(pl, Placement)
    on_status("starting the dies and loading their models")
    with WorkloadDevice(pl, threads=threads, on_status=on_status) as dev:
        return _drive(dev, seconds, load, max_in_flight, progress, on_status)


def _drive(dev, seconds: float, load: float, max_in_flight: int, progress, on_status) -> WorkloadRun:
    inputs = _inputs(dev)
    on_status("warming up: one request on every deployment")
    for model, routes in dev.routes.items():
        for _ in routes:
            dev.submit(model, inputs[model][0], **inputs[model][1]).result(300)
    for st in dev.stats.values():
        st.latencies_s.clear(), st.finished_at.clear(), st.items.clear(), st.errors.clear()
    rows = _stream(dev, inputs, seconds, load, max_in_flight, progress or Silent())
    pl = dev.placement
    return WorkloadRun(pl.workload, str(pl.system.get("name", "?")), seconds, load, tuple(rows), pl)


def _inputs(dev) -> dict[str, tuple[object, dict]]:
    """One request's input and arguments per model."""
    out: dict[str, tuple[object, dict]] = {}
    rng = np.random.default_rng(0)
    for name, rec in dev.records.items():
        if rec.kind == "llm":
            from ..runtime.tokenizer import load_tokenizer
            from ..runtime.workload import llm_weights

            if dev.tokenizer is None:
                dev.tokenizer = load_tokenizer(llm_weights(rec.source))
            ids = dev.tokenizer.encode(PROMPT_TEXT * 64, add_special_tokens=False)[: rec.prompt_tokens or 64]
            out[name] = (ids, {"max_tokens": rec.output_tokens or 32, "stop": []})
        else:
            out[name] = (rng.uniform(-1, 1, rec.frame).astype(np.float32), {})
    return out


def _stream(dev, inputs, seconds: float, load: float, max_in_flight: int, progress: Progress) -> list[StreamRow]:
    """Paced arrivals for every model, then the window's completions per model."""
    per_request = {m: (float(r.output_tokens or 1) if r.kind == "llm" else 1.0) for m, r in dev.records.items()}
    interval = {m: per_request[m] / (r.served * load) for m, r in dev.records.items() if r.served > 0}
    cap = {m: max(max_in_flight, r.batch or 1) * len(dev.routes[m]) for m, r in dev.records.items()}
    in_flight = {m: 0 for m in dev.records}
    requests = {m: 0 for m in dev.records}
    skipped = {m: 0 for m in dev.records}
    t0 = time.perf_counter()
    end = t0 + seconds
    heap = [(t0 + interval[m] * 0.5, m) for m in interval]
    heapq.heapify(heap)
    futures = []
    progress.start(int(seconds), "offering each model its predicted rate")
    shown = 0
    while heap and heap[0][0] < end:
        at, m = heapq.heappop(heap)
        now = time.perf_counter()
        if at > now:
            time.sleep(at - now)
        if int(time.perf_counter() - t0) > shown:
            shown = int(time.perf_counter() - t0)
            progress.advance(1)
        heapq.heappush(heap, (at + interval[m], m))
        if in_flight[m] >= cap[m]:
            skipped[m] += 1
            continue
        in_flight[m] += 1
        requests[m] += 1
        f = dev.submit(m, inputs[m][0], **inputs[m][1])
        f.add_done_callback(lambda _f, m=m: in_flight.__setitem__(m, in_flight[m] - 1))
        futures.append(f)
    t_end = time.perf_counter()
    deadline = t_end + 60
    for f in futures:  # the window is over; let the last requests finish (bounded), they are not counted
        try:
            f.result(max(0.0, deadline - time.perf_counter()))
        except Exception:  # noqa: BLE001 - counted in the model's errors
            pass
    window = t_end - t0
    rows = []
    for m, rec in dev.records.items():
        st = dev.stats[m]
        inside = [n for t, n in zip(st.finished_at, st.items) if t <= t_end]
        lat = sorted(st.latencies_s)
        rows.append(StreamRow(m, rec.unit, rec.served, rec.served * load, sum(inside) / window,
                              float(np.percentile(lat, 50)) if lat else None,
                              float(np.percentile(lat, 99)) if lat else None, requests[m], skipped[m],
                              len(st.errors)))
    return rows


__all__ = ["run_workload", "WorkloadRun", "StreamRow"]
