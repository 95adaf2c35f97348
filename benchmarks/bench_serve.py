"""Load test: `chipfuse serve` against llama.cpp's own server on the same GGUF, machine, load and run.

Run:  python benchmarks/bench_serve.py [--requests 200] [--clients 16] [--no-write]
(needs the bench extra: pip install -e ".[bench]", which brings llama-cpp-python[server])

The load: `--requests` completions from `--clients` concurrent clients, each streaming (SSE) so the time
to first token is seen; prompts of 16-256 words and outputs of 8-96 tokens drawn from a seeded RNG, the
same list for both servers; greedy. Per server: p50 / p99 time to first token and whole-request latency,
aggregate generated tokens/s over the run (tokens counted from each stream's content chunks), 429s and
other errors. Every request has a time limit and the whole run a bound. Results: BENCHMARKS.md, "serve".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORDS = ("sea ship harbour light keeper storm wave rock island gull night lamp rope tide wind sail fish net coast "
         "cliff boat anchor mast deck crew captain map star moon dawn").split()
REQUEST_TIMEOUT_S = 300.0


def workload(n: int, seed: int = 7) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(16, 256)))
        out.append((f"Continue this list of words: {words}", rng.randint(8, 96)))
    return out


async def one(client: httpx.AsyncClient, prompt: str, max_tokens: int, model: str) -> dict:
    t0 = time.perf_counter()
    ttft, chunks, status = None, 0, 0
    try:
        async with client.stream("POST", "/v1/completions", json={"model": model, "prompt": prompt,
                                                                   "max_tokens": max_tokens, "temperature": 0,
                                                                   "stream": True}) as r:
            status = r.status_code
            if status != 200:
                await r.aread()
                return {"status": status, "latency_s": time.perf_counter() - t0}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"status": 599, "latency_s": time.perf_counter() - t0}
                text = ev["choices"][0].get("text") or ""
                if text:
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    except httpx.HTTPError:
        return {"status": 598, "latency_s": time.perf_counter() - t0}
    return {"status": status, "ttft_s": ttft, "latency_s": time.perf_counter() - t0, "tokens": chunks}


async def load(url: str, model: str, work: list[tuple[str, int]], clients: int, bound_s: float) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    results: list[dict] = []

    async def worker(client):
        while not queue.empty():
            prompt, n = queue.get_nowait()
            res = await one(client, prompt, n, model)
            if res["status"] == 429:  # honour Retry-After once, then count it
                await asyncio.sleep(1.0)
            results.append(res)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:  # pool (100) > clients
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(clients))), bound_s)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and r.get("ttft_s") is not None]

    def pct(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))

    return {"requests": len(results), "ok": len(ok), "429": sum(r["status"] == 429 for r in results),
            "errors": sum(r["status"] not in (200, 429) for r in results), "wall_s": wall,
            "tokens": sum(r["tokens"] for r in ok), "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50": pct([r["ttft_s"] for r in ok], 50), "ttft_p99": pct([r["ttft_s"] for r in ok], 99),
            "lat_p50": pct([r["latency_s"] for r in ok], 50), "lat_p99": pct([r["latency_s"] for r in ok], 99)}


def _wait_up(url: str, proc: subprocess.Popen, path: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout_s} s")


def run_server(argv: list[str], url: str, health: str, log: str):
    """Start a server with its output in `log` (a pipe nobody reads would fill and stall it)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, text=True)
    _wait_up(url, proc, health)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--system", default="talk-4die-d2d")
    ap.add_argument("--bound-s", type=float, default=1800.0)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    from chipfuse.frontends.model_files import default_gguf
    from chipfuse.runtime.executor import free_port

    gguf = str(default_gguf())
    work = workload(a.requests)
    ctx = 1024
    rows = {}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = run_server([sys.executable, "-m", "chipfuse.cli.main", "serve", "--system", a.system, "--port", str(port),
                       "--slots", str(a.slots), "--context", str(ctx), "--max-queue", "64"], url, "/health",
                      "/tmp/bench_serve.chipfuse.log")
    try:
        rows["chipfuse serve"] = asyncio.run(load(url, "smollm2", work, a.clients, a.bound_s))
    finally:
        stop(proc)
    print("chipfuse:", rows["chipfuse serve"], flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    import os

    proc = run_server([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--n_ctx", str(ctx),
                       "--n_threads", str(os.cpu_count() or 1), "--port", str(port), "--host", "127.0.0.1",
                       "--interrupt_requests", "False"],  # queue concurrent requests instead of cancelling them
                      url, "/v1/models", "/tmp/bench_serve.llama-cpp.log")
    try:
        rows["llama.cpp server"] = asyncio.run(load(url, "smollm2", work, a.clients, a.bound_s))
    finally:
        stop(proc)
    print("llama.cpp:", rows["llama.cpp server"], flush=True)
    body = _table(rows, a)
    print(body)
    if not a.no_write:
        from report import write_section

        write_section("serve", body)
    return 0


def _table(rows: dict, a) -> str:
    from report import machine

    c, ll = rows["chipfuse serve"], rows["llama.cpp server"]
    lines = [f"## Serving under load (`python benchmarks/bench_serve.py --requests {a.requests} --clients {a.clients}`)",
             "",
             f"{machine()}. {a.requests} streamed completions from {a.clients} concurrent clients, prompts of "
             "16-256 words, 8-96 tokens out, greedy; the same requests to each server in the same run on the same "
             f"GGUF (SmolLM2-135M-Instruct Q4_1). chipfuse: `chipfuse serve --system {a.system} --slots {a.slots}` "
             "(continuous batching over the plan's KV slots). llama.cpp: `python -m llama_cpp.server` "
             "(llama-cpp-python 0.3.36) with `--interrupt_requests False` (its default cancels a running request when "
             "the next arrives), all cores. Tokens counted from the streams' content chunks.", "",
             "| server | requests ok | 429s | other errors | aggregate tokens/s | TTFT p50 / p99 s | "
             "latency p50 / p99 s | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ok']} / {r['requests']} | {r['429']} | {r['errors']} | {r['tokens_per_s']:.1f} | "
                     f"{r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | {r['lat_p50']:.2f} / {r['lat_p99']:.2f} | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", f"Ratios chipfuse / llama.cpp: aggregate tokens/s {c['tokens_per_s'] / ll['tokens_per_s']:.2f}x, "
              f"p99 latency {c['lat_p99'] / ll['lat_p99']:.2f}x, p99 time to first token "
              f"{c['ttft_p99'] / ll['ttft_p99']:.2f}x (goal: more tokens/s and a lower p99 than llama.cpp's server)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
