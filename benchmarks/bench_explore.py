"""Design-space search speed: `chipfuse explore` over 201,600 configurations (goal: 100,000 or more in under a
minute on 2 cores), against the full planner on the same configurations, measured in the same run.

Run: python benchmarks/bench_explore.py

The sweep is the whole command as a user runs it (a fresh process: start-up, the sweep on every core, the
tables, plots and system files). The peer is the full planner (compile_plan + predict + system_cost, one
System built per configuration) timed on a random sample of the same configurations in one process; its
time for the whole space is the sample's rate times the count. The sample is also checked against the
fast core (the largest relative difference is reported).
"""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
import tempfile
import time

from report import ROOT, write_section

from chipfuse.explore.core import Core, check_against_planner
from chipfuse.explore.space import designs, load_space
from chipfuse.explore.sweep import count
from chipfuse.frontends import load_model_config

SPACE = ROOT / "examples" / "space-talk.yaml"
MODELS = ["llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b", "llama-2-7b", "llama-2-13b"]
TARGET = "decode>=10,power<=10"
REPEATS = 3
SAMPLE = 300


def main() -> None:
    sp = load_space(SPACE)
    total = count(sp, len(MODELS))
    walls = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "explore", "--space", str(SPACE), "-m",
                            ",".join(MODELS), "--target", TARGET, "--out", out], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    cfgs = {m: load_model_config(m) for m in MODELS}
    ds = designs(sp)
    rnd = random.Random(0)
    core = Core(sp)
    full_s, worst, ran = 0.0, 0.0, 0
    for _ in range(SAMPLE):
        d, m, p = rnd.choice(ds), rnd.choice(MODELS), rnd.choice(sp.precisions)
        split = rnd.choice(sp.splits_for(d.dies))
        t0 = time.perf_counter()
        ref = check_against_planner(sp, d, cfgs[m], p, split)
        full_s += time.perf_counter() - t0
        fast = core.evaluate(d, m, cfgs[m], p, split)
        if ref.ok and fast.ok:
            ran += 1
            for f in ("decode_tokens_per_s", "ttft_s", "power_w", "j_per_token", "cost_usd"):
                worst = max(worst, abs(getattr(fast, f) - getattr(ref, f)) / abs(getattr(ref, f)))
        elif ref.ok != fast.ok:
            worst = math.inf
    per_config = full_s / SAMPLE
    med = statistics.median(walls)
    body = (
        f"## Design-space search (`python benchmarks/bench_explore.py`)\n\n"
        f"`chipfuse explore --space examples/space-talk.yaml -m {','.join(MODELS)} --target \"{TARGET}\" --out DIR`: "
        f"{total:,} configurations (4,608 designs x 5 models x 5 precisions x their split modes), the whole "
        f"command in a fresh process, median of {REPEATS}.\n\n"
        "| | seconds | configurations/s | ratio |\n|---|---|---|---|\n"
        f"| chipfuse explore (fast core, all cores, tables, plots, system files) | {med:.1f} | {total / med:,.0f} | "
        f"1 |\n"
        f"| full planner, one process (from {SAMPLE} sampled configurations: {per_config * 1e3:.1f} ms each) | "
        f"{per_config * total:,.0f} (estimated) | {1 / per_config:,.0f} | {per_config * total / med:.0f}x slower |\n\n"
        f"Runs: {', '.join(f'{w:.1f} s' for w in walls)}. On the {SAMPLE} sampled configurations ({ran} of them run), "
        f"the fast core and the full planner differ by at most {worst:.1e} relative (decode, TTFT, power, energy, "
        "cost); the tests hold them to 1e-9.\n")
    write_section("explore-speed", body)
    print(body)


if __name__ == "__main__":
    main()
