"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEvery section is written by the command named in it; figures are from one run on one "
          "machine and are compared only within that run.\n")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(key: str, body: str) -> None:
    text = BENCH.read_text() if BENCH.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"<!-- {key}:start -->\n{body.rstrip()}\n\n_Run {stamp} on {machine()}._\n<!-- {key}:end -->"
    pat = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCH.write_text(text)


def llama_cpp_decode_rate(llm, prompt: list[int], n: int) -> float:
    """Greedy decode tokens/s of a llama_cpp.Llama over n tokens, timed from the first generated token."""
    import time

    t_first, k = None, 0
    for _tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
        k += 1
        if k == 1:
            t_first = time.perf_counter()
        if k > n:
            break
    return n / (time.perf_counter() - t_first)
