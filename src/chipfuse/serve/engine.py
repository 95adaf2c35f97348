"""The device behind the server: opened from a plan, admitted into with limits, watched and reopened when a die dies.

`Engine` owns one `runtime.Device` (its dies are the plan's; its KV slots the plan's batch). Requests
are admitted while fewer than slots + queue are in the system; past that the caller is told to retry
(a 429). When a die's worker dies, the Device fails the requests in flight with a clear error; the
watcher notices, marks the engine "recovering" (health 503), closes the Device and opens a new one
from the same plan (warm: the dies load from the prepared-weights cache), then marks it "ok".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class Limits:
    """What one request and the server as a whole may ask for; every refusal names the limit and its value."""

    max_body_bytes: int = 1 << 20
    max_tokens: int = 1024  # generated tokens per request at most (and the context's room)
    max_prompt_tokens: int | None = None  # default: the plan's context less one
    max_queue: int = 32  # requests waiting for a KV slot, beyond the slots themselves
    retry_after_s: int = 1


class Busy(Exception):
    """Too many requests in the system: the caller should retry later (HTTP 429)."""


class Unavailable(Exception):
    """The device is starting or recovering (HTTP 503)."""


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("chipfuse_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("chipfuse_prompt_tokens", "prompt tokens admitted", registry=r)
        self.generated_tokens = Counter("chipfuse_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("chipfuse_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.latency = Histogram("chipfuse_request_seconds", "whole request", registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.in_flight = Gauge("chipfuse_requests_in_flight", "requests admitted and not finished", registry=r)
        self.queue_depth = Gauge("chipfuse_queue_depth", "requests waiting for a KV slot", registry=r)
        self.slots = Gauge("chipfuse_kv_slots", "KV-cache slots (the plan's batch)", registry=r)
        self.rejected = Counter("chipfuse_rejected", "requests refused for a limit", ["limit"], registry=r)
        self.restarts = Counter("chipfuse_worker_restarts", "times the dies were restarted after a fault",
                                registry=r)
        self.up = Gauge("chipfuse_device_up", "1 while the device serves, 0 while starting or recovering",
                        registry=r)
        self.resident = Gauge("chipfuse_die_resident_bytes", "weight bytes each die holds", ["die"], registry=r)
        self.kv_bytes = Gauge("chipfuse_die_kv_bytes", "KV-cache bytes each die holds (the plan's budget)", ["die"],
                              registry=r)
        self.busy = Gauge("chipfuse_die_busy_seconds", "seconds each die has computed since it started (its own "
                          "count)", ["die"], registry=r)
        self.link_bytes = Gauge("chipfuse_link_bytes", "bytes each die has sent on to the next (its own count)",
                                ["src", "dst"], registry=r)


class Engine:
    """One device for the server's lifetime (reopened after a fault). `opener()` returns a started Device."""

    def __init__(self, opener, limits: Limits, model_name: str, on_event=lambda message: None):
        self.opener, self.limits, self.model_name, self.on_event = opener, limits, model_name, on_event
        self.metrics = Metrics()
        self.state = "starting"
        self.device = None
        self.error: str = ""
        self._lock = threading.Lock()
        self._in_system = 0
        self._ticks: deque[tuple[float, int]] = deque(maxlen=100_000)  # (time, tokens) as they are generated
        self._samples: deque[tuple[float, list]] = deque(maxlen=16)  # (time, each die's stats), about a second apart
        self._stop = threading.Event()
        self._open()
        self._watcher = threading.Thread(target=self._watch, name="chipfuse-serve-watch", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------ device lifecycle
    def _open(self) -> None:
        dev = self.opener()
        self.device = dev
        self.metrics.slots.set(dev.max_batch)
        for r in dev.memory_report():
            self.metrics.resident.labels(r["die"]).set(r["resident_weight_bytes"])
        for st in dev.plan.stages:
            self.metrics.kv_bytes.labels(st.die).set(st.kv_bytes)
        self.state = "ok"
        self.metrics.up.set(1)

    def _sample(self) -> None:
        """Each die's own running totals into the metrics, kept a few seconds for the page's busy shares."""
        dev = self.device
        if dev is None or self.state != "ok":
            return
        stats = dev.executor.die_stats()
        for st, s in zip(dev.plan.stages, stats):
            if s:
                self.metrics.busy.labels(st.die).set(s["busy_s"])
                for to in s["to"]:
                    self.metrics.link_bytes.labels(st.die, to).set(s["sent_bytes"])  # each receiver gets the whole
        self._samples.append((time.monotonic(), stats))

    def die_rates(self, window_s: float = 5.0) -> list[tuple[float, float] | None]:
        """Each die's (share of the last `window_s` seconds spent computing, bytes per second it sent on), from its
        own running totals; None for a die that reports none (started by hand on another machine) or too early."""
        if len(self._samples) < 2:
            return [None] * len(self.device.plan.stages)
        t1, new = self._samples[-1]
        t0, old = next(((t, s) for t, s in self._samples if t >= t1 - window_s), self._samples[0])
        if t1 <= t0:
            return [None] * len(new)
        dt = t1 - t0
        return [None if not (a and b) else (max(0.0, min(1.0, (b["busy_s"] - a["busy_s"]) / dt)),
                                            max(0.0, (b["sent_bytes"] - a["sent_bytes"]) / dt))
                for a, b in zip(old, new)]

    def _watch(self) -> None:
        last = 0.0
        while not self._stop.wait(0.2):
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                try:
                    self._sample()
                except Exception:  # noqa: BLE001 - a die restarting: its counts come back with it
                    pass
            dev = self.device
            if dev is None or dev.error is None or self.state != "ok":
                continue
            self.state, self.error = "recovering", str(dev.error)
            self.metrics.up.set(0)
            self.metrics.restarts.inc()
            self.on_event(f"die failure: {dev.error}; restarting the dies from the plan")
            try:
                dev.close()
            except Exception:  # noqa: BLE001 - the old device is gone either way
                pass
            for attempt in range(3):
                if self._stop.is_set():
                    return
                try:
                    self._open()
                    self.on_event("dies restarted; serving again")
                    break
                except Exception as e:  # noqa: BLE001 - reported, retried, then left recovering
                    self.error = f"restart {attempt + 1} failed: {e}"
                    self.on_event(self.error)
                    time.sleep(1.0)

    def close(self) -> None:
        self._stop.set()
        self.state = "stopping"
        self.metrics.up.set(0)
        if self.device is not None:
            self.device.close()

    # ------------------------------------------------------------ admission
    @property
    def context(self) -> int:
        return self.device.context

    def max_prompt_tokens(self) -> int:
        room = self.device.context - 1
        return min(room, self.limits.max_prompt_tokens) if self.limits.max_prompt_tokens else room

    def admit(self) -> None:
        """Count a request in, or raise Busy / Unavailable."""
        if self.state != "ok" or self.device is None or self.device.error is not None:
            raise Unavailable(f"the device is {self.state if self.state != 'ok' else 'recovering'}"
                              f"{': ' + self.error if self.error else ''}; retry shortly")
        with self._lock:
            cap = self.device.max_batch + self.limits.max_queue
            if self._in_system >= cap:
                self.metrics.rejected.labels("queue").inc()
                raise Busy(f"{self._in_system} requests are running or queued: the limit is {self.device.max_batch} "
                           f"KV slots + --max-queue {self.limits.max_queue}; retry after {self.limits.retry_after_s} s")
            self._in_system += 1
            self._gauges()

    def release(self) -> None:
        with self._lock:
            self._in_system = max(0, self._in_system - 1)
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.in_flight.set(self._in_system)
        self.metrics.queue_depth.set(max(0, self._in_system - (self.device.max_batch if self.device else 0)))

    def tick(self, tokens: int) -> None:
        """`tokens` more generated now (for the live rate)."""
        if tokens > 0:
            self._ticks.append((time.monotonic(), tokens))

    def rate(self, window_s: float = 5.0) -> float:
        """Tokens generated per second over the last `window_s` seconds."""
        since = time.monotonic() - window_s
        return sum(n for t, n in list(self._ticks) if t >= since) / window_s

    def device_view(self) -> dict:
        """What the page draws: each die's planned share, measured busy share and memory, the route's links with
        their measured traffic, the measured rate beside the predicted one, and the slots."""
        dev = self.device
        plan = dev.plan
        cfg = plan.model.config
        pred = plan.prediction
        total = sum(sp.decode_s for sp in pred.stages) if pred else 0.0
        resident = {r["die"]: r["resident_weight_bytes"] for r in dev.memory_report()}
        dies = []
        rates = self.die_rates()
        for i, st in enumerate(plan.stages):
            s, e = st.blocks
            share = pred.stages[i].decode_s / total if pred and total > 0 else 0.0
            dies.append({"die": st.die, "blocks": f"{s}-{e - 1}" + (" (shard)" if st.shard else ""), "share": share,
                         "busy": rates[i][0] if rates[i] else None, "resident_bytes": resident.get(st.die, 0),
                         "kv_bytes": st.kv_bytes})
        from ..plan.plan import stage_positions

        sent = {st.die: r[1] for st, r in zip(plan.stages, rates) if r}
        route = [["host"]] + [[st.die for _, st in pos] for pos in stage_positions(plan.stages)] + [["host"]]
        hidden, vocab = 4 * cfg["hidden_size"], 4 * cfg["vocab_size"]
        links = []
        rate = self.rate()
        for k, (a, b) in enumerate(zip(route, route[1:])):
            per_token = 8 if k == 0 else (vocab if b == ["host"] else hidden)
            # a die's own count where it reports one (each next die receives its whole payload); else the plan's
            # bytes per token at the measured rate
            for d in b:
                measured = a[0] in sent
                links.append({"from": a[0], "to": d, "bytes_per_token": per_token,
                              "bytes_per_s": sent[a[0]] if measured else per_token * rate,
                              "source": "die" if measured else "plan"})
        slots_busy = len(dev.scheduler.active)
        return {"model": self.model_name, "system": plan.system.get("name", "?"), "state": self.state,
                "dies": dies, "links": links, "measured_tokens_per_s": rate,
                "predicted_tokens_per_s": pred.decode_tokens_per_s if pred else 0.0, "slots": dev.max_batch,
                "slots_busy": slots_busy, "queued": max(0, self._in_system - slots_busy)}

    def status(self) -> dict:
        dev = self.device
        dies = [] if dev is None else [{"die": st.die, "pid": p.pid} for st, p in zip(dev.plan.stages, dev._procs)]
        return {"status": self.state, "model": self.model_name, "error": self.error or None,
                "slots": dev.max_batch if dev else None, "context": dev.context if dev else None,
                "in_system": self._in_system, "dies": dies}


__all__ = ["Engine", "Limits", "Busy", "Unavailable", "Metrics"]
