"""A plan's prefill and decode step laid out in time, from the same figures the predictor adds up.

`build_trace(plan)` walks the plan's pipeline positions the way `sim.predict` does and places every
figure it adds on a timeline: each die's work per block and phase (`sim.tensor.die_step`, the per-op
roofline of `sim.perf`), the all-reduces closing each phase of a tensor group (`sim.tensor.group_step`),
the hand-over between positions, the token ids in and the logits out (`sim.collectives`, `sim.perf`),
and the host's per-token overhead. A position's length is the predictor's own figure (`stage_cost`,
`group_step`), so the decode timeline is exactly as long as `Prediction.decode_step_s`. With several
micro-batches in flight the decode step is their steady state: micro-batch m starts one slowest
position later than m - 1, and what runs past the step's end wraps to its start.

`to_chrome` gives the Chrome / Perfetto trace-event JSON (open it in ui.perfetto.dev or
chrome://tracing), `gantt` a text bar per die, and `step_shares` / `bottleneck` say what the step is
spent on, in words. Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise

import numpy as np

from ..hw.spec import HOST, System
from ..ir.graph import Graph, Workload
from ..ir.llm import build_llm_graph
from ..plan.plan import Plan, Prediction, Stage, model_configs, stage_positions
from ..quant.formats import PRECISION_BYTES, get_format
from .collectives import gather_to_host_s, hand_over_s, scatter_from_host_s
from .perf import die_rates, host_in_bytes, out_bytes, stage_cost
from .predict import predict, shard_parts
from .tensor import die_step, group_step

# what a span of a track is
COMPUTE, WAIT, COLLECTIVE, TRANSFER, HOST_WORK, STEP = "compute", "wait", "collective", "transfer", "host", "step"
# what a step's time goes to, in the words the bottleneck is named by
WEIGHTS_BW, COMPUTE_BOUND, LINK_LATENCY, LINK_BW, HOST_BOUND = (
    "weights bandwidth", "compute", "link latency", "link bandwidth", "host")
CATEGORIES = (WEIGHTS_BW, COMPUTE_BOUND, LINK_LATENCY, LINK_BW, HOST_BOUND)
EPS_S = 1e-12  # gaps and overlaps shorter than a picosecond are rounding, not time
GANTT_CHARS = {COMPUTE: "█", COLLECTIVE: "≈", TRANSFER: ">", HOST_WORK: "h", WAIT: "·"}

Args = tuple[tuple[str, float | int | str], ...]


@dataclass(frozen=True)
class Span:
    """One interval of one track: a die's block phase, a wait, an all-reduce, a transfer or host work."""

    track: str
    name: str
    kind: str  # compute | wait | collective | transfer | host | step
    start_s: float
    dur_s: float
    args: Args = ()

    @property
    def end_s(self) -> float:
        return self.start_s + self.dur_s


@dataclass(frozen=True)
class Track:
    name: str
    kind: str  # die | link | collective | host | step


@dataclass(frozen=True)
class Timeline:
    """One prefill or one decode step: its tracks in route order and their spans, times from 0."""

    label: str
    length_s: float
    tracks: tuple[Track, ...]
    spans: tuple[Span, ...]
    shares: tuple[tuple[str, float], ...]  # seconds of the step per category (CATEGORIES), summing to length_s

    def track_spans(self, name: str) -> list[Span]:
        return sorted((s for s in self.spans if s.track == name), key=lambda s: s.start_s)


@dataclass(frozen=True)
class Trace:
    """A plan's prefill then a decode step: as the performance model sees them (`source` "predicted"), or as
    a run recorded them ("measured", with the whole run as an `extra` timeline)."""

    title: str
    prefill: Timeline
    decode: Timeline
    prediction: Prediction | None
    micro_batches: int
    round_trip_s: float  # one micro-batch from the host around the pipeline and back
    notes: tuple[str, ...] = ()
    source: str = "predicted"
    extra: tuple[Timeline, ...] = ()


@dataclass
class _Run:
    """Building one round trip: spans, the categories its time goes to, and the predictor's pacing elements."""

    spans: list[Span] = field(default_factory=list)
    pieces: list[tuple[str, float]] = field(default_factory=list)
    elements: list[tuple[float, list[tuple[str, float]]]] = field(default_factory=list)  # (seconds, its pieces)
    t: float = 0.0


def _group_name(dies: list[str]) -> str:
    return "+".join(dies)


def _latency_s(system: System, transfers: Iterable[tuple[str, str, float]]) -> float:
    """The largest sum of hop latencies over the routes of concurrent transfers: the part no bandwidth shortens."""
    worst = 0.0
    for a, b, n in transfers:
        if a != b and n > 0:
            path = system.route_nodes(a, b, n)
            worst = max(worst, sum(system.graph.edges[u, v]["link"].latency_s for u, v in pairwise(path)))
    return worst


def _link_pieces(seconds: float, latency_s: float) -> list[tuple[str, float]]:
    lat = min(seconds, latency_s)
    return [(LINK_LATENCY, lat), (LINK_BW, seconds - lat)]


def _hand_over(senders: list[str], receivers: list[str], nbytes: float) -> list[tuple[str, str, float]]:
    """The transfers of `collectives.hand_over_s`: receiver j takes the state from sender j mod len(senders)."""
    return [(senders[j % len(senders)], r, nbytes) for j, r in enumerate(receivers)]


def _block_label(graph: Graph, b: int, phase: int) -> str:
    blk = graph.blocks[b]
    if blk.kind == "layer":
        return f"layer {blk.layer} {'attention' if phase == 0 else 'MLP'}"
    return {"embedding": "embedding", "head": "LM head"}.get(blk.kind, blk.name)


class _Builder:
    def __init__(self, plan: Plan, graph: Graph, system: System):
        self.plan, self.graph, self.system = plan, graph, system
        self.kvb = PRECISION_BYTES[get_format(plan.workload.kv_precision).precision]
        self.positions = stage_positions(plan.stages)

    def run(self, w: Workload, head_tokens: int, hidden_tokens: int, in_tokens: int, prefill: bool) -> _Run:
        """One pass host -> positions -> host of workload `w`; the outputs carry `head_tokens` rows of logits
        (to the host) or `hidden_tokens` hidden states (to the next position)."""
        run = _Run()
        overhead = self.system.host.overhead_per_token_s * (1 if prefill else w.seqs)
        if prefill:  # the predictor starts the time to first token with the host's overhead
            self._host(run, overhead)
        first = [st.die for _, st in self.positions[0]]
        n_in = host_in_bytes(in_tokens)
        t_in = scatter_from_host_s(self.system, first, n_in)
        lat = _latency_s(self.system, [(HOST, d, n_in) for d in first])
        self._transfer(run, link_track([HOST], first), "token ids in", t_in, lat, n_in)
        run.pieces += _link_pieces(t_in, lat)
        for p, pos in enumerate(self.positions):
            nxt = [st.die for _, st in self.positions[p + 1]] if p + 1 < len(self.positions) else [HOST]
            tokens = head_tokens if nxt == [HOST] else hidden_tokens
            if pos[0][1].kind == "layers":
                self._layers(run, pos[0][0], pos[0][1], nxt, w, tokens)
            else:
                self._group(run, pos, nxt, w, tokens)
        if not prefill:
            self._host(run, overhead)
        return run

    def _host(self, run: _Run, seconds: float) -> None:
        if seconds > 0:
            run.spans.append(Span(HOST, "per-token overhead (sampling, scheduling)", HOST_WORK, run.t, seconds))
        run.pieces.append((HOST_BOUND, seconds))
        run.t += seconds

    def _transfer(self, run: _Run, track: str, name: str, seconds: float, latency_s: float, nbytes: float) -> None:
        if seconds > 0:
            run.spans.append(Span(track, name, TRANSFER, run.t, seconds,
                                  (("bytes", float(nbytes)), ("latency_us", 1e6 * min(seconds, latency_s)))))
        run.t += seconds

    def _layers(self, run: _Run, i: int, st: Stage, nxt: list[str], w: Workload, tokens: int) -> None:
        """A die holding whole layers: its blocks' phases back to back, then its output on to `nxt`."""
        g, system = self.graph, self.system
        s, e = st.blocks
        f = self.plan.stage_recipe(i)
        r = die_rates(system, st.die, f.default)
        n_out = out_bytes(g, e, tokens, r.act_element_bytes)
        cost = stage_cost(g, system, st.die, range(s, e), f, w, self.kvb, nxt[0], n_out)
        phase_s, comp, mem, read = die_step(g, r, dict(g.shard_widths), f, w, self.kvb)
        t = run.t
        for b in range(s, e):
            for ph in (0, 1):
                if phase_s[b, ph] > 0:
                    run.spans.append(Span(st.die, _block_label(g, b, ph), COMPUTE, t, float(phase_s[b, ph]),
                                          _block_args(b, comp, mem, read)))
                    t += float(phase_s[b, ph])
        kind = WEIGHTS_BW if cost.memory_s > cost.compute_s else COMPUTE_BOUND
        work = [(kind, cost.time_s)]
        run.t += cost.time_s
        transfers = _hand_over([st.die], nxt, n_out) if len(nxt) > 1 else [(st.die, nxt[0], n_out)]
        link = hand_over_s(system, [st.die], nxt, n_out) if len(nxt) > 1 else cost.link_out_s
        self._out(run, [st.die], nxt, link, _latency_s(system, transfers), n_out, work)

    def _group(self, run: _Run, pos: list[tuple[int, Stage]], nxt: list[str], w: Workload, tokens: int) -> None:
        """A tensor group: each phase lasts as long as its slowest die and ends in an all-reduce (in a layer)."""
        g, system = self.graph, self.system
        dies = [st.die for _, st in pos]
        recipes = [self.plan.stage_recipe(i) for i, _ in pos]
        parts = [shard_parts(g, st) for _, st in pos]
        s, e = pos[0][1].blocks
        gs = group_step(g, system, dies, parts, recipes, w, self.kvb)
        rates = [die_rates(system, d, r.default) for d, r in zip(dies, recipes)]
        figures = [die_step(g, r, p, f, w, self.kvb) for r, p, f in zip(rates, parts, recipes)]
        phase = np.stack([fg[0] for fg in figures])  # (dies, blocks, 2)
        act = max(r.act_element_bytes for r in rates)
        ar_bytes = g.hidden_features[1] * w.tokens * act
        ar_track = allreduce_track(dies)
        ar_lat = self._allreduce_latency(dies, ar_bytes, gs.algorithm)
        t = run.t
        n_ar = 0
        for b in range(s, e):
            layer = g.blocks[b].kind == "layer"
            for ph in (0, 1):
                longest = float(phase[:, b, ph].max())
                slowest = dies[int(phase[:, b, ph].argmax())]
                for k, die in enumerate(dies):
                    own = float(phase[k, b, ph])
                    if own > 0:
                        run.spans.append(Span(die, _block_label(g, b, ph), COMPUTE, t, own,
                                              _block_args(b, *figures[k][1:])))
                    if longest - own > EPS_S:
                        run.spans.append(Span(die, f"wait for {slowest}", WAIT, t + own, longest - own))
                t += longest
                if layer and gs.allreduce_s > 0:
                    args: Args = (("bytes", float(ar_bytes)), ("algorithm", gs.algorithm),
                                  ("latency_us", 1e6 * min(gs.allreduce_s, ar_lat)))
                    for die in dies:
                        run.spans.append(Span(die, "all-reduce", COLLECTIVE, t, gs.allreduce_s, args))
                    run.spans.append(Span(ar_track, f"all-reduce after {_block_label(g, b, ph)}", COLLECTIVE, t,
                                          gs.allreduce_s, args))
                    t += gs.allreduce_s
                    n_ar += 1
        cost = float(gs.block_s[s:e].sum())
        coll = float(gs.collective_s[s:e].sum())
        mem = sum(float(fg[2][s:e].sum()) for fg in figures)
        comp = sum(float(fg[1][s:e].sum()) for fg in figures)
        lat = n_ar * min(gs.allreduce_s, ar_lat)
        work = [(WEIGHTS_BW if mem > comp else COMPUTE_BOUND, cost - coll), (LINK_LATENCY, lat), (LINK_BW, coll - lat)]
        run.t += cost
        if nxt == [HOST]:
            sent = [(d, 4.0 * tokens * p["vocab"]) for d, p in zip(dies, parts)]
            link, transfers = gather_to_host_s(system, sent), [(d, HOST, n) for d, n in sent]
            n_out = sum(n for _, n in sent)
        else:
            n_out = g.hidden_features[1] * act * tokens
            link, transfers = hand_over_s(system, dies, nxt, n_out), _hand_over(dies, nxt, n_out)
        self._out(run, dies, nxt, link, _latency_s(system, transfers), n_out, work)

    def _allreduce_latency(self, dies: list[str], nbytes: float, algorithm: str) -> float:
        """The latency part of one all-reduce, for the algorithm `collectives.allreduce` chose."""
        k = len(dies)
        if algorithm == "ring":
            return 2 * (k - 1) * _latency_s(self.system, [(dies[i], dies[(i + 1) % k], nbytes / k) for i in range(k)])
        if algorithm == "direct":
            return _latency_s(self.system, [(a, b, nbytes) for a in dies for b in dies if a != b])
        return 0.0

    def _out(self, run: _Run, dies: list[str], nxt: list[str], link: float, latency_s: float, nbytes: float,
             work: list[tuple[str, float]]) -> None:
        """The position's output on to the next position (or the logits to the host); records the pacing."""
        name = "logits out" if nxt == [HOST] else "hidden state"
        self._transfer(run, link_track(dies, nxt), name, link, latency_s, nbytes)
        link_pieces = _link_pieces(link, latency_s)
        run.pieces += work + link_pieces
        run.elements += [(sum(x for _, x in work), work), (link, link_pieces)]


def _block_args(b: int, comp: np.ndarray, mem: np.ndarray, read: np.ndarray) -> Args:
    return (("block", b), ("block_compute_us", 1e6 * float(comp[b])), ("block_memory_us", 1e6 * float(mem[b])),
            ("block_read_bytes", float(read[b])))


def build_trace(plan: Plan, system: System | None = None, graph: Graph | None = None) -> Trace:
    """One prefill of the plan's prompt and the decode step after it, on the plan's system (or `system`).

    The plan is checked and predicted first (`sim.predict.predict`), so anything the predictor refuses
    is refused here with the same message."""
    pred = predict(plan, graph=graph, system=system)
    system = system or System.model_validate(plan.system)
    if graph is None:
        configs, _ = model_configs(plan)
        graph = build_llm_graph(configs[plan.model.id])
    wl = plan.workload
    b = _Builder(plan, graph, system)
    n = len(b.positions)
    micro = min(wl.batch, n)
    seqs = -(-wl.batch // micro)
    pre = b.run(Workload.prefill(wl.prompt_tokens, 1), 1, wl.prompt_tokens, wl.prompt_tokens, prefill=True)
    dec = b.run(Workload.decode(wl.decode_context, seqs), seqs, seqs, seqs, prefill=False)
    slowest = max((x for x, _ in dec.elements), default=0.0)
    cycle = max(dec.t, micro * slowest)
    tracks = _tracks(b)
    notes = []
    pieces = dec.pieces
    if micro > 1:
        notes.append(f"{micro} micro-batches of {seqs} sequence(s) in flight: each starts one slowest position "
                     f"({slowest * 1e6:.1f} us) after the one before; spans past the step's end wrap to its start")
    if micro * slowest > dec.t:
        pacer = max(dec.elements, key=lambda el: el[0])
        pieces = [(k, micro * x) for k, x in pacer[1]]
        notes.append(f"the slowest position sets the pace: {micro} x {slowest * 1e6:.1f} us exceeds one round trip "
                     f"({dec.t * 1e6:.1f} us)")
    spans = _steady_state(dec.spans, micro, slowest, cycle)
    decode_tracks, spans = lanes(tracks, spans)
    decode = Timeline(f"decode step (batch {wl.batch}, context {wl.context})", cycle, decode_tracks,
                      tuple(_fill_waits(decode_tracks, spans, cycle)), _shares(pieces))
    pre_tracks, pre_spans = lanes(tracks, pre.spans)
    prefill = Timeline(f"prefill ({wl.prompt_tokens}-token prompt)", pre.t, pre_tracks,
                       tuple(_fill_waits(pre_tracks, pre_spans, pre.t)), _shares(pre.pieces))
    title = f"{plan.model.name} on {system.name}: " + " | ".join(
        _group_name([st.die for _, st in pos]) for pos in b.positions)
    return Trace(title, prefill, decode, pred, micro, dec.t, tuple(notes))


def route_tracks(positions: list[list[str]]) -> list[Track]:
    """Every track in route order for pipeline positions given as their dies: host, token ids in, each
    position's dies, its all-reduce and its output link (the names the measured trace uses too)."""
    out = [Track(HOST, "host"), Track(link_track([HOST], positions[0]), "link")]
    for p, dies in enumerate(positions):
        out += [Track(d, "die") for d in dies]
        if len(dies) > 1:
            out.append(Track(allreduce_track(dies), "collective"))
        out.append(Track(link_track(dies, positions[p + 1] if p + 1 < len(positions) else [HOST]), "link"))
    return out


def link_track(senders: list[str], receivers: list[str]) -> str:
    return f"{_group_name(senders)} -> {_group_name(receivers)}"


def allreduce_track(dies: list[str]) -> str:
    return f"all-reduce {_group_name(dies)}"


def _tracks(b: _Builder) -> list[Track]:
    return route_tracks([[st.die for _, st in pos] for pos in b.positions])


def _steady_state(spans: list[Span], micro: int, slowest: float, cycle: float) -> list[Span]:
    """Micro-batch m's spans shifted by m slowest positions; what runs past `cycle` wraps to the start."""
    if micro == 1:
        return list(spans)
    out = []
    for m in range(micro):
        for sp in spans:
            start = sp.start_s + m * slowest
            if start >= cycle:
                start -= cycle
            args = (*sp.args, ("micro_batch", m + 1))
            name = f"{sp.name} [mb {m + 1}]"
            head = min(sp.dur_s, cycle - start)
            out.append(replace(sp, name=name, start_s=start, dur_s=head, args=args))
            if sp.dur_s - head > EPS_S:
                out.append(replace(sp, name=name, start_s=0.0, dur_s=sp.dur_s - head, args=args))
    return out


def lanes(tracks: list[Track], spans: list[Span]) -> tuple[tuple[Track, ...], list[Span]]:
    """Spans that would overlap on one track (only host work or links of different micro-batches can) go to
    extra lanes of that track, so every track is a sequence of spans."""
    out_tracks: list[Track] = []
    out: list[Span] = []
    for tr in tracks:
        lanes: list[float] = []
        mine = sorted((s for s in spans if s.track == tr.name), key=lambda s: (s.start_s, s.dur_s))
        for sp in mine:
            k = next((j for j, end in enumerate(lanes) if sp.start_s >= end - EPS_S), len(lanes))
            lanes[k:k + 1] = [sp.end_s]
            out.append(sp if k == 0 else replace(sp, track=f"{tr.name} #{k + 1}"))
        out_tracks += [tr] + [Track(f"{tr.name} #{k + 1}", tr.kind) for k in range(1, len(lanes))]
    return tuple(out_tracks), out


def _fill_waits(tracks: Iterable[Track], spans: list[Span], length: float) -> list[Span]:
    """The spans, with every gap of a die's track filled by an idle span (the die waits for its turn)."""
    out = list(spans)
    for tr in tracks:
        if tr.kind != "die":
            continue
        t = 0.0
        for sp in sorted((s for s in spans if s.track == tr.name), key=lambda s: s.start_s):
            if sp.start_s - t > EPS_S:
                out.append(Span(tr.name, "idle", WAIT, t, sp.start_s - t))
            t = max(t, sp.end_s)
        if length - t > EPS_S:
            out.append(Span(tr.name, "idle", WAIT, t, length - t))
    return sorted(out, key=lambda s: (s.start_s, s.track))


def _shares(pieces: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for k, x in pieces:
        totals[k] += max(x, 0.0)
    return tuple(totals.items())


def step_shares(timeline: Timeline) -> dict[str, float]:
    """Seconds of the step per category (weights bandwidth, compute, link latency, link bandwidth, host)."""
    return dict(timeline.shares)


@dataclass(frozen=True)
class Bottleneck:
    kind: str  # one of CATEGORIES
    share: float  # of the step, 0..1
    words: str


# what a measured step's time goes to (a run cannot tell a die's DRAM time from its arithmetic, nor a link's
# latency from its bandwidth)
DIE_WORK, COLLECTIVES, LINKS = "die work", "collectives", "links"
MEASURED = (DIE_WORK, COLLECTIVES, LINKS, HOST_BOUND)
WHAT = {WEIGHTS_BW: "the dies reading DRAM (weights, KV cache, activations; memory-bound)",
        DIE_WORK: "the dies running their layers",
        COLLECTIVES: "all-reduces and gathers inside tensor groups (the wait for the group's slowest die included)",
        LINKS: "hand-overs between positions, from the send to the arrival",
        COMPUTE_BOUND: "the dies computing (compute-bound)",
        LINK_LATENCY: "per-transfer latency of hand-overs and all-reduces",
        LINK_BW: "bytes crossing the links",
        HOST_BOUND: "the host's per-token overhead"}


def bottleneck(shares: Mapping[str, float]) -> Bottleneck:
    """What the step is spent on most, in words, with the runner-up where it takes a tenth or more."""
    total = sum(shares.values())
    if total <= 0:
        raise ValueError("a step with no time has no bottleneck")
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    kind, top = ranked[0]
    words = f"{kind}: {100 * top / total:.0f}% of the step is {WHAT[kind]}"
    if len(ranked) > 1 and ranked[1][1] >= 0.1 * total:
        words += f"; then {ranked[1][0]} ({100 * ranked[1][1] / total:.0f}%)"
    return Bottleneck(kind, top / total, words)


def to_chrome(trace: Trace) -> dict:
    """The trace as Chrome trace-event JSON: a process per timeline (prefill first, then the decode step
    starting where the prefill ends), a thread per track, complete ("X") events in microseconds."""
    events: list[dict] = []
    meta: list[dict] = []
    for pid, tl in enumerate((trace.prefill, trace.decode, *trace.extra), start=1):
        t0 = trace.prefill.length_s if pid == 2 else 0.0  # the step follows the prefill; an extra starts at 0
        meta += [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": tl.label}},
                 {"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}}]
        tids = {STEP: 1} | {tr.name: k + 2 for k, tr in enumerate(tl.tracks)}
        for name, tid in tids.items():
            meta += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}},
                     {"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}}]
        events.append({"name": tl.label, "cat": STEP, "ph": "X", "pid": pid, "tid": 1, "ts": t0 * 1e6,
                       "dur": tl.length_s * 1e6, "args": {f"{k} (us)": 1e6 * v for k, v in tl.shares}})
        for sp in tl.spans:
            events.append({"name": sp.name, "cat": sp.kind, "ph": "X", "pid": pid, "tid": tids[sp.track],
                           "ts": (t0 + sp.start_s) * 1e6, "dur": sp.dur_s * 1e6, "args": dict(sp.args)})
    events.sort(key=lambda ev: (ev["pid"], ev["tid"], ev["ts"]))
    pred = trace.prediction
    other = {"title": trace.title, "source": trace.source, "ttft_us": trace.prefill.length_s * 1e6,
             "decode_step_us": trace.decode.length_s * 1e6}
    if pred is not None:
        other |= {"predicted_ttft_us": pred.ttft_s * 1e6, "predicted_decode_step_us": pred.decode_step_s * 1e6}
    other |= {"micro_batches": trace.micro_batches, "round_trip_us": trace.round_trip_s * 1e6,
              "notes": list(trace.notes)}
    return {"traceEvents": meta + events, "displayTimeUnit": "ms", "otherData": other}


@dataclass(frozen=True)
class GanttRow:
    label: str
    bar: str
    seconds: tuple[tuple[str, float], ...]  # per span kind, in the step


def gantt(timeline: Timeline, width: int = 60) -> list[GanttRow]:
    """A text bar per die (then one for all links and collectives, one for the host), `width` characters for the
    step. Each character stands for a slice of the step and shows a span kind (GANTT_CHARS; a space: nothing)
    by error diffusion: the kind with the most time not yet shown, so every kind gets characters in
    proportion to its time, where it happens (a short all-reduce after each phase still shows)."""
    if width < 1 or timeline.length_s <= 0:
        raise ValueError("a Gantt needs a width of at least 1 and a step with time")
    rows = [(tr.name, [tr.name]) for tr in timeline.tracks if tr.kind == "die"]
    rows += [("links", [tr.name for tr in timeline.tracks if tr.kind in ("link", "collective")]),
             (HOST, [tr.name for tr in timeline.tracks if tr.kind == "host"])]
    kinds = [*GANTT_CHARS, ""]
    chars = {**GANTT_CHARS, "": " "}
    cell = timeline.length_s / width
    out = []
    for label, names in rows:
        busy = np.zeros((len(kinds), width))  # cells of each kind in each character's slice
        totals = dict.fromkeys(GANTT_CHARS, 0.0)
        for sp in (s for s in timeline.spans if s.track in names):
            totals[sp.kind] += sp.dur_s
            lo, hi = sp.start_s / cell, sp.end_s / cell
            for c in range(int(lo), min(width, int(np.ceil(hi)))):
                busy[kinds.index(sp.kind), c] += max(0.0, min(hi, c + 1) - max(lo, c))
        used = busy[:-1].sum(axis=0)
        busy[:-1] /= np.maximum(used, 1.0)  # several links at once: a slice is at most full
        busy[-1] = np.maximum(0.0, 1.0 - busy[:-1].sum(axis=0))
        owed = np.zeros(len(kinds))
        bar = []
        for c in range(width):
            owed += busy[:, c]
            k = int(owed.argmax())
            owed[k] -= 1.0
            bar.append(chars[kinds[k]])
        out.append(GanttRow(label, "".join(bar), tuple((k, v) for k, v in totals.items() if v > 0)))
    return out


__all__ = ["Span", "Track", "Timeline", "Trace", "Bottleneck", "GanttRow", "build_trace", "to_chrome", "gantt",
           "route_tracks", "link_track", "allreduce_track", "lanes", "MEASURED", "DIE_WORK", "COLLECTIVES", "LINKS",
           "step_shares", "bottleneck", "CATEGORIES", "GANTT_CHARS"]
