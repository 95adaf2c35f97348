"""Before/after: every benchmark run on an older commit and on the working tree, interleaved in one run.

Run: python benchmarks/before_after.py [--base REV] [--only NAME ...]   (needs the optional extra `.[bench]`)

For each benchmark the script runs the base commit's own copy (a `git worktree` of REV, its `src`
first on PYTHONPATH, writing the worktree's BENCHMARKS.md) and then this tree's (writing this
BENCHMARKS.md, so the sections are re-run too), one after the other on the same machine. It then
sets every ratio column of the two results side by side (rows matched by their leading cells) and
writes one "before-after-NAME" section per benchmark, so `--only` re-runs one and leaves the others. Ratios are to a peer measured in the same
benchmark run, so machine drift between the two runs cancels; perplexities must match exactly.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import ROOT, write_section

# name -> (script, the BENCHMARKS.md section it writes, extra arguments)
BENCHES = {
    "plan": ("bench_plan.py", "plan-speed", []),
    "runtime": ("bench_runtime.py", "runtime-vs-llama-cpp", []),
    "quantizers": ("bench_quantizers.py", "quantizers-vs-llama-cpp", []),
}
COMPARED = ("ratio", "perplexity", "increase")  # columns compared: ratios to a same-run peer, and accuracy


def section(md: Path, key: str) -> str:
    m = re.search(rf"<!-- {re.escape(key)}:start -->(.*?)<!-- {re.escape(key)}:end -->", md.read_text(), re.S)
    return m.group(1) if m else ""


def tables(text: str) -> list[tuple[list[str], dict[str, list[str]]]]:
    """Every Markdown table of a section: (header cells, {first cell: row cells})."""
    raw: list[tuple[list[str], list[list[str]]]] = []
    head: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            head = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
            raw.append((head, []))
        elif not set("".join(cells)) <= set("-: "):
            raw[-1][1].append(cells)
    out = []
    for head, rows in raw:  # a row's key: as many leading cells as make it unique (quantizer, then format)
        width = next((k for k in range(1, len(head) + 1) if len({" / ".join(r[:k]) for r in rows}) == len(rows)),
                     len(head))
        out.append((head, {" / ".join(r[:width]): r for r in rows}))
    return out


def run(script: Path, src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(script), *args], env=env, cwd=script.parent, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compare(before: str, after: str) -> list[str]:
    rows = []
    for (head, b_rows), (_, a_rows) in zip(tables(before), tables(after)):
        cols = [i for i, h in enumerate(head) if any(k in h.lower() for k in COMPARED)]
        for key, b in b_rows.items():
            a = a_rows.get(key)
            for i in cols:
                after_cell = a[i] if a and i < len(a) else "(row gone)"
                fig = head[i] if head.count(head[i]) == 1 else f"{head[i]} ({head[i - 1]})"
                rows.append(f"| {key} | {fig} | {b[i]} | {after_cell} | {_change(b[i], after_cell)} |")
        rows += [f"| {key} | (new row) | | {' / '.join(a_rows[key][i] for i in cols)} | |"
                 for key in a_rows if key not in b_rows]
    return rows


def _change(b: str, a: str) -> str:
    try:
        x, y = float(b.rstrip("%x").lstrip("+")), float(a.rstrip("%x").lstrip("+"))
    except ValueError:
        return ""
    return "same" if x == y else f"{(y - x) / abs(x) * 100:+.1f}%" if x else f"{y - x:+.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="37340d3", help="the commit to compare against (default: before Foundation v2)")
    ap.add_argument("--only", nargs="*", choices=list(BENCHES), default=list(BENCHES))
    a = ap.parse_args()
    base = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    tables_by_bench: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(wt), base], cwd=ROOT, check=True)
        try:
            for name in a.only:
                script, key, extra = BENCHES[name]
                print(f"{name}: base {base} ...", flush=True)
                tb = run(wt / "benchmarks" / script, wt / "src", extra)
                print(f"{name}: this tree ...", flush=True)
                ta = run(ROOT / "benchmarks" / script, ROOT / "src", extra)
                print(f"{name}: {tb:.0f} s / {ta:.0f} s", flush=True)
                tables_by_bench[name] = compare(section(wt / "BENCHMARKS.md", key), section(ROOT / "BENCHMARKS.md", key))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=False)
    for name, lines in tables_by_bench.items():
        write_section(f"before-after-{name}", _body(name, base, head, lines))


def _body(name: str, base: str, head: str, lines: list[str]) -> str:
    return "\n".join([
        f"## Before and after ({name}): {BENCHES[name][0]} on the base commit and on this tree, same run",
        "",
        f"Command: `python benchmarks/before_after.py --base {base} --only {name}` (optional extra `.[bench]`), run at "
        f"{head}. The benchmark ran on {base} (before Foundation v2 and the hardening) and then on this "
        f"tree, back to back; load average (1 min) at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. Ratios are to the peer measured inside the same benchmark run; perplexities are on the "
        "same tokens (SmolLM2's weights sit on the INT4 g32 asymmetric grid, so the g32 row is near lossless by "
        "construction and g64/g128 are the fair comparison). \"same\" means the identical printed figure.",
        "",
        "| row | figure | before | after | change |",
        "|---|---|---|---|---|",
        *lines,
    ]) + "\n"


if __name__ == "__main__":
    main()
