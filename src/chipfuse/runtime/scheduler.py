"""Request scheduling policy: admission, KV slots, micro-batches, finishing. Pure Python, no torch, no processes.

The `Scheduler` decides; the device loop carries its decisions out (sends the micro-batches it
returns, samples each returned row, tells it the chosen tokens, frees the slots it retires).

    sched = Scheduler(slots=4, max_inflight=n_dies)
    sched.submit(req)
    retired, batches = sched.step()        # send every batch, FREE every retired request's slot
    finished = sched.complete(tokens)      # tokens of the oldest in-flight batch, one per request

Policy (unchanged from the original single-class runtime): requests take free slots in arrival
order; a waiting prompt goes first, alone in its micro-batch (prefill); otherwise every ready
request decodes together (up to `max_seqs`); at most `max_inflight` micro-batches (one per die)
are in flight; results come back in order. A request ends on `max_tokens`, a stop id, or cancel;
a cancelled request that is not in flight is retired at the next `step()`, freeing its slot.
"""

from __future__ import annotations

import itertools
import queue
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_SEQS_PER_BATCH = 64  # transport.MAX_SEGS: sequences one message header can describe

LENGTH, STOP, CANCELLED = "length", "stop", "cancelled"  # finish reasons


@dataclass
class Request:
    """One generation: its prompt, limits, slot and progress; `out`, `params`, `gen` and times are the device's."""

    id: int
    prompt: list[int]
    max_tokens: int
    params: Any = None  # sampling.SamplingParams
    stop_ids: frozenset[int] = frozenset()
    out: queue.Queue = field(default_factory=queue.Queue)
    gen: Any = None  # torch.Generator for seeded sampling
    greedy: bool = False  # temperature 0: the last die may choose the token itself (False is always correct)
    slot: int = -1  # KV cache slot on every die while admitted; -1 before admission
    pos: int = 0  # tokens already in the KV cache
    next_token: int | None = None
    generated: list[int] = field(default_factory=list)
    started: bool = False  # something was sent for it: its slot holds KV to free
    prefilled: int = 0  # prompt tokens sent so far (a long prompt goes in chunks)
    t_submit: float = 0.0
    t_first: float | None = None
    t_last: float | None = None
    cancelled: bool = False  # set by any thread; acted on at the next step()
    finish_reason: str = ""

    def finish_for(self, token: int) -> str:
        """Why the request ends after producing `token` ('' if it goes on)."""
        if self.cancelled:
            return CANCELLED
        if token in self.stop_ids:
            return STOP
        if len(self.generated) >= self.max_tokens:
            return LENGTH
        return ""


@dataclass(frozen=True)
class MicroBatch:
    """What to send the first die: sequences as (slot, first position, token count) and their token ids."""

    id: int
    requests: tuple[Request, ...]
    prefill: bool
    segs: tuple[tuple[int, int, int], ...]
    token_ids: list[int]
    final: bool = True  # False for a prompt chunk before the last: its result is only the KV it leaves

    @property
    def greedy(self) -> bool:
        """The last die may choose the token itself (every sequence greedy, or nothing to choose)."""
        return not self.final or all(r.greedy for r in self.requests)


class Scheduler:
    """Which requests run, in which slot, grouped how, and when each is done. Single-threaded: call from one loop."""

    def __init__(self, slots: int, max_inflight: int, max_seqs: int = MAX_SEQS_PER_BATCH,
                 prefill_chunk: int | None = None):
        """`prefill_chunk`: send prompts in pieces of at most this many tokens, a decode step of the running
        requests between two pieces, so a long prompt does not stall them (None: each prompt whole)."""
        if slots < 1 or max_inflight < 1 or max_seqs < 1 or (prefill_chunk is not None and prefill_chunk < 1):
            raise ValueError("slots, max_inflight, max_seqs and prefill_chunk must be at least 1")
        self.slots, self.max_inflight, self.max_seqs = slots, max_inflight, max_seqs
        self.prefill_chunk = prefill_chunk
        self._last_was_prefill = False
        self.free_slots: list[int] = list(range(slots))
        self.waiting: deque[Request] = deque()  # submitted, no slot yet
        self.prefill: deque[Request] = deque()  # slot assigned, prompt not sent yet
        self.ready: list[Request] = []  # next token known, waiting for a decode step
        self.inflight: deque[MicroBatch] = deque()
        self.active: dict[int, Request] = {}  # slot -> request
        self._mb_ids = itertools.count()

    def submit(self, req: Request) -> None:
        """Queue a request for admission (arrival order)."""
        self.waiting.append(req)

    def step(self) -> tuple[list[Request], list[MicroBatch]]:
        """Retire cancelled requests that are not in flight, admit into free slots, and fill the pipeline.

        Returns (retired, batches): retired requests are finished ('cancelled'); those `started` need
        their slot freed on the dies before any batch is sent. Batches go to the first die in order."""
        retired = self._retire_cancelled()
        self._admit()
        batches = []
        while len(self.inflight) < self.max_inflight and (self.prefill or self.ready):
            mb = self._next_batch()
            self.inflight.append(mb)
            batches.append(mb)
        return retired, batches

    def complete(self, tokens: Sequence[int]) -> list[Request]:
        """The oldest in-flight batch came back with one chosen token per request: record them; return the finished."""
        mb = self.inflight.popleft()
        if not mb.final:  # a prompt chunk: its KV is on the dies, its token means nothing
            return []
        finished = []
        for r, tok in zip(mb.requests, tokens):
            r.pos = len(r.prompt) if not r.generated else r.pos + 1
            r.generated.append(tok)
            reason = r.finish_for(tok)
            if reason:
                r.finish_reason = reason
                self._release(r)
                finished.append(r)
            else:
                r.next_token = tok
                self.ready.append(r)
        return finished

    @property
    def oldest(self) -> MicroBatch | None:
        """The batch whose result comes back next (results return in sending order)."""
        return self.inflight[0] if self.inflight else None

    @property
    def idle(self) -> bool:
        return not self.inflight

    def unfinished(self) -> list[Request]:
        """Every request admitted or waiting that has not finished (to fail them all when a die dies)."""
        return list(self.active.values()) + list(self.waiting)

    # ---------------------------------------------------------------- internals
    def _admit(self) -> None:
        while self.free_slots and self.waiting:
            r = self.waiting.popleft()
            r.slot = self.free_slots.pop(0)
            self.active[r.slot] = r
            self.prefill.append(r)

    def _next_batch(self) -> MicroBatch:
        take_prefill = self.prefill and not (self._last_was_prefill and self.ready and self.prefill_chunk)
        self._last_was_prefill = bool(take_prefill)
        if take_prefill:
            r = self.prefill.popleft()
            r.started = True
            start = r.prefilled
            n = len(r.prompt) - start if self.prefill_chunk is None else min(self.prefill_chunk, len(r.prompt) - start)
            r.prefilled += n
            final = r.prefilled == len(r.prompt)
            if not final:  # its next piece waits behind the others' turns (the dies keep the order)
                self.prefill.append(r)
            return MicroBatch(next(self._mb_ids), (r,), True, ((r.slot, start, n),), list(r.prompt[start:start + n]),
                              final)
        batch, self.ready = self.ready[:self.max_seqs], self.ready[self.max_seqs:]
        return MicroBatch(next(self._mb_ids), tuple(batch), False, tuple((r.slot, r.pos, 1) for r in batch),
                          [r.next_token for r in batch])

    def _retire_cancelled(self) -> list[Request]:
        out = []
        for pool in (self.waiting, self.prefill):
            for r in [r for r in pool if r.cancelled]:
                pool.remove(r)
                out.append(r)
        cancelled_ready = [r for r in self.ready if r.cancelled]
        if cancelled_ready:
            self.ready = [r for r in self.ready if not r.cancelled]
            out += cancelled_ready
        for r in out:
            r.finish_reason = CANCELLED
            self._release(r)
        return out

    def _release(self, r: Request) -> None:
        if self.active.get(r.slot) is r:
            del self.active[r.slot]
            self.free_slots.append(r.slot)
