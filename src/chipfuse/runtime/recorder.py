"""What each process of a run did, when: the raw material of `chipfuse run --trace`.

A `Recorder` keeps intervals (what, which micro-batch, start and end on this process's wall clock) in
a bounded list; the host and every die keep one while a traced device runs. Off (the default) it
records nothing, so an untraced run pays one attribute test per message. The host collects the dies'
intervals after the run and moves them onto its own clock with the offsets it measured at setup
(`clock_offset`); `api.measured` lays them out as the same timelines `chipfuse plan --trace` draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_EVENTS = 200_000  # ~10 MB of JSON per die at most; a run longer than that keeps its first part
PINGS = 5  # round trips per die at setup, to measure its clock against the host's

# what an interval is (the words the trace's spans use)
WAIT_IN, COMPUTE, ALL_REDUCE, GATHER, SEND, HOST = "wait", "compute", "all-reduce", "gather", "send", "host"


@dataclass(frozen=True)
class Interval:
    """One thing one process did: `kind` (WAIT_IN ... HOST), for micro-batch `mb`, from `t0` to `t1` (seconds)."""

    kind: str
    mb: int
    t0: float
    t1: float
    nbytes: int = 0

    def to_list(self) -> list:
        return [self.kind, self.mb, self.t0, self.t1, self.nbytes]

    @staticmethod
    def from_list(row: Sequence) -> Interval:
        kind, mb, t0, t1, nbytes = row
        return Interval(str(kind), int(mb), float(t0), float(t1), int(nbytes))


class Recorder:
    """A bounded log of intervals on this process's clock (`now`). Disabled: every call returns at once."""

    def __init__(self, enabled: bool = False, now: Callable[[], float] = time.time):
        self.enabled, self.now = enabled, now
        self.rows: list[Interval] = []
        self.dropped = 0

    def add(self, kind: str, mb: int, t0: float, t1: float | None = None, nbytes: int = 0) -> None:
        if not self.enabled:
            return
        if len(self.rows) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.rows.append(Interval(kind, mb, t0, self.now() if t1 is None else t1, nbytes))

    def to_json(self) -> dict:
        return {"rows": [r.to_list() for r in self.rows], "dropped": self.dropped}


def boot_id() -> str:
    """This machine's boot id: processes that share it read one wall clock (network namespaces included)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def clock_offset(samples: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(offset_s, uncertainty_s) of a peer's clock from (host send, peer time, host receive) round trips: the
    peer's time minus the host's at the midpoint of the shortest round trip, good to half that round trip."""
    if not samples:
        return 0.0, float("inf")
    t0, peer, t1 = min(samples, key=lambda s: s[2] - s[0])
    return peer - (t0 + t1) / 2, (t1 - t0) / 2




@dataclass(frozen=True)
class Batch:
    """A micro-batch the host sent: its id, whether it was a prompt (prefill), and the requests in it."""

    mb: int
    prefill: bool
    requests: tuple[int, ...]
    tokens: int  # token ids sent (a prompt's length, or one per sequence of a decode step)


@dataclass(frozen=True)
class Recording:
    """A traced run as recorded: the host's intervals, each die's (rank order, on the host's clock), the
    micro-batches in sending order, and how well each die's clock is known."""

    host: tuple[Interval, ...]
    dies: tuple[tuple[Interval, ...], ...]
    batches: tuple[Batch, ...]
    clock_uncertainty_s: tuple[float, ...]
    dropped: int = 0  # intervals past MAX_EVENTS, not kept


__all__ = ["Interval", "Recorder", "Batch", "Recording", "clock_offset", "MAX_EVENTS", "PINGS", "WAIT_IN", "COMPUTE", "ALL_REDUCE",
           "GATHER", "SEND", "HOST", "boot_id"]
