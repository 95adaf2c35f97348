"""Messages between the host and the dies over torch.distributed point-to-point (gloo).

Every message is a fixed-size int64 header (command, micro-batch id, segments) followed,
for FORWARD, by one payload tensor. The same code runs on loopback and across hosts (TCP
rendezvous). No pickling: the setup message is JSON bytes in a uint8 tensor. Calls block;
a dead peer closes its sockets, so a blocked call fails instead of hanging (the host's
watchdog kills the remaining workers when one dies, which turns that into an error at once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .stage import Segment

MAX_SEGS = 64
HEADER_LEN = 8 + 3 * MAX_SEGS
HEADER_BYTES = 8 * HEADER_LEN

FORWARD, FREE, SHUTDOWN = 1, 2, 3
IDS, HIDDEN, LOGITS, TOKENS = 1, 2, 3, 4  # TOKENS: the last die's greedy choice, one id a sequence


@dataclass
class Header:
    cmd: int
    mb: int = 0
    segs: tuple[Segment, ...] = ()
    kind: int = 0
    width: int = 0  # hidden size or vocabulary for float payloads
    inline: int = 0  # payload carried in the same message
    greedy: int = 0  # every sequence decodes greedily: the last die returns token ids, not logits

    @property
    def tokens(self) -> int:
        return sum(s.n for s in self.segs)

    def encode_into(self, t: torch.Tensor) -> None:
        if len(self.segs) > MAX_SEGS:
            raise ValueError(f"a micro-batch holds at most {MAX_SEGS} sequences")
        a = np.zeros(HEADER_LEN, dtype=np.int64)
        a[:7] = (self.cmd, self.mb, len(self.segs), self.kind, self.width, self.inline, self.greedy)
        if self.segs:
            a[8: 8 + 3 * len(self.segs)] = np.array([(s.slot, s.pos, s.n) for s in self.segs]).ravel()
        t.copy_(torch.from_numpy(a))

    @staticmethod
    def decode(t: torch.Tensor) -> Header:
        a = t.numpy()
        cmd, mb, n, kind, width, inline, greedy = (int(v) for v in a[:7])
        segs = tuple(Segment(*(int(v) for v in a[8 + 3 * i: 11 + 3 * i])) for i in range(n))
        return Header(cmd, mb, segs, kind, width, inline, greedy)

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
    return json.loads(bytes(recv(torch.empty(n, dtype=torch.uint8), src).tolist()).decode())
