"""Start-up against llama.cpp: time from process start to the first generated token, same GGUF, same run.

Run: python benchmarks/bench_startup.py [--repeats N] [--cold-repeats N]   (needs the optional extra `.[bench]`)

Each sample is a fresh Python process, timed by this script from spawning it until it prints
that the first token arrived (interpreter start and every import included):
- chipfuse: `api.open_device(system)` then `chat(..., max_tokens=1)`, what `chipfuse run` does before it
  streams (the CLI also prints its plan and memory tables; those are not timed here).
- llama.cpp: `Llama(model_path, n_ctx=2048, n_threads=2)` then `create_completion(prompt, max_tokens=1)`.
Warm: the user's cache (prepared weights, model config, tokenizer, compiled kernel) as a previous
run left it. Cold: a fresh empty CHIPFUSE_CACHE per sample, with CHIPFUSE_SMOLLM2_GGUF pointing at
the file; only the compiled decode kernel (built once per machine, not per model) is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_runtime import THREADS
from report import write_section

from chipfuse.frontends.model_files import cache_dir, default_gguf

PROMPT = "What is the capital of France?"
CONFIGS = (("talk-light-d2d", "1 die"), ("talk-4die-d2d", "4 dies"))

CHIPFUSE_DRIVER = """
import json, sys
from chipfuse.api import open_device
dev = open_device(sys.argv[1])
g = dev.chat([{"role": "user", "content": sys.argv[2]}], max_tokens=1)
list(g)
print("FIRST", json.dumps({"report": dev.startup_report(), "cache": [i["cache"] for i in dev.worker_info]}), flush=True)
dev.close()
"""

LLAMA_DRIVER = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=int(sys.argv[3]), verbose=False)
llm.create_completion(sys.argv[2], max_tokens=1)
print("FIRST {}", flush=True)
"""


def first_token_s(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Seconds from spawning `argv` until it prints its FIRST line, and the JSON on that line."""
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty child never blocks on it
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        for line in p.stdout:
            if line.startswith("FIRST"):
                dt = time.perf_counter() - t0
                p.communicate(timeout=120)
                return dt, json.loads(line[len("FIRST"):])
        p.wait(timeout=120)
        err.seek(0)
        raise RuntimeError(f"{argv[2][:40]!r}... exited {p.returncode} before a first token:\n{err.read()[-2000:]}")


def cold_env(tmp: Path, gguf: Path) -> dict[str, str]:
    """An empty chipfuse cache that shares only the compiled kernel, and the model file by path."""
    tmp.mkdir(parents=True)
    if (cache_dir() / "ext").exists():
        (tmp / "ext").symlink_to(cache_dir() / "ext")
    return {**os.environ, "CHIPFUSE_CACHE": str(tmp), "CHIPFUSE_SMOLLM2_GGUF": str(gguf)}


def chipfuse_sample(system: str, cold: bool, gguf: Path) -> tuple[float, dict]:
    """One start of chipfuse on `system`, checking the dies found (warm) or missed (cold) their cache."""
    with tempfile.TemporaryDirectory(prefix="chipfuse-cold-") as tmp:
        env = cold_env(Path(tmp) / "cache", gguf) if cold else None
        dt, info = first_token_s([sys.executable, "-c", CHIPFUSE_DRIVER, system, PROMPT], env)
    want = "miss" if cold else "hit"
    if any(c != want for c in info["cache"]):
        raise RuntimeError(f"{system} {'cold' if cold else 'warm'}: workers report cache {info['cache']}")
    return dt, info["report"]


def llama_cpp_sample(gguf: Path) -> float:
    return first_token_s([sys.executable, "-c", LLAMA_DRIVER, str(gguf), PROMPT, str(THREADS)])[0]


def rounds(cold: bool, repeats: int, gguf: Path, peer: list[float]) -> list[tuple]:
    """`repeats` rounds of llama.cpp then each chipfuse row, interleaved so both see the same load."""
    times: dict[str, list[float]] = {s: [] for s, _ in CONFIGS}
    reports: dict[str, list[dict]] = {s: [] for s, _ in CONFIGS}
    for _ in range(repeats):
        peer.append(llama_cpp_sample(gguf))
        for system, _ in CONFIGS:
            dt, rep = chipfuse_sample(system, cold, gguf)
            times[system].append(dt)
            reports[system].append(rep)
    return [("cold" if cold else "warm", label, system, times[system], reports[system]) for system, label in CONFIGS]


def median_report(reports: list[dict]) -> str:
    keys = [k for k in reports[0] if k not in ("loaded_s", "ready_s")]
    return ", ".join(f"{k[:-2]} {statistics.median(r[k] for r in reports):.2f}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7, help="warm samples per row and llama.cpp samples")
    ap.add_argument("--cold-repeats", type=int, default=3, help="cold samples per row")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    a = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install -e '.[bench]' (see README)")
    gguf = default_gguf()
    load_before = os.getloadavg()
    for system, _ in CONFIGS:  # fill the warm cache (and build the kernel) before timing anything
        first_token_s([sys.executable, "-c", CHIPFUSE_DRIVER, system, PROMPT])
    peer_times: list[float] = []
    rows = rounds(False, a.repeats, gguf, peer_times) + rounds(True, a.cold_repeats, gguf, peer_times)
    peer, peer_min = statistics.median(peer_times), min(peer_times)
    load_after = os.getloadavg()
    cmd = "python benchmarks/bench_startup.py" + (f" --repeats {a.repeats}" if a.repeats != 7 else "") + \
        (f" --cold-repeats {a.cold_repeats}" if a.cold_repeats != 3 else "")
    lines = [
        "## Start-up: process start to first token, SmolLM2-135M-Instruct, same GGUF, same run",
        "",
        f"Command: `{cmd}` (optional extra `.[bench]`). Each sample is a fresh process timed from its spawn to its "
        "first generated token. chipfuse: a driver doing what `chipfuse run` does before it streams "
        "(`api.open_device(system)`, then `chat(prompt, max_tokens=1)`; the CLI's tables are not timed). llama.cpp: "
        f"`Llama(model_path, n_ctx=2048, n_threads={THREADS})` then `create_completion(prompt, max_tokens=1)`. "
        "Warm: the cache a previous run left (prepared per-die weights, model config, tokenizer). Cold: an empty "
        "`CHIPFUSE_CACHE` per sample, sharing only the compiled decode kernel (built once per machine). "
        f"Samples are interleaved (llama.cpp, then each chipfuse row, per round) so both sides see the same "
        f"machine load; llama.cpp has {len(peer_times)} samples over all rounds. Load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other processes shared the 2 cores: llama.cpp's "
        "spinning threads suffer most from that, so its minimum is shown beside the median).",
        "",
        "| start | dies | system | chipfuse median s (min-max, n) | llama.cpp median s (min) | ratio of medians | "
        "ratio of minima |",
        "|---|---|---|---|---|---|---|",
    ]
    for start, label, system, times, _ in rows:
        med = statistics.median(times)
        lines.append(f"| {start} | {label} | {system} | {med:.2f} ({min(times):.2f}-{max(times):.2f}, {len(times)}) | "
                     f"{peer:.2f} ({peer_min:.2f}) | {med / peer:.1f}x | {min(times) / peer_min:.1f}x |")
    lines += ["", "llama.cpp samples, s, in order: " + ", ".join(f"{t:.2f}" for t in peer_times) + "."]
    lines += ["", "Where chipfuse's time goes (medians, s; host plan, dies' process start + imports until the "
              "last is ready, rendezvous, weights from cache or GGUF, compiled kernel load):", ""]
    for start, label, _system, _, reports in rows:
        lines.append(f"- {start}, {label}: {median_report(reports)}")
    body = "\n".join(lines) + "\n"
    if not a.no_write:
        write_section("startup-vs-llama-cpp", body)
    print(body)


if __name__ == "__main__":
    main()
