"""Messages between the host and the dies over torch.distributed point-to-point (gloo).

Every message is a fixed-size int64 header (command, micro-batch id, segments) followed,
for FORWARD, by one payload tensor. The same code runs on loopback and across hosts (TCP
rendezvous). No pickling: the setup message is JSON bytes in a uint8 tensor. Calls block;
a dead peer closes its sockets, so a blocked call fails instead of hanging (the host's
watchdog kills the remaining workers when one dies, which turns that into an error at once).

Room for what comes next, carried in header word 7 (zero in every message today, so the wire is
unchanged): a `Direction` (FORWARD activations down the pipeline; BACKWARD gradients up the same
links, for fine-tuning) and a `Collective` with a die `group` id (e.g. a tensor-parallel
all-reduce among the dies of one stage). Neither travels in this header today: a tensor group's
all-reduces go straight between its dies' ranks under their own tag (worker._join_group), and
fine-tuning runs its own workers (runtime/train_worker.py); a worker treats any message with a
non-zero direction or collective as unsupported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
import torch.distributed as dist

from .stage import Segment

MAX_SEGS = 64
HEADER_LEN = 8 + 3 * MAX_SEGS
HEADER_BYTES = 8 * HEADER_LEN

FORWARD, FREE, SHUTDOWN, TRACE = 1, 2, 3, 4  # commands (FORWARD: run the micro-batch through this die's blocks;
# TRACE: pass it on, then send the host what this die recorded)
IDS, HIDDEN, LOGITS, TOKENS = 1, 2, 3, 4  # TOKENS: the last die's greedy choice, one id a sequence


class Direction(IntEnum):
    """Which way a payload travels along the links: activations forward, gradients backward (fine-tuning, later)."""

    FORWARD = 0  # host -> die0 -> ... -> host: today's every message
    BACKWARD = 1  # last die -> ... -> die0: d(loss)/d(hidden) of a micro-batch, same shape as HIDDEN (not yet used)


class Collective(IntEnum):
    """A collective over the dies of one group instead of a point-to-point hop (tensor parallelism, later)."""

    NONE = 0  # point-to-point: today's every message
    ALL_REDUCE = 1  # sum the payload over the group's dies; each gets the result (not yet used)
    ALL_GATHER = 2  # concatenate the group's payloads along the last axis (not yet used)


_ROUTE_BITS = 8  # header word 7: direction | collective << 8 | group << 16


@dataclass
class Header:
    cmd: int
    mb: int = 0
    segs: tuple[Segment, ...] = ()
    kind: int = 0
    width: int = 0  # hidden size or vocabulary for float payloads
    inline: int = 0  # payload carried in the same message
    greedy: int = 0  # every sequence decodes greedily: the last die returns token ids, not logits
    direction: int = Direction.FORWARD
    collective: int = Collective.NONE
    group: int = 0  # which group of dies a collective spans (an index the plan will define)

    @property
    def tokens(self) -> int:
        return sum(s.n for s in self.segs)

    def encode_into(self, t: torch.Tensor) -> None:
        if len(self.segs) > MAX_SEGS:
            raise ValueError(f"a micro-batch holds at most {MAX_SEGS} sequences")
        a = np.zeros(HEADER_LEN, dtype=np.int64)
        a[:7] = (self.cmd, self.mb, len(self.segs), self.kind, self.width, self.inline, self.greedy)
        a[7] = self.route
        if self.segs:
            a[8: 8 + 3 * len(self.segs)] = np.array([(s.slot, s.pos, s.n) for s in self.segs]).ravel()
        t.copy_(torch.from_numpy(a))

    @staticmethod
    def decode(t: torch.Tensor) -> Header:
        a = t.numpy()
        cmd, mb, n, kind, width, inline, greedy, route = (int(v) for v in a[:8])
        segs = tuple(Segment(*(int(v) for v in a[8 + 3 * i: 11 + 3 * i])) for i in range(n))
        if not route:
            return Header(cmd, mb, segs, kind, width, inline, greedy)
        mask = (1 << _ROUTE_BITS) - 1
        return Header(cmd, mb, segs, kind, width, inline, greedy, route & mask, (route >> _ROUTE_BITS) & mask,
                      route >> (2 * _ROUTE_BITS))

    @property
    def route(self) -> int:
        """Direction, collective and group packed into one header word (0 for a plain forward hop)."""
        return int(self.direction) | int(self.collective) << _ROUTE_BITS | self.group << (2 * _ROUTE_BITS)

    def payload_shape(self) -> tuple[torch.dtype, tuple[int, ...]]:
        if self.kind == IDS:
            return torch.int64, (self.tokens,)
        if self.kind == TOKENS:
            return torch.int64, (len(self.segs),)
        if self.kind == HIDDEN:
            return torch.float32, (self.tokens, self.width)
        return torch.float32, (len(self.segs), self.width)


class Channel:
    """One direction between two ranks. A message is the header plus, when it fits in
    `inline_bytes`, the payload itself: a decode step's hidden state crosses a hop as one
    transfer. Larger payloads (prefill, logits) follow as a second transfer."""

    def __init__(self, peer: int, inline_bytes: int):
        self.peer = peer
        self.inline_bytes = inline_bytes
        self.buf = torch.zeros(HEADER_BYTES + inline_bytes, dtype=torch.uint8)

    def send(self, h: Header, payload: torch.Tensor | None = None) -> None:
        raw = payload.contiguous().view(torch.uint8).reshape(-1) if payload is not None else None
        h.inline = int(raw is not None and raw.numel() <= self.inline_bytes)
        h.encode_into(self.buf[:HEADER_BYTES].view(torch.int64))
        if h.inline:
            self.buf[HEADER_BYTES: HEADER_BYTES + raw.numel()] = raw
        dist.send(self.buf, self.peer)
        if raw is not None and not h.inline:
            dist.send(raw, self.peer)

    def recv(self) -> tuple[Header, torch.Tensor | None]:
        dist.recv(self.buf, self.peer)
        h = Header.decode(self.buf[:HEADER_BYTES].view(torch.int64))
        if h.cmd != FORWARD:
            return h, None
        dtype, shape = h.payload_shape()
        n = int(np.prod(shape)) * (8 if dtype == torch.int64 else 4)
        if h.inline:
            return h, self.buf[HEADER_BYTES: HEADER_BYTES + n].clone().view(dtype).reshape(shape)
        out = torch.empty(shape, dtype=dtype)
        dist.recv(out.view(torch.uint8).reshape(-1) if out.numel() else out, self.peer)
        return h, out


class Fanout:
    """The same message to every die of the next pipeline position (a tensor group takes its input whole)."""

    def __init__(self, channels: list[Channel]):
        self.channels = channels

    def send(self, h: Header, payload: torch.Tensor | None = None) -> None:
        for ch in self.channels:
            ch.send(h, payload)


@dataclass(frozen=True)
class Place:
    """Where a rank sits in the plan's pipeline: whom it hears from, whom it feeds, and its tensor group."""

    inbox: int  # the rank whose output this rank takes (0: the host)
    outbox: tuple[int, ...]  # the ranks it sends its output to (empty for a group member that is not the leader)
    group: tuple[int, ...]  # its tensor group's ranks (just itself for a layers stage)


def places(plan) -> dict[int, Place]:
    """Every rank's place (rank k runs stage k-1; rank 0 is the host, which feeds the first position and hears
    from the last one's leader): a position's first die (its leader) passes the output on."""
    from ..plan.plan import stage_positions

    positions = [[i + 1 for i, _ in pos] for pos in stage_positions(plan.stages)]
    out = {0: Place(positions[-1][0], tuple(positions[0]), (0,))}
    for j, ranks in enumerate(positions):
        sender = positions[j - 1][0] if j else 0
        nxt = tuple(positions[j + 1]) if j + 1 < len(positions) else (0,)
        for r in ranks:
            out[r] = Place(sender, nxt if r == ranks[0] else (), tuple(ranks))
    return out


def tensor_groups(plan) -> dict[tuple[int, ...], object]:
    """A torch.distributed process group per tensor group of the plan. Every rank, the host included, must
    call this at the same point: making a group is itself a collective of the whole world."""
    groups = {}
    for place in sorted({p.group for p in places(plan).values() if len(p.group) > 1}):
        groups[place] = dist.new_group(list(place))
    return groups


def inline_bytes(plan, src: int, dst: int) -> int:
    """Inline payload room for the hop src -> dst (ranks: 0 host, k stage k-1), from the plan."""
    cfg = plan.model.config
    b = plan.workload.batch
    if src == 0:
        return 8 * b  # token ids of a decode step
    if dst == 0:
        return 4 * cfg["vocab_size"]  # one sequence's logits
    return 4 * b * cfg["hidden_size"]


def send(t: torch.Tensor, dst: int) -> None:
    dist.send(t, dst)


def recv(t: torch.Tensor, src: int) -> torch.Tensor:
    dist.recv(t, src)
    return t


def send_json(obj: dict, dst: int) -> None:
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    send(torch.tensor([data.numel()], dtype=torch.int64), dst)
    send(data, dst)


def recv_json(src: int) -> dict:
    n = int(recv(torch.empty(1, dtype=torch.int64), src)[0])
    return json.loads(recv(torch.empty(n, dtype=torch.uint8), src).numpy().tobytes().decode())
