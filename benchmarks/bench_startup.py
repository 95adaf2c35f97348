"""Start-up against llama.cpp: time from process start to the first generated token, same GGUF, same run.

Run: python benchmarks/bench_startup.py [--repeats N] [--cold-repeats N]   (needs the optional extra `.[bench]`)

Each sample is a fresh process, timed by this script from spawning it until the first token arrives
(interpreter start and every import included):
- chipfuse, API rows: `api.open_device(system)` then `chat(..., max_tokens=1)`, what `chipfuse run` does
  before it streams, in a process of its own (no resident launcher).
- chipfuse, CLI rows: the `chipfuse run --max-tokens 1` command itself, until its first generated token
  is on stdout (after the plan and memory tables it prints first), with and without a resident launcher
  (`chipfuse launcher start`, started by this script before the rounds if none is up, stopped after).
- llama.cpp: `Llama(model_path, n_ctx=2048, n_threads=2)` then `create_chat_completion([user message],
  max_tokens=1, temperature=0)`: the same request through the model's chat template (the script checks both
  sides prefilled the same number of tokens).
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

from chipfuse.cli import resident
from chipfuse.frontends.model_files import cache_dir, default_gguf

PROMPT = "What is the capital of France?"
CONFIGS = (("talk-light-d2d", "1 die"), ("talk-4die-d2d", "4 dies"))
PRESETS = Path(resident.__file__).resolve().parents[1] / "hw" / "presets"
NO_LAUNCHER = {**os.environ, "CHIPFUSE_RESIDENT": "0"}
PROMPT_TOKENS: dict[str, int] = {}  # each side's prompt length after its chat template: the same request?

CHIPFUSE_DRIVER = """
import json, sys
from chipfuse.api import open_device
dev = open_device(sys.argv[1])
g = dev.chat([{"role": "user", "content": sys.argv[2]}], max_tokens=1)
list(g)
print("FIRST", json.dumps({"report": dev.startup_report(), "cache": [i["cache"] for i in dev.worker_info],
                           "prompt_tokens": len(g.req.prompt)}), flush=True)
dev.close()
"""

LLAMA_DRIVER = """
import sys
from llama_cpp import Llama
import json
llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=int(sys.argv[3]), verbose=False)
r = llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=1, temperature=0.0)
print("FIRST", json.dumps({"prompt_tokens": r["usage"]["prompt_tokens"]}), flush=True)
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


def cli_first_token_s(system: str, env: dict[str, str]) -> float:
    """Seconds from spawning `chipfuse run` until its first generated token is on stdout (the text after
    "assistant: "); the command then finishes on its own (its --probe is the preset: nothing is measured after)."""
    argv = [str(Path(sys.executable).with_name("chipfuse")), "run", "-s", system, "--max-tokens", "1", "--prompt",
            PROMPT, "--probe", str(PRESETS / f"{system}.yaml")]
    mark = b"assistant: "
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env)
        seen, dt = b"", None
        while dt is None:
            chunk = p.stdout.read1(4096)
            if not chunk:
                break
            seen += chunk
            at = seen.find(mark)
            if at >= 0 and len(seen[at + len(mark):].strip()) > 0:
                dt = time.perf_counter() - t0
        p.stdout.read()
        p.wait(timeout=120)
        if dt is None or p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"chipfuse run -s {system} exited {p.returncode}:\n{err.read()[-2000:]}")
        return dt


def cold_env(tmp: Path, gguf: Path) -> dict[str, str]:
    """An empty chipfuse cache that shares only the compiled kernel, and the model file by path."""
    tmp.mkdir(parents=True)
    if (cache_dir() / "ext").exists():
        (tmp / "ext").symlink_to(cache_dir() / "ext")
    return {**os.environ, "CHIPFUSE_CACHE": str(tmp), "CHIPFUSE_SMOLLM2_GGUF": str(gguf)}


def chipfuse_sample(system: str, cold: bool, gguf: Path) -> tuple[float, dict]:
    """One start of chipfuse on `system`, checking the dies found (warm) or missed (cold) their cache."""
    with tempfile.TemporaryDirectory(prefix="chipfuse-cold-") as tmp:
        env = cold_env(Path(tmp) / "cache", gguf) if cold else NO_LAUNCHER
        env["CHIPFUSE_RESIDENT"] = "0"
        dt, info = first_token_s([sys.executable, "-c", CHIPFUSE_DRIVER, system, PROMPT], env)
    PROMPT_TOKENS["chipfuse"] = info["prompt_tokens"]
    want = "miss" if cold else "hit"
    if any(c != want for c in info["cache"]):
        raise RuntimeError(f"{system} {'cold' if cold else 'warm'}: workers report cache {info['cache']}")
    return dt, info["report"]


def llama_cpp_sample(gguf: Path) -> float:
    dt, info = first_token_s([sys.executable, "-c", LLAMA_DRIVER, str(gguf), PROMPT, str(THREADS)])
    PROMPT_TOKENS["llama.cpp"] = info["prompt_tokens"]
    return dt


def rounds(cold: bool, repeats: int, gguf: Path, peer: list[float]) -> list[tuple]:
    """`repeats` rounds of llama.cpp then each chipfuse row, interleaved so both see the same load. Warm rounds
    also time the CLI, without and with the resident launcher."""
    kinds = ["api"] if cold else ["api", "cli", "cli+launcher"]
    times: dict[tuple, list[float]] = {(k, s): [] for k in kinds for s, _ in CONFIGS}
    reports: dict[tuple, list[dict]] = {(k, s): [] for k in kinds for s, _ in CONFIGS}
    for _ in range(repeats):
        peer.append(llama_cpp_sample(gguf))
        for kind in kinds:
            for system, _ in CONFIGS:
                if kind == "api":
                    dt, rep = chipfuse_sample(system, cold, gguf)
                    reports[kind, system].append(rep)
                else:
                    dt = cli_first_token_s(system, os.environ if kind == "cli+launcher" else NO_LAUNCHER)
                times[kind, system].append(dt)
    return [("cold" if cold else "warm", kind, label, system, times[kind, system], reports[kind, system])
            for kind in kinds for system, label in CONFIGS]


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
        first_token_s([sys.executable, "-c", CHIPFUSE_DRIVER, system, PROMPT], NO_LAUNCHER)
    launcher, started = resident.start(idle_minutes=30)
    peer_times: list[float] = []
    try:
        rows = rounds(False, a.repeats, gguf, peer_times) + rounds(True, a.cold_repeats, gguf, peer_times)
    finally:
        if started:
            resident.stop()
    if PROMPT_TOKENS["chipfuse"] != PROMPT_TOKENS["llama.cpp"]:
        raise RuntimeError(f"the two sides prefilled different prompts: {PROMPT_TOKENS} tokens")
    peer, peer_min = statistics.median(peer_times), min(peer_times)
    load_after = os.getloadavg()
    cmd = "python benchmarks/bench_startup.py" + (f" --repeats {a.repeats}" if a.repeats != 7 else "") + \
        (f" --cold-repeats {a.cold_repeats}" if a.cold_repeats != 3 else "")
    lines = [
        "## Start-up: process start to first token, SmolLM2-135M-Instruct, same GGUF, same run",
        "",
        f"Command: `{cmd}` (optional extra `.[bench]`). Each sample is a fresh process timed from its spawn to its "
        "first generated token. chipfuse \"api\": a driver doing what `chipfuse run` does before it streams "
        "(`api.open_device(system)`, then `chat(prompt, max_tokens=1)`), in a process of its own. chipfuse \"cli\": "
        "the command `chipfuse run -s SYSTEM --max-tokens 1 --probe PRESET` until its first token is on stdout (after "
        "its plan and memory tables); \"cli+launcher\": the same command with a resident launcher up (`chipfuse "
        f"launcher start`, loaded in {launcher.preload_s:.1f} s before the rounds), from which the command and its "
        "dies are forked with torch and chipfuse already imported. llama.cpp: "
        f"`Llama(model_path, n_ctx=2048, n_threads={THREADS})` then `create_chat_completion([user message], "
        f"max_tokens=1, temperature=0)`: the same request, {PROMPT_TOKENS['chipfuse']} prompt tokens after the chat "
        "template on both sides (checked). "
        "Warm: the cache a previous run left (prepared per-die weights, model config, tokenizer). Cold: an empty "
        "`CHIPFUSE_CACHE` per sample, sharing only the compiled decode kernel (built once per machine). "
        f"Samples are interleaved (llama.cpp, then each chipfuse row, per round) so both sides see the same "
        f"machine load; llama.cpp has {len(peer_times)} samples over all rounds. Load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (other processes shared the 2 cores: llama.cpp's "
        "spinning threads suffer most from that, so its minimum is shown beside the median).",
        "",
        "| start | chipfuse as | dies | system | chipfuse median s (min-max, n) | llama.cpp median s (min) | "
        "ratio of medians | ratio of minima |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for start, kind, label, system, times, _ in rows:
        med = statistics.median(times)
        lines.append(f"| {start} | {kind} | {label} | {system} | {med:.2f} ({min(times):.2f}-{max(times):.2f}, {len(times)}) | "
                     f"{peer:.2f} ({peer_min:.2f}) | {med / peer:.1f}x | {min(times) / peer_min:.1f}x |")
    lines += ["", "llama.cpp samples, s, in order: " + ", ".join(f"{t:.2f}" for t in peer_times) + "."]
    lines += ["", "Where the api rows' time goes (medians, s; host plan, dies' process start + imports until the "
              "last is ready, rendezvous, weights from cache or GGUF, compiled kernel load):", ""]
    for start, kind, label, _system, _, reports in rows:
        if reports:
            lines.append(f"- {start}, {kind}, {label}: {median_report(reports)}")
    body = "\n".join(lines) + "\n"
    if not a.no_write:
        write_section("startup-vs-llama-cpp", body)
    print(body)


if __name__ == "__main__":
    main()
