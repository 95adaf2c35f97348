"""A traced run laid out as the timelines `chipfuse plan --trace` draws: `chipfuse run --trace`.

The host and every die record what they did and when (`runtime.recorder`); here those intervals become
spans on the predicted trace's tracks (same names: the host, each die, each tensor group's all-reduce,
each hand-over link), so the measured file and the predicted one open side by side in Perfetto. A
link's span runs from the sender's send to the receiver's arrival; a die's wait for input therefore
holds the transfer in. The prefill is the first prompt's; the decode step is the median-length one.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import replace

from ..hw.spec import HOST as HOST_NODE
from ..plan.plan import Plan, Prediction, stage_positions
from ..runtime.recorder import ALL_REDUCE, COMPUTE, GATHER, HOST, SEND, WAIT_IN, Batch, Interval, Recording
from ..sim import trace as tr

Window = tuple[Batch, float, float]  # a micro-batch and the stretch of the run it stands for


def measured_trace(plan: Plan, rec: Recording, prediction: Prediction | None = None) -> tr.Trace:
    """The recorded run as a `sim.trace.Trace` (source "measured"): the first prefill, the median decode step
    and the whole run (an extra timeline), on the tracks of the plan's route."""
    positions = [[i for i, _ in pos] for pos in stage_positions(plan.stages)]
    names = [[plan.stages[i].die for i in pos] for pos in positions]
    spans = _spans(plan, rec, positions, names)
    windows = _windows(rec)
    prefills = [w for w in windows if w[0].prefill]
    decodes = sorted((w for w in windows if not w[0].prefill), key=lambda w: w[2] - w[1])
    tracks = tr.route_tracks(names)
    if not prefills:
        raise ValueError("the recording holds no prompt: trace a device after it has answered one")
    pre = prefills[0]
    prefill = _timeline(f"prefill ({pre[0].tokens}-token prompt, measured)", pre, spans, tracks, names)
    if decodes:
        dec = decodes[len(decodes) // 2]
        decode = _timeline(f"decode step (median of {len(decodes)}, measured)", dec, spans, tracks, names)
    else:
        decode = tr.Timeline("no decode step (a single token was generated)", 0.0, (), (), ())
    t0 = min(w[1] for w in windows)
    t1 = max(w[2] for w in windows)
    whole = _timeline(f"whole run ({len(windows)} micro-batches, measured)", (pre[0], t0, t1), spans, tracks,
                      names, shares=False)
    arrive = {r.mb: r.t1 for r in rec.host if r.kind == WAIT_IN}
    sent = {r.mb: r.t0 for r in rec.host if r.kind == SEND}
    trips = [arrive[b.mb] - sent[b.mb] for b, _, _ in decodes if b.mb in arrive and b.mb in sent]
    notes = ["a link span runs from the send to the arrival; a die's wait for input holds that transfer",
             _clock_note(rec)]
    if rec.dropped:
        notes.append(f"{rec.dropped} intervals past the recorder's limit were not kept: the whole run is cut short")
    title = f"{plan.model.name} on {plan.system.get('name', '?')}: measured run, " + " | ".join(
        "+".join(n) for n in names)
    return tr.Trace(title, prefill, decode, prediction, _in_flight(windows), statistics.median(trips) if trips else 0.0,
                    tuple(notes), source="measured", extra=(whole,))


def _clock_note(rec: Recording) -> str:
    worst = max(rec.clock_uncertainty_s, default=0.0)
    if not math.isfinite(worst):
        return "a die's clock could not be measured against the host's: its spans may be shifted"
    if worst == 0:
        return "the dies ran on the host's machine: one wall clock, no offsets to correct"
    return f"the dies' clocks were set against the host's to within {worst * 1e6:.0f} us (half the best round trip)"


def _spans(plan: Plan, rec: Recording, positions: list[list[int]], names: list[list[str]]) -> list[tr.Span]:
    """Every recorded interval as a span on its track, tagged with its micro-batch."""
    arrive: list[dict[int, float]] = []  # per position: micro-batch -> first arrival at one of its dies
    for pos in positions:
        a: dict[int, float] = {}
        for i in pos:
            for r in rec.dies[i]:
                if r.kind == WAIT_IN:
                    a[r.mb] = min(a.get(r.mb, math.inf), r.t1)
        arrive.append(a)
    host_arrive = {r.mb: r.t1 for r in rec.host if r.kind == WAIT_IN}
    out: list[tr.Span] = []
    for r in rec.host:
        if r.kind == HOST:
            out.append(_span(tr.HOST, "sample, stream, schedule", tr.HOST_WORK, r))
        elif r.kind == SEND:
            out.append(_link(tr.link_track([HOST_NODE], names[0]), "token ids in", r, arrive[0]))
    for p, pos in enumerate(positions):
        last = p + 1 == len(positions)
        nxt, nxt_arrive = ([HOST_NODE], host_arrive) if last else (names[p + 1], arrive[p + 1])
        s, e = plan.stages[pos[0]].blocks
        label = f"blocks {s}-{e - 1}" + (" (shard)" if plan.stages[pos[0]].shard else "")
        for k, i in enumerate(pos):
            die = names[p][k]
            colls: dict[int, list[Interval]] = defaultdict(list)
            for r in rec.dies[i]:
                if r.kind in (ALL_REDUCE, GATHER):
                    colls[r.mb].append(r)
                    what = "all-reduce" if r.kind == ALL_REDUCE else "logits gathered"
                    out.append(_span(die, what, tr.COLLECTIVE, r))
                    if k == 0:
                        out.append(_span(tr.allreduce_track(names[p]), what, tr.COLLECTIVE, r))
            for r in rec.dies[i]:
                if r.kind == WAIT_IN:
                    out.append(_span(die, "waiting for input", tr.WAIT, r))
                elif r.kind == COMPUTE:
                    out += _compute(die, label, r, sorted(colls.get(r.mb, []), key=lambda c: c.t0))
                elif r.kind == SEND:
                    out.append(_span(die, "sending " + ("logits" if last else "hidden state"), tr.TRANSFER, r))
                    out.append(_link(tr.link_track(names[p], nxt), "logits out" if last else "hidden state", r,
                                     nxt_arrive))
    return out


def _span(track: str, name: str, kind: str, r: Interval, t1: float | None = None) -> tr.Span:
    end = r.t1 if t1 is None else t1
    args: tr.Args = (("micro_batch", r.mb),) + ((("bytes", float(r.nbytes)),) if r.nbytes else ())
    return tr.Span(track, name, kind, r.t0, max(0.0, end - r.t0), args)


def _link(track: str, name: str, r: Interval, arrivals: dict[int, float]) -> tr.Span:
    """A hand-over: from the sender's send to its arrival at the receiver (the send's own end if never seen)."""
    return _span(track, name, tr.TRANSFER, r, max(r.t1, arrivals.get(r.mb, r.t1)))


def _compute(die: str, label: str, r: Interval, colls: list[Interval]) -> list[tr.Span]:
    """A forward pass split around the collectives it waited in (a tensor shard's phases)."""
    out, t = [], r.t0
    for c in colls:
        if r.t0 <= c.t0 < r.t1:
            if c.t0 > t:
                out.append(_span(die, label, tr.COMPUTE, replace(r, t0=t), c.t0))
            t = max(t, c.t1)
    if r.t1 > t:
        out.append(_span(die, label, tr.COMPUTE, replace(r, t0=t)))
    return out


def _windows(rec: Recording) -> list[Window]:
    """Each micro-batch's stretch: from its send to the send of the next one carrying any of its requests (their
    next step), or to the end of the host's work on its result when none follows."""
    sent = {r.mb: r.t0 for r in rec.host if r.kind == SEND}
    done = {r.mb: r.t1 for r in rec.host if r.kind == HOST}
    order = [b for b in rec.batches if b.mb in sent]
    out = []
    for k, b in enumerate(order):
        mine = set(b.requests)
        nxt = next((c for c in order[k + 1:] if mine & set(c.requests)), None)
        end = sent[nxt.mb] if nxt is not None else done.get(b.mb)
        if end is not None and end > sent[b.mb]:
            out.append((b, sent[b.mb], end))
    return out


def _in_flight(windows: list[Window]) -> int:
    """The most micro-batches whose stretches overlapped at once."""
    edges = sorted([(t0, 1) for _, t0, _ in windows] + [(t1, -1) for _, _, t1 in windows])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def _timeline(label: str, window: Window, spans: list[tr.Span], tracks: list[tr.Track], names: list[list[str]],
              shares: bool = True) -> tr.Timeline:
    """The spans inside `window`, clipped to it and timed from its start, with what its micro-batch's own
    path spent the time on (die work per position at its slowest die, collectives, links; the host and
    anything else is the rest)."""
    b, t0, t1 = window
    mine = []
    for s in spans:
        a, z = max(s.start_s, t0), min(s.end_s, t1)
        if z > a or (s.dur_s == 0 and t0 <= s.start_s <= t1):
            mine.append(replace(s, start_s=a - t0, dur_s=max(0.0, z - a)))
    out_tracks, laid = tr.lanes(tracks, mine)
    length = t1 - t0
    if not shares:
        return tr.Timeline(label, length, out_tracks, tuple(laid), ())
    own = [s for s in mine if dict(s.args).get("micro_batch") == b.mb]
    link_tracks = {t.name for t in tracks if t.kind == "link"}
    links = sum(s.dur_s for s in own if s.track in link_tracks)
    work = coll = 0.0
    for dies in names:  # each position's dies
        work += max((sum(s.dur_s for s in own if s.track == d and s.kind == tr.COMPUTE) for d in dies), default=0.0)
        coll += max((sum(s.dur_s for s in own if s.track == d and s.kind == tr.COLLECTIVE) for d in dies),
                    default=0.0)
    host = max(0.0, length - work - coll - links)
    return tr.Timeline(label, length, out_tracks, tuple(laid),
                       ((tr.DIE_WORK, work), (tr.COLLECTIVES, coll), (tr.LINKS, links), (tr.HOST_BOUND, host)))


__all__ = ["measured_trace"]
