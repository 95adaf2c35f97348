"""How the CLI shows the API's results: tables and sentences, every figure with its unit and what it is for."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from ..units import GiB, MiB, fmt_bytes, fmt_duration
from .ui import console


def _table(title: str, columns, caption: str | None = None, justify: str = "right") -> Table:
    t = Table(title=title, caption=caption)
    for col in columns:
        name, just = col if isinstance(col, tuple) else (col, justify)
        t.add_column(name, justify=just, overflow="fold")
    return t


def _gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def say(text: str) -> None:
    """A line of plain text (no markup read from it: model output and paths may hold brackets)."""
    console.print(text, markup=False, highlight=False)


def full_route(plan) -> list[str]:
    """Every node a token passes, host to host, hops through the host or a switch included."""
    from ..hw.spec import HOST, System
    from ..plan.plan import stage_positions

    nodes: list[str] = []
    for pos in stage_positions(plan.stages):
        st = pos[0][1]
        path = list(st.route_in or [st.die])
        if len(pos) > 1:  # a tensor group: the input reaches all of it; shown as one node
            path[-1] = "[" + "+".join(s.die for _, s in pos) + "]"
        nodes += path if not nodes else path[1:]
    back = System.model_validate(plan.system).route_nodes(plan.stages[-1].die, HOST, 4.0)
    return nodes + back[1:]


def plan(p, title: str | None = None) -> None:
    """The plan as a table: one row per stage, with the predicted bottleneck in words (for the plan's system)."""
    pred, target, wl = p.prediction, p.system["name"], p.workload
    if "; borrowed " in str(p.system.get("description", "")):  # a device from a handful of facts (hw/quick.py)
        say(f"device: {p.system['description']}")
    t = _table(title or f"{p.model.name} on {target} at {p.precision_label}",
               [("stage", "right"), ("die", "left"), ("blocks", "left"), ("format", "left"), "weights GiB", "KV GiB",
                "used / has GiB", "decode ms", ("bound", "left")],
               caption=f"predicted for {target}; context {wl.context} x batch {wl.batch}, "
                       f"prompt {wl.prompt_tokens} tokens, KV {wl.kv_precision}"
                       + (f"; decode at position {wl.decode_context} (prompt + half of {wl.output_tokens} generated)"
                          if wl.output_tokens else ""))
    for st, sp in zip(p.stages, pred.stages if pred else [None] * len(p.stages)):
        parts = (["embed"] if st.has_embedding else []) + ([f"L{st.layers[0]}-{st.layers[1]}"] if st.layers else []) \
            + (["head"] if st.has_lm_head else [])
        if st.shard:
            parts.append(f"shard {st.shard.index + 1}/{len(st.shard.group)}: {st.shard.kv_heads[1]} KV heads, "
                         f"{st.shard.mlp_columns[1]} MLP cols")
        t.add_row(str(st.index), st.die, " + ".join(parts), st.format, _gib(st.weight_bytes), _gib(st.kv_bytes),
                  f"{_gib(st.used_bytes)} / {_gib(st.memory_bytes)}",
                  f"{sp.decode_s * 1e3:.2f}" if sp else "-", sp.bound if sp else "-")
    console.print(t)
    if p.block_formats:
        counts = Counter(f for _, f in p.block_formats)
        say("mixed precision: " + ", ".join(f"{n} layer(s) at {f}" for f, n in counts.most_common())
            + f", the rest at {p.precision}")
    route = full_route(p)
    via = sorted({n for n in route[1:-1] if n not in {st.die for st in p.stages} and not n.startswith("[")})
    say(f"route: {' -> '.join(route)}" + (f"  (passes through {', '.join(via)})" if via else ""))
    if pred:
        console.print(f"[bold]predicted on {target}:[/] fits   [bold]time to first token:[/] "
                      f"{fmt_duration(pred.ttft_s)} ({wl.prompt_tokens}-token prompt)   "
                      f"[bold]decode:[/] {pred.decode_tokens_per_s:.1f} tokens/s"
                      + (f" ({pred.decode_tokens_per_s_per_request:.1f} per request)" if wl.batch > 1 else "")
                      + f"   reads {fmt_bytes(pred.bytes_read_per_token)} per token")
        e = pred.energy
        if e is not None:
            say(f"energy: {e.j_per_token * 1e3:.1f} mJ per token ({e.compute_j_per_token * 1e3:.1f} compute, "
                f"{e.dram_j_per_token * 1e3:.1f} DRAM, {e.link_j_per_token * 1e3:.2f} links, "
                f"{e.static_j_per_token * 1e3:.1f} static); {e.power_w:.1f} W average at "
                f"{pred.decode_tokens_per_s:.1f} tokens/s, {e.peak_power_w:.1f} W peak: "
                + (f"fanless (within {e.fanless_w:g} W)" if e.fanless else f"needs a fan (over {e.fanless_w:g} W)")
                + (f"; assumed: {', '.join(e.assumed)}" if e.assumed else ""))
        sd = pred.shared_dram
        if sd is not None:
            say(f"shared DRAM: the display ({sd.display}, {sd.display_gb_per_s:.2f} GB/s) and the other masters "
                f"({sd.other_gb_per_s:g} GB/s) take the host's DRAM from the dies: "
                f"{pred.decode_tokens_per_s:.1f} tokens/s here, {sd.decode_tokens_per_s_alone:.1f} with the DRAM "
                f"to themselves, {sd.decode_tokens_per_s_4k60:.1f} with a 4K60 display")
        for sp in pred.stages:
            say(f"  - {sp.reason}")
        for n in pred.notes:
            console.print(f"  [dim]{n}[/]")
    if p.split:
        split_options(p.split)
    for w in p.warnings:
        console.print("[yellow]warning:[/] ", end="")
        say(w)


def split_options(d, top: int = 6) -> None:
    """The split the compiler chose and the best few options it weighed, fastest first."""
    key = "decode_tokens_per_s" if d.objective == "throughput" else "decode_tokens_per_s_per_request"
    fits = sorted((o for o in d.options if getattr(o, key) is not None), key=lambda o: -getattr(o, key))
    t = _table(f"split: {d.chosen} (asked for {d.requested}, by {d.objective}); {len(d.options)} options weighed",
               [("mode", "left"), ("dies", "right"), ("groups", "left"), "tokens/s"])
    for o in fits[:top]:
        t.add_row(o.mode, str(sum(len(g) for g in o.groups)), " | ".join("+".join(g) for g in o.groups),
                  f"{getattr(o, key):.1f}")
    console.print(t)
    say(f"why: {d.reason}")


def presets(systems: list[dict], models: list[dict]) -> None:
    t = _table("systems (use with --system)", ["name", "dies", "links", "memory", "GiB per die", "GB/s per die"],
               justify="left")
    for s in systems:
        t.add_row(s["name"], str(s["dies"]), ", ".join(s["links"]), "/".join(s["memory"]),
                  ", ".join(f"{x:g}" for x in s["die_memory_gib"]), ", ".join(f"{x:g}" for x in s["die_bandwidth_gb_per_s"]))
    console.print(t)
    t = _table("models (use with --model; or give a config.json or .gguf path)",
               ["name", "layers", "hidden", "heads / kv", "vocab", "tied"], justify="left")
    for m in models:
        t.add_row(m["name"], str(m["layers"]), str(m["hidden"]), f"{m['heads']} / {m['kv_heads']}", str(m["vocab"]),
                  "yes" if m["tied"] else "no")
    console.print(t)


def accuracy(rep) -> None:
    """`quantize_report`: one row per format and method, then GPTQ's gains and the per-layer table."""
    t = _table(f"accuracy of {rep.model} per format ({rep.windows} windows x {rep.window_tokens} tokens of "
               "evaluation text)", ["format", "recipe", "method", "weight MiB", "bits/weight", "perplexity",
                                    "KL vs FP32", "top-1"], caption=rep.note)
    for r in rep.rows:
        t.add_row(r.format, r.recipe, r.method, f"{r.weight_bytes / MiB:.1f}", f"{r.bits_per_weight:.2f}",
                  f"{r.perplexity:.3f}", f"{r.kl:.5f}", f"{100 * r.top1:.1f}%")
    console.print(t)
    for name, gain in rep.gptq_gains().items():
        say(f"{name}: GPTQ lowers KL by {100 * gain:.0f}% against round-to-nearest")
    if rep.sensitivity:
        st = _table(f"per-layer sensitivity at {rep.sensitivity_format} (only that layer quantized; 2 windows)",
                    ["layer", "KL vs FP32", "perplexity"])
        for e in sorted(rep.sensitivity, key=lambda e: -e.kl):
            st.add_row(str(e.layer), f"{e.kl:.5f}", f"{e.perplexity:.3f}")
        console.print(st)
    if rep.saved:
        say(f"GPTQ codes for {rep.saved_recipe} written to {rep.saved}: run them with "
            f"`chipfuse run --quantized {rep.saved}`")


def mixed(rep) -> None:
    """`mixed_precision`: the budget, the chosen formats per layer and the mixed model's measured accuracy."""
    if rep.budget_reason:
        say(rep.budget_reason)
    counts = Counter(rep.per_layer)
    say(f"mixed precision for {rep.model}: {rep.weight_bytes / MiB:.1f} MiB of {rep.budget_bytes / MiB:.1f} MiB "
        "budget; " + ", ".join(f"{n} layers at {f}" for f, n in counts.most_common()))
    say("per layer: " + " ".join(f"{i}:{f}" for i, f in enumerate(rep.per_layer)))
    m = rep.measured
    say(f"measured: perplexity {m['perplexity']:.3f}, KL {m['kl']:.5f}, top-1 {100 * m['top1']:.1f}% "
        f"(sum of per-layer KL estimates {rep.estimated_kl:.5f})")
    if rep.saved:
        say(f"GPTQ codes for {rep.recipe.name} written to {rep.saved}: run them with "
            f"`chipfuse run --quantized {rep.saved}`")
    if rep.predicted_tokens_per_s is not None:
        say(f"predicted on {rep.target_system} with this recipe: {rep.predicted_tokens_per_s:.1f} tokens/s "
            f"(target {rep.target_tokens_per_s:g})")


def memory(rows) -> None:
    t = _table("memory held by each die (measured in its worker)", ["die", "resident weights", "plan", "die DRAM",
                                                                     "load s"])
    for r in rows:
        t.add_row(r["die"], f"{r['resident_weight_bytes'] / MiB:.1f} MiB", f"{r['plan_weight_bytes'] / MiB:.1f} MiB",
                  f"{r['die_memory_bytes'] / GiB:.1f} GiB", f"{r['load_s']:.1f}")
    console.print(t)


def run_speed(res) -> None:
    """Measured on this machine beside the performance model's prediction for this machine (same plan)."""
    n = len(res.plan.stages)
    t = _table(f"speed on THIS machine ({n} emulated dies): measured vs the performance model for this host "
               "(same plan)", ["", "measured here", "predicted here", "measured / predicted"])
    for name, m, p in (("time to first token (s)", res.ttft_s, res.predicted_ttft_s),
                       ("decode tokens/s", res.decode_tokens_per_s, res.predicted_decode_tokens_per_s)):
        t.add_row(name, f"{m:.3f}" if m else "-", f"{p:.3f}" if p else "-", f"{m / p:.2f}" if m and p else "-")
    console.print(t)
    if res.note:
        say(res.note)
    console.print(f"[dim]{len(res.tokens)} tokens generated ({res.finish_reason}), prompt {res.prompt_tokens} tokens[/]")


def probe(rep) -> None:
    say(f"streaming {rep.bandwidth_gb_per_s:.1f} GB/s, int4 kernel {rep.int4_kernel_gb_per_s:.1f} GB/s; "
        f"TOPS {rep.tops}; per-layer cost {rep.layer_overhead_s * 1e6:.0f} us; "
        f"hop {rep.hop_latency_s * 1e6:.0f} us, {rep.hop_gb_per_s:.2f} GB/s")
    f = rep.fit
    if f is not None:
        say(f"fitted on runs of the embedded model ({f.prompt_tokens}-token prompt; a traced 1-die run, untraced "
            f"requests on 1 die and a 2-die pipeline): decode speed x{f.die_speed:.3f} of the "
            f"kernels' streaming rate, prefill efficiency {f.prefill_efficiency:.3f}, hop {f.hop_latency_s * 1e6:.0f} us "
            f"between processes, {f.stage_overhead_s * 1e6:.0f} us per pipeline stage step beyond it and "
            f"{f.prefill_overhead_s * 1e6:.0f} us more per prefill step, host "
            f"{f.host_per_token_s * 1e6:.0f} us per token (1 die, untraced: "
            f"{f.measured_decode_tokens_per_s:.1f} tokens/s, TTFT {fmt_duration(f.measured_ttft_s)}; the "
            f"micro-benchmarks alone predicted {f.predicted_decode_tokens_per_s_before:.1f} tokens/s, TTFT "
            f"{fmt_duration(f.predicted_ttft_s_before)})")
        if f.collective_latency_s is not None:
            say(f"on a 2-die tensor group (its decode step and time to first token together): one all-reduce "
                f"{f.collective_latency_s * 1e6:.0f} us between running dies, the cores' time-share efficiency "
                f"{f.time_share_efficiency:.3f} when the dies' threads outnumber them")
        if f.stage_overhead_spread_s != (0.0, 0.0) or f.prefill_overhead_spread_s != (0.0, 0.0):
            (s0, s1), (p0, p1) = f.stage_overhead_spread_s, f.prefill_overhead_spread_s
            say(f"the paired 1- and 2-die requests behind those medians, middle half: stage step "
                f"{s0 * 1e6:.0f}-{s1 * 1e6:.0f} us, prefill step {p0 * 1e6:.0f}-{p1 * 1e6:.0f} us more (a wide range: "
                "this machine's cost of a stage moved while it was measured, and predictions for 3 or more dies "
                "carry that)")


GANTT_WORDS = {"compute": "compute", "collective": "all-reduce", "transfer": "transfer", "host": "host", "wait": "waiting"}


def gantt(res, width: int = 60) -> None:
    """`trace`: one decode step as a text bar per die (then the links and the host), with each one's totals."""
    from ..sim.trace import GANTT_CHARS

    if res.decode_step_s <= 0:
        say(f"no decode step was recorded; the trace of the prefill ({fmt_duration(res.ttft_s)}) is in {res.path}")
        return
    source = getattr(res.trace, "source", "predicted")
    say(f"one decode step, {source} ({fmt_duration(res.decode_step_s)}), one character = "
        f"{fmt_duration(res.decode_step_s / width)}: "
        + "  ".join(f"{GANTT_CHARS[k]} {GANTT_WORDS[k]}" for k in GANTT_CHARS))
    rows = res.gantt(width)
    pad = max(len(r.label) for r in rows)
    for r in rows:
        totals = ", ".join(f"{GANTT_WORDS[k]} {fmt_duration(s)}" for k, s in r.seconds) or "idle"
        say(f"  {r.label:>{pad}} |{r.bar}| {totals}")
    say(f"bottleneck: {res.bottleneck}")
    for n in res.notes:
        console.print(f"  [dim]{n}[/]", highlight=False)
    if res.path:
        say(f"trace of the prefill ({fmt_duration(res.ttft_s)}) and this step written to {res.path} "
            f"({res.events} events): open it in https://ui.perfetto.dev or chrome://tracing")


def _shares(shares) -> str:
    """The categories taking a tenth of the step or more, largest first: "weights bandwidth 70%, link latency 16%"."""
    total = sum(s for _, s in shares) or 1.0
    big = sorted(((k, s) for k, s in shares if s >= 0.1 * total), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {100 * s / total:.0f}%" for k, s in big)


def scaling(rep) -> None:
    """`scaling`: one row per die count and split mode, with efficiency and bottleneck, then the best point."""
    base = (f"efficiency: tokens/s over k x the {rep.baseline_dies}-die figure" if rep.baseline_dies == 1 else
            f"one die does not hold the model: efficiency relative to {rep.baseline_dies} dies "
            f"(tokens/s x {rep.baseline_dies} / (k x theirs))" if rep.baseline_dies else "nothing fits")
    t = _table(f"will another die help? {rep.model} on {rep.system} at {rep.precision}",
               ["dies", ("mode", "left"), ("uses", "left"), "decode tokens/s", "efficiency",
                ("decode step goes to", "left"), ("TTFT: prefill goes to", "left")],
               caption=f"context {rep.context} x batch {rep.batch}, prompt {rep.prompt_tokens} tokens; {base}")
    last = None
    for r in rep.rows:
        if last is not None and r.dies != last:
            t.add_section()
        last = r.dies
        if r.decode_tokens_per_s is None:
            t.add_row(str(r.dies), r.mode, "-", "does not fit", "-", "-", "-")
            continue
        rate = f"{r.decode_tokens_per_s:.1f}" + (f" ({r.decode_tokens_per_s_per_request:.1f}/req)"
                                                 if rep.batch > 1 else "")
        t.add_row(str(r.dies), r.mode, " | ".join("+".join(g) for g in r.groups), rate,
                  f"{100 * r.efficiency:.0f}%" if r.efficiency is not None else "-", _shares(r.shares),
                  f"{fmt_duration(r.ttft_s)}: {r.prefill_bottleneck.split(':')[0]}")
    console.print(t)
    best = rep.best()
    if best is not None:
        say(f"fastest: {best.mode} on {best.used_dies} die(s) at {best.decode_tokens_per_s:.1f} tokens/s; "
            f"{best.bottleneck_words}")
    for n in rep.notes:
        console.print(f"  [dim]{n}[/]", highlight=False)
    if any(r.problem for r in rep.rows):
        say("'does not fit': `chipfuse plan --split MODE --dies K` says which die overflows and what would fit")


def placement(res) -> None:
    """`chipfuse place`: the models' demands and predicted rates, the deployments, the dies."""
    t = _table(f"{res.workload} on {res.system}", ["model", "asked /s", "served /s", "met"])
    for m in res.models:
        t.add_row(m.name, f"{m.demand:.4g} {m.unit}", f"{m.served:.4g}", f"{100 * m.satisfied:.0f}%")
    console.print(t)
    how = {"milp": "optimal (MILP, HiGHS)", "milp-time-limit": f"the best the MILP found in its time; no placement "
           f"meets more than {100 * res.bound:.1f}%", "greedy": f"a greedy heuristic; no placement meets more than "
           f"{100 * res.bound:.1f}% (the LP relaxation)"}.get(res.method, res.method)
    say(f"{100 * res.lam:.1f}% of every demand at once: {how}; {res.options} ways to run the models weighed in "
        f"{res.solve_s:.2f} s. Spare capacity goes to higher priorities.")
    d = _table("deployments", ["model", "how", "rate /s"], justify="left")
    for row in res.deployments:
        d.add_row(row.model, row.label, f"{row.rate:.4g} {row.unit}")
    console.print(d)
    dies = _table("dies", ["die", "busy", "models", "memory used"])
    for row in res.dies:
        mine = ", ".join(f"{m} {100 * s:.0f}%" for d2, m, s in res.die_shares if d2 == row.die and s > 5e-4)
        dies.add_row(row.die, f"{100 * row.busy:.0f}%", mine or "-",
                     f"{row.used_bytes / 2**20:.1f} of {row.memory_bytes / 2**20:.0f} MiB")
    console.print(dies)
    if res.links:
        say("busiest links: " + ", ".join(f"{a}->{b} {100 * v:.1f}%" for a, b, v in
                                            sorted(res.links, key=lambda x: -x[2])[:4]))
    units = {m.name: m.unit[:-1] for m in res.models}
    say("energy: " + ", ".join(f"{m} {j * 1e3:.3g} mJ a {units[m]}" for m, j in res.energy_j_per_item)
        + f"; power {res.power_at_demand_w:.1f} W at the demanded rates ({res.static_w:.1f} W of it static), "
          f"{res.power_at_served_w:.1f} W with every die as busy as placed: "
        + (f"fanless at the demanded rates (within {res.fanless_w:g} W)" if res.fanless else
           f"needs a fan at the demanded rates (over {res.fanless_w:g} W)"))


def workload_run(res) -> None:
    """`chipfuse run --workload`: each model's measured rate beside the placement's prediction."""
    t = _table(f"{res.workload} on {res.system}: {res.seconds:g} s at {res.load:g} x the predicted rates",
               ["model", "predicted /s", "measured /s", "measured / predicted", "latency p50 / p99", "requests",
                "skipped", "errors"])
    for r in res.rows:
        lat = "-" if r.latency_p50_s is None else f"{r.latency_p50_s:.2f} / {r.latency_p99_s:.2f} s"
        t.add_row(r.model, f"{r.predicted:.3g} {r.unit}", f"{r.measured:.3g}",
                  "-" if r.ratio is None else f"{r.ratio:.2f}", lat, str(r.requests), str(r.skipped), str(r.errors))
    console.print(t)
    say("Predicted for the system placed on; on emulated dies, measure them first (`chipfuse probe --dies N "
        "--threads 1 --out host.yaml`, then --system host.yaml) for a prediction of these dies. Skipped: arrivals "
        "not sent because every deployment of the model was full.")


def cost(bom, paths) -> None:
    """`chipfuse cost`: the bill of materials and the development paths."""
    t = _table(f"{bom.system}: bill of materials", [("item", "left"), "USD", ("source", "left")],
               caption=f"total {bom.bom_usd:.2f} USD a unit (parts in volume; no margin, no enclosure)")
    for line in bom.lines:
        t.add_row(line.item, f"{line.usd:.2f}", line.source)
    console.print(t)
    d = _table("development: the talk's three paths to a new product", [("path", "left"), "USD", "months",
                                                                       ("source", "left")])
    for p in paths:
        usd = f"{p.usd[0] / 1e6:g}M" if p.usd[0] == p.usd[1] else f"{p.usd[0] / 1e6:g}-{p.usd[1] / 1e6:g}M"
        d.add_row(p.what, usd, f"{p.months:g}", p.source)
    console.print(d)


def explore(res) -> None:
    """`chipfuse explore`: how many configurations ran and met the target, the cheapest per model, the designs
    that cover every model, the fronts' size, why the rest failed, and the files written."""
    say(f"{res.space}: {res.configurations:,} configurations in {res.seconds:.1f} s ({res.workers}); "
        f"{res.running:,} run, {res.meeting:,} meet {res.target}")
    if res.cheapest:
        t = _table("cheapest per model meeting the target", ["model", "design", "precision", "split",
                                                              "decode tok/s", "TTFT s", "power W", "cost USD"],
                   justify="left")
        for p in res.cheapest:
            t.add_row(p.model, p.design, p.precision, p.split, f"{p.decode_tokens_per_s:.1f}", f"{p.ttft_s:.2f}",
                      f"{p.power_w:.1f}" + ("" if p.fanless else " (fan)"), f"{p.cost_usd:.0f}")
        console.print(t)
    if res.covering:
        t = _table("designs meeting the target for every model", ["design", "cost USD", "slowest tok/s",
                                                                   "highest W", "precisions"], justify="left")
        for c in res.covering:
            t.add_row(c.design, f"{c.cost_usd:.0f}", f"{c.slowest_decode_tokens_per_s:.1f}",
                      f"{c.highest_power_w:.1f}", ", ".join(f"{m} {p} {x}" for m, p, x in c.precisions))
        console.print(t)
    elif res.meeting and len({p.model for p in res.cheapest}) > 1:
        say("no single design meets the target for every model")
    if res.front:
        by = {}
        for p in res.front:
            by[p.model] = by.get(p.model, 0) + 1
        say("Pareto fronts (cost, power, speed" + (", accuracy" if any(p.accuracy is not None for p in res.front)
                                                   else "") + "): " + ", ".join(f"{m} {n}" for m, n in by.items()))
    if res.compared:
        t = _table("the fastest configuration meeting the target, per option", [
            ("option", "left"), ("meet / run", "right"), ("design", "left"), ("model", "left"), ("precision", "left"),
            ("split", "left"), ("decode tok/s", "right"), ("TTFT s", "right"), ("power W", "right"),
            ("cost USD", "right")])
        for c in res.compared:
            b = c.best
            if b is None:
                t.add_row(c.option, f"0 / {c.running:,}", "none meets", "", "", "", "", "", "", "")
            else:
                t.add_row(c.option, f"{c.meeting:,} / {c.running:,}", b.design, b.model, b.precision, b.split,
                          f"{b.decode_tokens_per_s:.1f}", f"{b.ttft_s:.3f}", f"{b.power_w:.1f}", f"{b.cost_usd:.0f}")
        console.print(t)
    if res.development:
        t = _table("covering every model: development (the talk's figures; hw/cost.py)", [
            ("path", "left"), ("tape-outs", "right"), ("package respins", "right"), ("USD", "right"),
            ("months to the first", "right"), ("months per further size", "right")])
        for p in res.development:
            t.add_row(p.what, str(p.tapeouts), str(p.package_respins), f"{p.usd[0] / 1e6:.0f}-{p.usd[1] / 1e6:.0f}M",
                      f"{p.months_first:g}", f"{p.months_next:g}")
        console.print(t)
        for p in res.development:
            for line in p.designs:
                say(f"  {line}")
    if res.rejected:
        t = _table("why the others were rejected", ["configurations", "reason"], justify="left")
        for why, n in res.rejected:
            t.add_row(f"{n:,}", why)
        console.print(t)
    for f in res.files:
        say(f"written: {f}")


def train_plan(fp) -> None:
    """A fine-tuning job's memory per die (what it holds while training) and the predicted step."""
    mem, pred, spec = fp.memory, fp.prediction, fp.spec
    t = _table(f"training memory per die: LoRA rank {spec.lora.rank} on {', '.join(spec.lora.targets)}",
               [("die", "left"), "layers", "base MiB", "adapters+grads+AdamW MiB", "activations MiB",
                "in flight", "total / has MiB", "fwd+bwd ms"],
               caption=f"{spec.micro_batches} micro-batches of {spec.micro_batch} x {spec.seq_len} tokens per step"
                       f"{', activation checkpointing' if spec.checkpointing else ''}; predicted for "
                       f"{fp.plan.system['name']}: {fmt_duration(pred.step_s)} a step, {pred.tokens_per_s:,.0f} "
                       f"tokens/s, {pred.power_w:.1f} W, bubble {pred.bubble:.0%} (1F1B)")
    for d, s in zip(mem.dies, pred.dies):
        t.add_row(d.die, str(d.layers), f"{d.base_weight_bytes / MiB:,.1f}",
                  f"{(d.adapter_bytes + d.gradient_bytes + d.optimizer_bytes) / MiB:,.1f}",
                  f"{d.activation_bytes / MiB:,.1f}", str(d.in_flight),
                  f"{d.total_bytes / MiB:,.0f} / {d.memory_bytes / MiB:,.0f}",
                  f"{(s.forward_s + s.backward_s) * 1e3:.2f}")
    console.print(t)
    say(f"trainable values: {mem.trainable_values:,} (adapters in FP32; the base stays frozen at the dies' format)")


def finetune(res) -> None:
    """What a fine-tuning run did: losses, validation before and after, speed measured beside predicted."""
    first, last = res.losses[res.start_step] if len(res.losses) > res.start_step else None, res.losses[-1]
    t = _table(f"fine-tuned on {len(res.dies)} die(s): {', '.join(res.dies)}", [("what", "left"), ("value", "right")])
    t.add_row("steps", f"{res.start_step} -> {res.steps}" if res.start_step else str(res.steps))
    t.add_row("training loss (first -> last step of this run)", f"{first:.3f} -> {last:.3f}" if first is not None
              else f"{last:.3f}")
    if res.val_losses:
        before = f"{res.val_loss_before:.3f}" if res.val_loss_before is not None else "(earlier run)"
        t.add_row(f"validation loss ({res.val_examples} examples) before -> after", f"{before} -> {res.val_loss_after:.3f}")
    t.add_row("examples (train)", f"{res.train_examples:,}" + (f", {res.truncated} cut to --seq-len" if res.truncated
                                                                 else ""))
    t.add_row("tokens/s measured (this run's steps)", f"{res.tokens_per_s:,.0f}")
    t.add_row("seconds per step, median", f"{res.step_s:.2f}")
    t.add_row("whole run", fmt_duration(res.elapsed_s))
    console.print(t)
    say(f"adapters written to {res.adapter_dir} (peft's layout; resume with --resume, serve with "
        f"`chipfuse run --adapter {res.adapter_dir}`)")


def merged(m, data_note: str) -> None:
    """Where the merged model went, how to run it and, with data, whether the fine-tuning survived the merge."""
    how = ("GPTQ codes fitted on the calibration text, in " + str(m.quantized) if m.method == "gptq"
           else "rounded to nearest when the dies load it")
    say(f"merged model written to {m.folder}; at {m.precision}: {how}")
    say(f"run it: {m.run_command}")
    if m.loss_merged is None:
        return
    t = _table(f"validation loss at {m.precision} on {data_note} ({m.val_examples} examples)",
               [("model", "left"), "loss"])
    t.add_row("base, no adapter", f"{m.loss_base:.3f}")
    t.add_row("base + adapter, unmerged (what `run --adapter` serves)", f"{m.loss_adapter:.3f}")
    t.add_row(f"merged and re-quantized ({m.method})", f"{m.loss_merged:.3f}")
    console.print(t)
    if m.kept is not None:
        say(f"the merged model keeps {m.kept:.0%} of the adapter's gain in validation loss"
            + ("" if m.kept >= 0.8 else ": re-quantizing the merged weights loses much of the fine-tuning; serve "
                                        "the adapter unmerged (`chipfuse run --adapter`), merge with --method gptq "
                                        "and calibration text, or at a wider format"))
