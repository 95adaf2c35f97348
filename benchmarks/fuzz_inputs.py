"""Fuzz every input path on a large budget and count the outcomes per category.

    python benchmarks/fuzz_inputs.py --per-category 2500 --markdown docs/fuzzing.md

Each category (tests/fuzz/cat_*.py) mutates real inputs (every preset, every catalogue config, a
GGUF header, plans made by the compiler) and feeds them to chipfuse as the CLI does. An input is
"refused" (one clear message), "ok" (accepted, sane result), "impossible" (accepted with impossible
figures), a "traceback" (any other exception) or a "hang" (over the time limit). The goal is 0 of
the last three. Categories run in parallel processes, one per core.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fuzz is a package of the repository, not of chipfuse

def categories() -> list[str]:
    return sorted(f"tests.fuzz.{p.stem}" for p in (ROOT / "tests" / "fuzz").glob("cat_*.py"))


def run_one(module: str, n: int, timeout_s: float, seed: int) -> dict:
    from tests.fuzz import harness

    mod = importlib.import_module(module)
    t0 = time.perf_counter()
    rep = harness.run_category(mod, n, timeout_s=timeout_s, seed=seed)
    return {"name": rep.name, "counts": dict(rep.counts), "examples": rep.examples, "s": time.perf_counter() - t0}


def table(results: list[dict], command: str) -> str:
    from tests.fuzz.harness import OUTCOMES

    lines = [f"Command: `{command}`", "",
             "| category | inputs tried | " + " | ".join(OUTCOMES) + " | seconds |",
             "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|"]
    total = {o: 0 for o in OUTCOMES}
    for r in results:
        c = r["counts"]
        for o in OUTCOMES:
            total[o] += c.get(o, 0)
        lines.append(f"| {r['name']} | {sum(c.values()):,} | " + " | ".join(f"{c.get(o, 0):,}" for o in OUTCOMES)
                     + f" | {r['s']:.0f} |")
    lines.append(f"| **all** | **{sum(total.values()):,}** | " + " | ".join(f"**{total[o]:,}**" for o in OUTCOMES)
                 + " | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=2500, help="inputs per category")
    ap.add_argument("--timeout-s", type=float, default=20.0, help="an input taking longer is a hang")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", type=Path, help="write the table between fuzz markers in this file")
    a = ap.parse_args()
    mods = categories()
    command = "python benchmarks/fuzz_inputs.py " + " ".join(sys.argv[1:])
    with ProcessPoolExecutor(max_workers=min(a.jobs, len(mods))) as ex:
        futs = [ex.submit(run_one, m, a.per_category, a.timeout_s, a.seed) for m in mods]
        results = [f.result() for f in futs]
    text = table(results, command.strip())
    print(text)
    for r in results:
        for outcome, ex_list in r["examples"].items():
            print(f"\n{r['name']}: {outcome}")
            for e in ex_list:
                print("  " + e.replace("\n", "\n  "))
    if a.markdown:
        from chipfuse.io import replace_marked_block

        replace_marked_block(a.markdown, "fuzz", text)
    bad = sum(r["counts"].get(o, 0) for r in results for o in ("traceback", "hang", "impossible"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
