"""Vision models on dies: each node's time on a die (the one roofline), and the best cut of a model into
consecutive pieces over an ordered list of dies.

A piece's time is the sum of its nodes' roofline times plus a dispatch overhead per node; a cut costs
the transfer of the tensors live across it (`ir.cv.live_bytes`) over the route between the two dies.
The split minimises the bottleneck (the slowest piece or link: a stream of frames goes at its pace)
by dynamic programming over cut positions, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.spec import HOST, System
from ..ir.cv import CVCosts, CVModel, cv_costs, shapes
from ..quant.formats import DEFAULT_FORMAT, get_format
from ..sim.perf import die_rates, op_times, roofline_s, supported, transfer_s
from ..units import TERA

_COSTS: dict[tuple, tuple[CVModel, CVCosts]] = {}  # (model id, frame, format, activation bytes) -> (model, CVCosts): one walk per combination


@dataclass(frozen=True)
class CVOnDie:
    """A vision model's per-frame figures on one die at one precision."""

    die: str
    precision: str  # what the die runs (after its fallback)
    node_s: np.ndarray  # each node's seconds, dispatch included
    costs: CVCosts

    @property
    def frame_s(self) -> float:
        return float(self.node_s.sum())


def on_die(model: CVModel, system: System, die: str, precision: str,
           frame_shape: tuple[int, ...] | None = None) -> CVOnDie:
    """Per-node time of `model` on `die` for one frame, the weights held at `precision` (or the die's fallback)."""
    p = supported(system, die, precision)
    fmt = get_format(DEFAULT_FORMAT[p])
    r = die_rates(system, die, fmt)
    key = (id(model), tuple(frame_shape or model.frame_shape), fmt.name, r.act_element_bytes)
    hit = _COSTS.get(key)
    if hit is None or hit[0] is not model:  # the costs of a frame depend on the model, the format and the activations
        hit = (model, cv_costs(model, shapes(model, frame_shape), fmt, r.act_element_bytes))
        if len(_COSTS) > 256:
            _COSTS.clear()
        _COSTS[key] = hit
    c: CVCosts = hit[1]
    vision = system.die_type(die).vision
    if vision is not None and p in vision.tops:  # the die's own figures for vision ops (chipfuse probe measures them)
        rate = vision.tops[p] * TERA
        comp = (c.costs.weight_flop + c.costs.act_flop) / rate
        bw = vision.gb_per_s[p] * 1e9 if p in vision.gb_per_s else r.bytes_per_s
        return CVOnDie(die, p, roofline_s(comp, c.costs.read_bytes, bw) + vision.node_overhead_s, c)
    comp, _ = op_times(c.costs, r)
    return CVOnDie(die, p, roofline_s(comp, c.costs.read_bytes, r.bytes_per_s) + r.op_overhead_s, c)


@dataclass(frozen=True)
class CVPiece:
    die: str
    start: int
    end: int
    compute_s: float
    link_in_s: float  # receiving its inputs (from the host, or the previous piece's die)


@dataclass(frozen=True)
class CVSplit:
    model: str
    precision: str
    pieces: tuple[CVPiece, ...]
    link_out_s: float  # the last piece's outputs to the host
    bottleneck_s: float  # per frame in a stream: the slowest piece or link
    latency_s: float  # one frame, start to end

    @property
    def frames_per_s(self) -> float:
        return 1.0 / self.bottleneck_s if self.bottleneck_s > 0 else float("inf")


def split_cv(model: CVModel, system: System, dies: list[str], precision: str,
             frame_shape: tuple[int, ...] | None = None) -> CVSplit:
    """The best cut of `model` into len(dies) consecutive pieces, piece k on dies[k] (the host sends the frame
    to the first and receives the outputs from the last)."""
    if not dies:
        raise ValueError("split_cv needs at least one die")
    per = [on_die(model, system, d, precision, frame_shape) for d in dies]
    n = len(model.nodes)
    if len(dies) > n:
        raise ValueError(f"{model.name} has {n} nodes: it cannot be cut into {len(dies)} pieces")
    live = per[0].costs.live_bytes  # activation precision may differ by die; the first die's is used for cuts
    out_bytes = float(live[n])
    prefix = [np.concatenate([[0.0], np.cumsum(p.node_s)]) for p in per]
    k_dies = len(dies)
    # link into piece k across cut i: from the host (k = 0, cut 0) or from die k-1
    def link_in(k: int, cut: int) -> float:
        src = HOST if k == 0 else dies[k - 1]
        return transfer_s(system, src, dies[k], float(live[cut])) if src != dies[k] else 0.0

    INF = float("inf")
    # best[k][j]: the smallest bottleneck of nodes [0, j) in pieces 0..k, piece k ending at j
    best = np.full((k_dies, n + 1), INF)
    arg = np.zeros((k_dies, n + 1), dtype=np.int64)
    links = np.array([[link_in(k, i) for i in range(n + 1)] for k in range(k_dies)])
    for j in range(1, n + 1):
        best[0, j] = max(prefix[0][j], links[0, 0])
    for k in range(1, k_dies):
        for j in range(k + 1, n + 1):
            i = np.arange(k, j)  # piece k is nodes [i, j), i >= k so that earlier pieces are non-empty
            cand = np.maximum(np.maximum(best[k - 1, i], prefix[k][j] - prefix[k][i]), links[k, i])
            m = int(np.argmin(cand))
            best[k, j], arg[k, j] = cand[m], i[m]
    cuts = [n]
    for k in range(k_dies - 1, 0, -1):
        cuts.append(int(arg[k, cuts[-1]]))
    cuts.append(0)
    cuts.reverse()
    pieces = tuple(CVPiece(dies[k], cuts[k], cuts[k + 1], float(prefix[k][cuts[k + 1]] - prefix[k][cuts[k]]),
                           float(links[k, cuts[k]])) for k in range(k_dies))
    link_out = transfer_s(system, dies[-1], HOST, out_bytes) if dies[-1] != HOST else 0.0
    bottleneck = max([p.compute_s for p in pieces] + [p.link_in_s for p in pieces] + [link_out])
    latency = sum(p.compute_s + p.link_in_s for p in pieces) + link_out
    return CVSplit(model.name, per[0].precision, pieces, link_out, bottleneck, latency)


__all__ = ["CVOnDie", "CVPiece", "CVSplit", "on_die", "split_cv"]
