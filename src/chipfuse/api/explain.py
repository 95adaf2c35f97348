"""Why a plan is as fast as it is: its timeline (a Chrome / Perfetto trace) and how it scales with more dies."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ChipfuseError
from .progress import Progress, Silent
from .results import ScalingReport, ScalingRow, TraceResult

MODES = ("pipeline", "tensor", "hybrid")
MIN_DIES = {"pipeline": 1, "tensor": 2, "hybrid": 3}  # fewer dies and the mode is one of the others (or none)


def trace(plan, path: str | Path | None = None, system=None) -> TraceResult:
    """Lay a plan's prefill and decode step out in time, as the performance model sees them, and write it to
    `path` as Chrome trace-event JSON (open it in ui.perfetto.dev or chrome://tracing) -> `TraceResult`.

    The timeline adds up the predictor's own figures, so the decode step is `plan.prediction.decode_step_s`
    long and the prefill `ttft_s`. `system`: predict on another system than the plan's (a name, path or System)."""
    from ..hw.spec import System
    from ..io import write_text_atomic
    from ..sim.trace import bottleneck, build_trace, to_chrome

    sysm = None if system is None else (system if isinstance(system, System) else _load_system(system))
    tr = build_trace(plan, system=sysm)
    doc = to_chrome(tr)
    if path is not None:
        write_text_atomic(path, json.dumps(doc) + "\n")
    return TraceResult(Path(path) if path is not None else None, tr.title, tr.prefill.length_s, tr.decode.length_s,
                       tr.round_trip_s, tr.micro_batches, len(doc["traceEvents"]),
                       bottleneck(dict(tr.decode.shares)).words, tr.decode.shares, tr.notes, tr)


def _load_system(name_or_path):
    from .core import load_system

    return load_system(name_or_path)


def scaling(model, system, precision: str | None = None, *, context: int = 4096, batch: int = 1,
            prompt_tokens: int = 512, kv_precision: str = "fp16", objective: str = "throughput",
            modes=MODES, dies: int | None = None, progress: Progress | None = None) -> ScalingReport:
    """Will another die help? For k = 1..N dies (the first k the compiler routes through; N = `dies` or all) and
    each split mode, plan with at most k dies in that mode and predict -> `ScalingReport`: decode tokens/s,
    time to first token, scaling efficiency (tokens/s / (k x one die's)) and the bottleneck in words.

    A mode appears where it differs from the others: tensor from 2 dies, hybrid from 3. A point that does not
    fit is a row with `problem` set. Where one die cannot hold the model, efficiency is relative to the
    smallest die count that can (`baseline_dies`)."""
    from ..compile.compiler import compile_plan
    from ..errors import FitError
    from ..frontends.config import ModelConfig
    from ..hw.spec import System

    modes = _modes(modes)
    sysm = system if isinstance(system, System) else _load_system(system)
    cfg = model if isinstance(model, ModelConfig) else _load_model(model)
    n = len(sysm.die_names)
    if dies is not None and (isinstance(dies, bool) or not isinstance(dies, int) or not 1 <= dies <= n):
        raise ChipfuseError(f"--dies {dies!r}: give 1..{n} ({sysm.name} has {n} dies)")
    points = [(k, m) for k in range(1, (dies or n) + 1) for m in modes if k >= MIN_DIES[m]]
    progress = progress or Silent()
    progress.start(len(points), f"planning {cfg.name} on 1..{dies or n} dies of {sysm.name}")
    plans: dict[tuple[int, str], object] = {}
    problems: dict[tuple[int, str], str] = {}
    fmt = None
    for k, mode in points:
        progress.describe(f"{k} die(s), {mode}")
        try:
            p = compile_plan(cfg, sysm, precision, context=context, batch=batch, prompt_tokens=prompt_tokens,
                             kv_precision=kv_precision, max_dies=k, split=mode, objective=objective,
                             model_source=str(model) if not isinstance(model, ModelConfig) else cfg.name)
            plans[k, mode] = p
            fmt = fmt or p.precision
        except FitError as err:
            problems[k, mode] = str(err).splitlines()[0]
        progress.advance()
    base_k, base = _baseline(plans)
    rows = tuple(_row(k, m, plans.get((k, m)), problems.get((k, m)), base_k, base) for k, m in points)
    notes = _notes([n for p in plans.values() for n in p.prediction.notes])
    return ScalingReport(cfg.name, sysm.name, fmt or (precision or "int4"), objective, context, batch, prompt_tokens,
                         base_k, base, rows, notes)


def _notes(notes: list[str]) -> tuple[str, ...]:
    """The predictor's notes on the plans, each once: notes differing only in their counts become one, counts
    left out ("2 micro-batches in flight" and "4 micro-batches in flight": "micro-batches in flight")."""
    import re

    seen: dict[str, set[str]] = {}
    for n in notes:
        seen.setdefault(re.sub(r"\d+", "#", n), set()).add(n)
    return tuple(next(iter(v)) if len(v) == 1 else re.sub(r"\d+ ", "", next(iter(v)), count=1) for v in seen.values())


def _load_model(spec):
    from .core import load_model

    return load_model(spec)


def _modes(modes) -> tuple[str, ...]:
    """The split modes asked for (a list, or a comma-separated string), each known, in the usual order."""
    asked = [m.strip() for m in (modes.split(",") if isinstance(modes, str) else modes) if m.strip()]
    bad = [m for m in asked if m not in MODES]
    if bad or not asked:
        raise ChipfuseError(f"--modes {','.join(asked) or repr(modes)}: choose among {', '.join(MODES)}")
    return tuple(m for m in MODES if m in asked)


def _baseline(plans: dict) -> tuple[int | None, float | None]:
    """The fewest dies any fitting plan uses (1 where one die holds the model) and the fastest plan there."""
    if not plans:
        return None, None
    k = min(k for k, _ in plans)
    return k, max(p.prediction.decode_tokens_per_s for (kk, _), p in plans.items() if kk == k)


def _row(k: int, mode: str, plan, problem: str | None, base_k: int | None, base: float | None) -> ScalingRow:
    """A point of the scaling table: the plan's figures, efficiency and bottleneck (or why it does not fit)."""
    from ..plan.plan import stage_positions
    from ..sim.trace import bottleneck, build_trace

    if plan is None:
        return ScalingRow(k, mode, (), None, None, None, None, None, None, None, None, None, problem=problem)
    pred = plan.prediction
    tr = build_trace(plan)
    neck = bottleneck(dict(tr.decode.shares))
    groups = tuple(tuple(st.die for _, st in pos) for pos in stage_positions(plan.stages))
    eff = pred.decode_tokens_per_s * base_k / (k * base) if base else None
    slowest = max(pred.stages, key=lambda sp: sp.decode_s + sp.link_out_s)
    return ScalingRow(k, mode, groups, pred.decode_tokens_per_s, pred.decode_tokens_per_s_per_request, pred.ttft_s,
                      pred.decode_step_s, eff, neck.kind, neck.share, neck.words, slowest.reason, tr.decode.shares,
                      bottleneck(dict(tr.prefill.shares)).words)


def plot_scaling(report: ScalingReport, path: str | Path) -> Path:
    """A PNG of `report`: decode tokens/s against dies, one line per split mode, and ideal scaling from the
    baseline (dashed). Written atomically; returns the path."""
    from matplotlib.figure import Figure

    from ..io import write_atomic

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    top = max((r.dies for r in report.rows), default=1)
    styles = {"pipeline": ("o", "tab:blue"), "tensor": ("s", "tab:orange"), "hybrid": ("^", "tab:green")}
    for mode in MODES:
        pts = [(r.dies, r.decode_tokens_per_s) for r in report.rows if r.mode == mode and r.decode_tokens_per_s]
        if pts:
            marker, colour = styles[mode]
            ax.plot(*zip(*pts), marker=marker, color=colour, label=mode)
    if report.baseline_tokens_per_s and report.baseline_dies:
        ks = list(range(report.baseline_dies, top + 1))
        ax.plot(ks, [report.baseline_tokens_per_s * k / report.baseline_dies for k in ks], "--", color="grey",
                label=f"ideal ({report.baseline_dies} die{'s' if report.baseline_dies > 1 else ''} x k)")
    ax.set_xticks(range(1, top + 1))
    ax.set_xlabel("dies (the first k of the system)")
    ax.set_ylabel("decode tokens/s" + (f" (batch {report.batch}, aggregate)" if report.batch > 1 else ""))
    ax.set_ylim(bottom=0)
    ax.set_title(f"{report.model} on {report.system} at {report.precision}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=_image_format(path)))
    return Path(path)


def _image_format(path: str | Path) -> str:
    """svg for a .svg path, else png."""
    return "svg" if str(path).lower().endswith(".svg") else "png"


def plot_memory(plan, path: str | Path) -> Path:
    """Memory per die of a plan: weights, KV cache and workspace stacked against each die's capacity.
    PNG, or SVG for a .svg path; written atomically; returns the path."""
    from matplotlib.figure import Figure

    from ..io import write_atomic
    from ..units import GiB

    st = plan.stages
    labels = [s.die for s in st]
    parts = (("weights", [s.weight_bytes for s in st], "tab:blue"), ("KV cache", [s.kv_bytes for s in st], "tab:orange"),
             ("workspace", [s.workspace_bytes for s in st], "tab:green"))
    fig = Figure(figsize=(max(5.5, 1.3 * len(st) + 3), 4.0), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(st)))
    bottom = [0.0] * len(st)
    for name, vals, colour in parts:
        gib = [v / GiB for v in vals]
        ax.bar(xs, gib, bottom=bottom, color=colour, label=name, width=0.6)
        bottom = [b + g for b, g in zip(bottom, gib)]
    ax.hlines([s.memory_bytes / GiB for s in st], [x - 0.4 for x in xs], [x + 0.4 for x in xs], color="black",
              lw=2, label="capacity")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("GiB")
    ax.set_ylim(0, max(s.memory_bytes for s in st) / GiB * 1.25)
    ax.legend(fontsize=7, loc="upper right", ncols=4)
    ax.set_title(f"{plan.model.name} at {plan.precision_label}: memory per die\n{plan.system.get('name', '?')}",
                 fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=_image_format(path)))
    return Path(path)


KIND_COLOURS = {"compute": "tab:blue", "collective": "tab:orange", "transfer": "tab:green", "host": "tab:purple",
                "wait": "#dddddd"}


def plot_trace(traced, path: str | Path, which: str = "decode") -> Path:
    """A PNG of one timeline of a trace (`TraceResult` or `sim.trace.Trace`; `which` "decode" or "prefill"): a
    row per track in route order (host, links, dies, all-reduces), each span coloured by what it is. Predicted
    and measured traces draw alike, so the two pictures compare at a glance. Written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ..io import write_atomic

    tr = getattr(traced, "trace", traced)
    tl = tr.prefill if which == "prefill" else tr.decode
    if tl.length_s <= 0:
        raise ChipfuseError(f"the trace has no {which} step to draw")
    names = [t.name for t in tl.tracks]
    scale, unit = (1e3, "ms") if tl.length_s >= 1e-3 else (1e6, "us")
    fig = Figure(figsize=(9, 1.4 + 0.32 * len(names)), dpi=110)
    ax = fig.add_subplot()
    for sp in tl.spans:
        if sp.track in names and sp.dur_s > 0:
            ax.broken_barh([(sp.start_s * scale, sp.dur_s * scale)], (names.index(sp.track) - 0.4, 0.8),
                           facecolors=KIND_COLOURS.get(sp.kind, "grey"), linewidth=0, antialiased=False)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, tl.length_s * scale)
    ax.set_xlabel(f"time in the step ({unit})")
    ax.set_title(f"{tr.title}\n{tl.label}" + ("" if tr.source in tl.label else f", {tr.source}"), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    kinds = sorted({sp.kind for sp in tl.spans if sp.kind in KIND_COLOURS})
    fig.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds], fontsize=7, loc="lower center",
               ncol=len(kinds), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=_image_format(path)))
    return Path(path)


def plot_roofline(plan, path: str | Path) -> Path:
    """A PNG of each die's roofline with the plan's ops on it: FLOP per byte read (x) against the FLOP/s each op
    reaches (y), for one decode step (dots) and the prefill (crosses), under the die's compute roof (at the
    weights' precision) and its memory slope. Written atomically; returns the path."""
    import numpy as np
    from matplotlib.figure import Figure

    from ..frontends.config import ModelConfig
    from ..hw.spec import System
    from ..io import write_atomic
    from ..ir.graph import Workload, op_costs
    from ..ir.llm import build_llm_graph
    from ..plan.plan import stage_positions
    from ..quant.formats import PRECISION_BYTES, get_format
    from ..sim.perf import die_rates, op_times, roofline_s
    from ..sim.predict import shard_parts

    system = System.model_validate(plan.system)
    graph = build_llm_graph(ModelConfig.model_validate(plan.model.config))
    wl = plan.workload
    kv = PRECISION_BYTES[get_format(wl.kv_precision).precision]
    positions = stage_positions(plan.stages)
    seqs = -(-wl.batch // min(wl.batch, len(positions)))
    stages = list(enumerate(plan.stages))[:4]
    fig = Figure(figsize=(5.2 * len(stages), 4.2), dpi=110)
    colours = {"matmul": "tab:blue", "attention": "tab:red", "embedding": "tab:purple", "norm": "tab:green",
               "elementwise": "tab:olive"}
    for k, (i, st) in enumerate(stages):
        ax = fig.add_subplot(1, len(stages), k + 1)
        recipe = plan.stage_recipe(i)
        r = die_rates(system, st.die, recipe.default)
        g = graph.sharded(shard_parts(graph, st)) if st.shard else graph
        mask = np.isin(g.op_block, list(range(*st.blocks)))
        kinds = [op.kind for op, m in zip(g.ops, mask) if m]
        for w, marker, label in ((Workload.decode(wl.decode_context, seqs), "o", "decode"),
                                 (Workload.prefill(wl.prompt_tokens, 1), "x", "prefill")):
            c = op_costs(g, recipe, w, r.act_element_bytes, kv)
            comp, _ = op_times(c, r)
            t = roofline_s(comp, c.read_bytes, r.bytes_per_s)[mask]
            flop = (c.weight_flop + c.act_flop)[mask]
            rb = c.read_bytes[mask]
            keep = (flop > 0) & (rb > 0) & (t > 0)
            for kind in sorted(set(kinds)):
                sel = keep & np.array([x == kind for x in kinds])
                if sel.any():
                    ax.scatter(flop[sel] / rb[sel], flop[sel] / t[sel], marker=marker, s=18, color=colours[kind],
                               label=f"{kind} ({label})", alpha=0.7)
        xs = np.logspace(-2, 4, 200)
        ax.plot(xs, np.minimum(xs * r.bytes_per_s, r.weight_flop_per_s), color="black", lw=1.2,
                label=f"roof: {r.weight_flop_per_s / 1e12:.1f} TFLOP/s, {r.bytes_per_s / 1e9:.0f} GB/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOP per byte read")
        ax.set_ylabel("FLOP/s reached")
        ax.set_title(f"{st.die} ({r.weight_precision}), blocks {st.blocks[0]}-{st.blocks[1] - 1}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{plan.model.name} on {plan.system.get('name', '?')}: each op of a step on its die's roofline",
                 fontsize=11)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=_image_format(path)))
    return Path(path)
