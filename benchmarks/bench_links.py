"""Measured against predicted, with real links: SmolLM2 on 1-4 emulated dies, pipeline and tensor splits, over
loopback and over links shaped in network namespaces (benchmarks/netlab.py), each run beside `sim.predict`'s
figure for a system spec that describes those dies and links.

Run as root (namespaces):  python benchmarks/bench_links.py [--tokens 64] [--no-write]

The spec (`this_machine`): the emulated die is `chipfuse probe --threads 1` (one core per die, so a tensor group
of two runs at once on this machine's two cores), then fitted on ONE row, the 1-die loopback run: its measured
trace (api.measured) gives the die's decode compute, which scales the die's memory efficiency, and its link spans,
which give the runtime's per-hop latency (gloo, a process woken from its wait). Every other row is a prediction
from that spec: pipeline and tensor over 2-4 dies on loopback, and the same over namespaced hosts whose links
are shaped with tbf (rate) on a bridge. A tensor group of k dies on c cores runs each die at min(1, c / k) of
a core; the spec says so. Results: BENCHMARKS.md, section "links".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROMPT = "Tell me a story about a lighthouse keeper and the sea."
CONTEXT = 160  # prompt (~50 tokens with the chat template) + the tokens generated: KV predicted near its real size


# ---------------------------------------------------------------------- one row, in its own process
def row_main(plan_path: str, tokens: int, spawn: bool, master: str | None) -> None:
    """Start the plan's dies (or await them, spawn=False), answer PROMPT for `tokens` tokens, print the figures."""
    from chipfuse.api.measured import measured_trace
    from chipfuse.plan.plan import Plan
    from chipfuse.runtime.device import Device

    plan = Plan.model_validate_json(Path(plan_path).read_text())
    with Device(plan, None, threads=1, spawn=spawn, master=master, trace=True, startup_timeout_s=120) as dev:
        ids = dev.chat_ids([{"role": "user", "content": PROMPT}])
        # sampled, not greedy: the last die sends its logits to the host, as the model charges (a greedy run would
        # send one token id; see the notes under the table)
        warm = dev.submit(ids, 4, stop_ids=set(), temperature=0.7, seed=1)
        list(warm)
        g = dev.submit(ids, tokens, stop_ids=set(), temperature=0.7, seed=1)
        list(g)
        rec = dev.recording()
    tr = measured_trace(plan, rec)
    dies = {}
    for st in plan.stages:
        dies[st.die] = sum(s.dur_s for s in tr.decode.track_spans(st.die) if s.kind == "compute")
    links = sum(s.dur_s for s in tr.decode.spans if s.kind == "transfer" and " -> " in s.track)
    hops = sum(1 for s in tr.decode.spans if s.kind == "transfer" and " -> " in s.track)
    colls = [s for s in tr.decode.spans if s.track.startswith("all-reduce")]
    print(json.dumps({"decode_tokens_per_s": g.decode_tokens_per_s, "step_s": tr.decode.length_s,
                      "collective_s": sum(s.dur_s for s in colls), "collectives": len(colls),
                      "die_compute_s": dies, "link_s": links, "hops": hops, "shares": dict(tr.decode.shares),
                      "prompt_tokens": len(ids)}), flush=True)


def run_row(plan, tokens: int, lab=None, tries: int = 2) -> dict:
    """`_run_row`, once more if the first attempt fails (a rendezvous in fresh namespaces can)."""
    for k in range(tries):
        try:
            return _run_row(plan, tokens, lab)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if k + 1 == tries:
                raise
            print(f"  retrying: {e}", flush=True)
    raise AssertionError


def _run_row(plan, tokens: int, lab=None) -> dict:
    """One configuration: on loopback (lab None) or with every die on its own namespaced host of `lab`."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(plan.model_dump_json(by_alias=True))
    try:
        argv = [sys.executable, str(Path(__file__)), "_row", f.name, "--tokens", str(tokens)]
        if lab is None:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        else:
            from chipfuse.runtime.executor import free_port

            master = f"{lab.addr(0)}:{free_port()}"
            host = lab.run(0, [*argv, "--master", master], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            world = len(plan.stages) + 1
            for k in range(1, world):
                lab.run(k, [sys.executable, "-m", "chipfuse.runtime.worker", "--rank", str(k), "--world", str(world),
                            "--master", master, "--timeout", "120"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, env={"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "3000"})
            so, se = host.communicate(timeout=600)
            out = subprocess.CompletedProcess(argv, host.returncode, so, se)
        if out.returncode:
            Path("/tmp/bench_links.last-failure.log").write_text(f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}")
            raise RuntimeError(f"row failed: {out.stderr.strip().splitlines()[-3:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(f.name)


# ---------------------------------------------------------------------- the spec
def this_machine(n: int, die: dict, hop_s: float, host_s: float, rate_gbps: float | None = None,
                 concurrent: int = 1):
    """n emulated dies, every pair and each die with the host joined by a link of the fitted hop latency (and
    `rate_gbps` when shaped, else loopback's measured rate); `concurrent` dies running at once share the cores."""
    from chipfuse.hw.load import parse_system

    cores = os.cpu_count() or 1
    share = min(1.0, cores / concurrent)
    dt = json.loads(json.dumps(die))
    dt["memory"]["own"]["efficiency"] = round(dt["memory"]["own"]["efficiency"] * share, 4)
    dt["tops"] = {k: v * share for k, v in dt["tops"].items()}
    names = [f"die{i}" for i in range(n)]
    bw = rate_gbps if rate_gbps else die["_hop_gbps"]
    dt.pop("_hop_gbps", None)

    def link(a, b):
        return {"between": [a, b], "kind": "d2d-pcb", "bandwidth_gb_per_s": bw, "efficiency": 1.0,
                "latency_us": round(hop_s * 1e6, 2)}

    data = {"name": f"this-machine-{n}", "description": "emulated dies on this machine (bench_links.py)",
            "host": {"name": "host", "cpu": {"cores": cores, "core_type": "host", "freq_ghz": 1.0, "gflops_fp32": 50},
                     "dram": {"type": "DDR5", "bus_width_bits": 64, "data_rate_mtps": 4800, "capacity_gib": 16,
                              "bandwidth_gb_per_s": 20, "efficiency": 1.0},
                     "reserved_gib": 1.0, "ports": [{"kind": "d2d", "count": 2 * n}], "overhead_per_token_s": host_s},
            "die_types": {"emulated": dt}, "dies": [{"name": d, "type": "emulated"} for d in names],
            "links": [link("host", d) for d in names] + [link(a, b) for i, a in enumerate(names) for b in names[i + 1:]],
            "sources": {"die_types": "chipfuse probe (1 thread), fitted on the 1-die loopback run",
                        "links": "fitted on the 1-die loopback run; shaped rate from tc tbf"}}
    return parse_system(data, "bench_links")


def plan_for(system, split: str):
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.runtime.device import resolve_model

    _, cfg = resolve_model(None)
    return compile_plan(cfg, system, "int4", context=CONTEXT, batch=1, prompt_tokens=48, split=split)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rates", default="1000,100", help="shaped link rates in Mbit/s")
    a = ap.parse_args()
    from chipfuse.runtime.probe import probe

    t0 = time.time()
    base, fig = probe(["die0"], threads=1)
    die = base.model_dump(mode="json", exclude_none=True)["die_types"]["emulated"]
    die["_hop_gbps"] = round(fig["hop_gb_per_s"], 3)
    print(f"probe (1 thread): {fig['int4_kernel_gb_per_s']:.1f} GB/s int4 kernel, hop {fig['hop_latency_s'] * 1e6:.0f} us",
          flush=True)
    # fit on the 1-die loopback run: die speed from its compute spans, hop latency from its link spans
    sys1 = this_machine(1, die, fig["hop_latency_s"], 2e-4)
    p1 = plan_for(sys1, "pipeline")
    m1 = run_row(p1, a.tokens)
    pred_compute = p1.prediction.stages[0].decode_s
    scale = pred_compute / m1["die_compute_s"]["die0"]
    die["memory"]["own"]["efficiency"] = round(die["memory"]["own"]["efficiency"] * scale, 4)
    die["tops"] = {k: v * scale for k, v in die["tops"].items()}
    die["op_overhead_s"] = die.get("op_overhead_s", 0) * scale
    hop_s = m1["link_s"] / max(1, m1["hops"])
    host_s = max(0.0, m1["step_s"] - m1["die_compute_s"]["die0"] - m1["link_s"])
    print(f"fitted: die speed x{scale:.3f}, hop {hop_s * 1e6:.0f} us, host {host_s * 1e6:.0f} us", flush=True)

    configs = [("loopback", None, "pipeline", n) for n in (1, 2, 3, 4)]
    configs += [("loopback", None, "tensor", n) for n in (2, 3, 4)]
    rates = [float(r) for r in a.rates.split(",") if r]
    configs += [(f"{r:g} Mbit/s", r, split, n) for r in rates for split, n in
                (("pipeline", 2), ("pipeline", 4), ("tensor", 2))]
    rows = []
    for links, rate, split, n in configs:
        bw = rate / 8000 if rate else None
        plan = plan_for(this_machine(n, die, hop_s, host_s, bw), split)
        group = max(len(pos) for pos in _positions(plan))
        if group > 1:  # the group's dies run at once: describe them sharing the cores, and plan again
            plan = plan_for(this_machine(n, die, hop_s, host_s, bw, concurrent=group), split)
        if rate is None:
            m = run_row(plan, a.tokens)
        else:
            from netlab import Lab

            with Lab(n + 1, rate_mbit=rate) as lab:
                m = run_row(plan, a.tokens, lab)
        pred = plan.prediction.decode_tokens_per_s
        err = (pred - m["decode_tokens_per_s"]) / m["decode_tokens_per_s"]
        shape = " → ".join("+".join(st.die for _, st in pos) for pos in _positions(plan))
        group = max(len(pos) for pos in _positions(plan))
        rows.append((links, split, n, shape, m["decode_tokens_per_s"], pred, err, m, plan, group))
        print(f"{links:>12} {split:>8} {n} dies [{shape}]: measured {m['decode_tokens_per_s']:.1f} tok/s, "
              f"predicted {pred:.1f} ({100 * err:+.1f}%)", flush=True)
    body = _table(rows, fig, scale, hop_s, host_s, a.tokens, time.time() - t0)
    print(body)
    if not a.no_write:
        from report import write_section

        write_section("links", body)
    return 0


def _positions(plan):
    from chipfuse.plan.plan import stage_positions

    return stage_positions(plan.stages)


def _table(rows, fig, scale, hop_s, host_s, tokens, took_s) -> str:
    from report import machine

    lines = ["## Measured against predicted, with real links (`sudo python benchmarks/bench_links.py`)", "",
             f"{machine()}; {tokens} tokens decoded per row after a warm-up request, sampled at temperature 0.7 (so "
             f"the last die sends its logits to the host, as the model charges), one die = one worker process with "
             f"one thread; took {took_s:.0f} s.",
             "The spec: `chipfuse probe` at one thread per die "
             f"(int4 kernel {fig['int4_kernel_gb_per_s']:.1f} GB/s), fitted on the **1-die loopback row only** "
             f"(its measured trace: die speed x{scale:.3f}, hop latency {hop_s * 1e6:.0f} us, host "
             f"{host_s * 1e6:.0f} us per token). Every other row is a prediction. Shaped rows: each die and the host "
             "in its own network namespace on a bridge, every veth shaped by `tc tbf` to the rate; a tensor "
             "group of k dies on this machine's cores runs each die at min(1, cores / k) of a core (in the spec).",
             "",
             "| links | split | dies | positions | measured tok/s | predicted tok/s | error |",
             "|---|---|---|---|---|---|---|"]
    cores = os.cpu_count() or 1
    for links, split, n, shape, meas, pred, err, _, _, group in rows:
        tag = " (fitted)" if (links, split, n) == ("loopback", "pipeline", 1) else ""
        tag += f" (a group of {group} on {cores} cores)" if group > cores else ""
        lines.append(f"| {links} | {split} | {n} | {shape} | {meas:.1f} | {pred:.1f} | {100 * err:+.1f}%{tag} |")
    fair = [r for r in rows[1:] if r[9] <= cores]
    pipe = [r for r in fair if r[1] == "pipeline"]
    lines += ["", f"Largest error among the predicted pipeline rows: {100 * max(abs(r[6]) for r in pipe):.1f}%; "
              f"among all predicted rows whose tensor group fits the cores: {100 * max(abs(r[6]) for r in fair):.1f}% "
              "(goal: under 15% on every row).", "",
              "Reading it:", "",
              "- **Pipelines** (one die active at a time, so each die has the machine): the spec fitted on one "
              "row predicts the others, on loopback and over shaped links, within the figure above.",
              "- **Tensor groups of 2** (both dies at once on the 2 cores, beside the host process): the model "
              f"is off by {', '.join(f'{100 * r[6]:+.0f}%' for r in rows if r[1] == 'tensor' and r[9] <= cores)} "
              "here, and these rows move by tens of percent between runs of this command. The traces below say "
              "why: a shard's compute between its all-reduces includes the compiled path's call back into Python "
              "for each all-reduce, and an exchange between two busy processes has a long tail (a die scheduled "
              "late stalls its partner for milliseconds). The spec's one latency per link, fitted on pipeline "
              "hops (a sleeping die woken), describes neither.",
              f"- **Groups larger than the cores** ({cores} here): the dies cannot all run at once and every "
              "all-reduce waits for the OS to schedule a die; the spec's core share covers their arithmetic, "
              "not those waits. Shown, not counted against the goal.",
              "- Rows sample at temperature 0.7: the model charges the last die's fp32 logits to the host, which "
              "a greedy run does not send (it sends one token id): a gap of the model, not of these rows.", "",
              "Where a decode step's time went, from each row's measured trace (`api.measured`):", "",
              "| links | split | dies | step ms measured / predicted | die compute ms (slowest die per position) | "
              "all-reduces: count, ms | hand-overs ms |",
              "|---|---|---|---|---|---|---|"]
    for links, split, n, _, _, _, _, m, plan, _ in rows:
        comp = sum(max(m["die_compute_s"][st.die] for _, st in pos) for pos in _positions(plan))
        lines.append(f"| {links} | {split} | {n} | {m['step_s'] * 1e3:.2f} / {plan.prediction.decode_step_s * 1e3:.2f} "
                     f"| {comp * 1e3:.2f} | {m['collectives']}, {m['collective_s'] * 1e3:.2f} | {m['link_s'] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_row":
        p = argparse.ArgumentParser()
        p.add_argument("plan")
        p.add_argument("--tokens", type=int, default=64)
        p.add_argument("--master", default=None)
        r = p.parse_args(sys.argv[2:])
        row_main(r.plan, r.tokens, r.master is None, r.master)
        sys.exit(0)
    sys.exit(main())
