"""The runtime against its own plan: SmolLM2 on 1-4 emulated dies of this machine, pipeline and tensor, measured
decode and time to first token beside the performance model's prediction for the probed host spec.

Run: python benchmarks/bench_host_model.py [--tokens 64] [--repeat 3] [--no-write]

The spec is `chipfuse probe --dies 4` as a user runs it (micro-benchmarks, then its fit on runs of the embedded
model: a traced 1-die run, untraced requests on 1 and 2 dies and on a 2-die tensor group; api.hostfit), cut to n
dies (api.hostfit.resize). Each row plans the model for those n dies (the compiler's split of that kind), opens a
Device on them as `chipfuse run` does (every core per die), answers one warm-up request, then measured requests
(greedy, the chat template's prompt); the rows take TURNS turns, `--repeat` requests per row in all: their median
time to first token and decode rate (and the spread) against the plan's prediction. Warm-up is excluded from
both: the model has no first-call costs. Before each turn of a row it waits (up to a minute) for the machine to be
idle, and records how busy it was at most.
Results: BENCHMARKS.md, section "host-model".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PROMPT = "Tell me a story about a lighthouse keeper and the sea."
TURNS = 2  # each row's requests are split over this many turns through all the rows
CONTEXT = 256


def busy_fraction(dt: float = 1.0) -> float:
    """Share of this machine's CPU time spent busy over `dt` seconds (/proc/stat; 0 where it is missing)."""
    def snap() -> tuple[int, int]:
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]

    try:
        a, ia = snap()
        time.sleep(dt)
        b, ib = snap()
    except OSError:
        return 0.0
    return 1 - (ib - ia) / max(1, b - a)


def wait_quiet(limit: float = 0.1, max_wait_s: float = 60.0) -> float:
    """Wait until the machine is idle (another job's burst would be measured as the runtime's); the last figure."""
    t = time.time()
    f = busy_fraction()
    while f > limit and time.time() - t < max_wait_s:
        f = busy_fraction()
    return f


def measure(plan, tokens: int, repeat: int) -> list[tuple[float, float, int]]:
    """(TTFT s, decode tokens/s, prompt tokens) of `repeat` greedy requests after a warm-up, on the plan's dies."""
    from chipfuse.runtime.device import Device

    out = []
    with Device(plan, None) as dev:
        msgs = [{"role": "user", "content": PROMPT}]
        list(dev.chat(msgs, 4))
        for _ in range(repeat):
            g = dev.chat(msgs, tokens)
            list(g)
            # the chat call stops at the end-of-turn token: ask for exactly `tokens` by ignoring it
            if len(g.tokens) < tokens:
                g = dev.submit(list(g.req.prompt), tokens, stop_ids=set())
                list(g)
            out.append((g.ttft_s, g.decode_tokens_per_s, len(g.req.prompt)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="measured requests per row (medians reported)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    from chipfuse import api
    from chipfuse.api.hostfit import resize
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.runtime.device import resolve_model

    t0 = time.time()
    rep = api.probe(4, on_status=lambda m: print(f"probe: {m}", flush=True))
    f = rep.fit
    print(f"fit: die x{f.die_speed:.3f}, prefill eff {f.prefill_efficiency:.3f}, hop {f.hop_latency_s * 1e6:.0f} us, "
          f"host {f.host_per_token_s * 1e6:.0f} us, stage step {f.stage_overhead_s * 1e6:.0f} us, prefill step "
          f"{f.prefill_overhead_s * 1e6:.0f} us more, all-reduce "
          f"{(f.collective_latency_s or 0) * 1e6:.0f} us, time-share eff. {f.time_share_efficiency:.3f}; paired requests' "
          f"middle half: stage step {f.stage_overhead_spread_s[0] * 1e6:.0f}-{f.stage_overhead_spread_s[1] * 1e6:.0f} "
          f"us, prefill step {f.prefill_overhead_spread_s[0] * 1e6:.0f}-{f.prefill_overhead_spread_s[1] * 1e6:.0f} us",
          flush=True)
    _, cfg = resolve_model(None)
    configs = [(split, n) for split, ns in (("pipeline", (1, 2, 3, 4)), ("tensor", (2, 3, 4))) for n in ns]
    got: dict[tuple[str, int], list] = {c: [] for c in configs}
    busiest = dict.fromkeys(configs, 0.0)
    for turn in range(TURNS):  # every row in turn, TURNS times: a drift of the machine weighs on all rows alike
        for split, n in configs:
            plan = compile_plan(cfg, resize(rep.system, n), "int4", context=CONTEXT, batch=1, prompt_tokens=50,
                                split=split, output_tokens=a.tokens)
            busiest[split, n] = max(busiest[split, n], wait_quiet())
            got[split, n] += measure(plan, a.tokens, a.repeat // TURNS + (1 if turn < a.repeat % TURNS else 0))
    rows = []
    for split, n in configs:
        runs, busy = got[split, n], busiest[split, n]
        ttft = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        plan = compile_plan(cfg, resize(rep.system, n), "int4", context=CONTEXT, batch=1, prompt_tokens=runs[0][2],
                            split=split, output_tokens=a.tokens)
        p = plan.prediction
        rows.append((split, n, rate, p.decode_tokens_per_s, ttft, p.ttft_s, runs, busy))
        print(f"{split:>8} {n}: decode {rate:.1f} vs {p.decode_tokens_per_s:.1f} tokens/s "
              f"({100 * (p.decode_tokens_per_s / rate - 1):+.1f}%), TTFT {ttft * 1e3:.1f} vs {p.ttft_s * 1e3:.1f} ms "
              f"({100 * (p.ttft_s / ttft - 1):+.1f}%); runs {[(round(r[1], 1), round(r[0] * 1e3)) for r in runs]}, "
              f"machine at most {100 * busy:.0f}% busy before", flush=True)
    cores = os.cpu_count() or 1
    lines = [
        "## The runtime against its own plan: this machine, 1-4 emulated dies, measured beside predicted",
        "",
        f"Command: `python benchmarks/bench_host_model.py --repeat {a.repeat}` ({a.tokens} greedy tokens, "
        f"{a.repeat} requests per row over {TURNS} turns through all the rows, each turn's Device answering a "
        "warm-up request first; medians, the range in brackets; "
        f"{time.time() - t0:.0f} s). The spec is `chipfuse probe --dies 4` as a user runs it: its micro-benchmarks, "
        "then its fit on runs of the embedded model: a traced "
        f"1-die run for the hop ({f.hop_latency_s * 1e6:.0f} us) and the host's share ({f.host_per_token_s * 1e6:.0f} "
        f"us per token), untraced requests on 1 die for the level (decode speed x{f.die_speed:.3f} of the kernels' "
        f"streaming rate, prefill efficiency {f.prefill_efficiency:.3f}) and on 2 dies for what a pipeline stage "
        f"pays per step beyond its hop ({f.stage_overhead_s * 1e6:.0f} us) and per prefill step beyond that "
        f"({f.prefill_overhead_s * 1e6:.0f} us: the die idled through the first one's prefill), and on a 2-die "
        "tensor group for what one "
        f"all-reduce between running dies costs ({(f.collective_latency_s or 0) * 1e6:.0f} us) and the share of the "
        f"cores' time two dies computing at once put to work ({f.time_share_efficiency:.3f}); cut to n dies. Each "
        "row plans SmolLM2 "
        f"(int4) for those dies and runs it as `chipfuse run` does (each die's kernels on all {cores} cores; a tensor "
        "group's busy dies share the cores: sim/perf.core_sharing). Error = predicted / "
        "measured - 1. **The pipeline rows on 1 and 2 dies and the tensor row on 2 dies are the configurations the "
        "fit was made on** (separate requests); the 3- and 4-die rows of both kinds are predicted.",
        "",
        "| split | dies | decode measured tok/s | predicted | error | TTFT measured ms | predicted | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, n, rate, prate, ttft, pttft, runs, _ in rows:
        rates, ttfts = [r[1] for r in runs], [r[0] * 1e3 for r in runs]
        lines.append(f"| {split} | {n} | {rate:.1f} [{min(rates):.1f}-{max(rates):.1f}] | {prate:.1f} | "
                     f"{100 * (prate / rate - 1):+.1f}% | {ttft * 1e3:.1f} [{min(ttfts):.0f}-{max(ttfts):.0f}] | "
                     f"{pttft * 1e3:.1f} | {100 * (pttft / ttft - 1):+.1f}% |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not a.no_write:
        from report import write_section

        write_section("host-model", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
