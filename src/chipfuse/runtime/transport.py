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

import torch
import torch.distributed as dist

from .stage import Segment

MAX_SEGS = 64
HEADER_LEN = 8 + 3 * MAX_SEGS

FORWARD, FREE, SHUTDOWN = 1, 2, 3
IDS, HIDDEN, LOGITS = 1, 2, 3


@dataclass
class Header:
    cmd: int
    mb: int = 0
    segs: tuple[Segment, ...] = ()
    kind: int = 0
    width: int = 0  # hidden size or vocabulary for float payloads

    @property
    def tokens(self) -> int:
        return sum(s.n for s in self.segs)

    def encode(self) -> torch.Tensor:
        if len(self.segs) > MAX_SEGS:
            raise ValueError(f"a micro-batch holds at most {MAX_SEGS} sequences")
        t = torch.zeros(HEADER_LEN, dtype=torch.int64)
        t[:5] = torch.tensor([self.cmd, self.mb, len(self.segs), self.kind, self.width])
        for i, s in enumerate(self.segs):
            t[8 + 3 * i: 11 + 3 * i] = torch.tensor([s.slot, s.pos, s.n])
        return t

    @staticmethod
    def decode(t: torch.Tensor) -> Header:
        cmd, mb, n, kind, width = (int(v) for v in t[:5])
        segs = tuple(Segment(*(int(v) for v in t[8 + 3 * i: 11 + 3 * i])) for i in range(n))
        return Header(cmd, mb, segs, kind, width)

    def payload_buffer(self) -> torch.Tensor:
        if self.kind == IDS:
            return torch.empty(self.tokens, dtype=torch.int64)
        if self.kind == HIDDEN:
            return torch.empty(self.tokens, self.width, dtype=torch.float32)
        return torch.empty(len(self.segs), self.width, dtype=torch.float32)


def send(t: torch.Tensor, dst: int) -> None:
    dist.send(t, dst)


def recv(t: torch.Tensor, src: int) -> torch.Tensor:
    dist.recv(t, src)
    return t


def send_msg(h: Header, payload: torch.Tensor | None, dst: int) -> None:
    send(h.encode(), dst)
    if payload is not None:
        send(payload.contiguous(), dst)


def recv_msg(src: int) -> tuple[Header, torch.Tensor | None]:
    h = Header.decode(recv(torch.empty(HEADER_LEN, dtype=torch.int64), src))
    if h.cmd != FORWARD:
        return h, None
    return h, recv(h.payload_buffer(), src)


def send_json(obj: dict, dst: int) -> None:
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    send(torch.tensor([data.numel()], dtype=torch.int64), dst)
    send(data, dst)


def recv_json(src: int) -> dict:
    n = int(recv(torch.empty(1, dtype=torch.int64), src)[0])
    return json.loads(bytes(recv(torch.empty(n, dtype=torch.uint8), src).tolist()).decode())
