"""Runtime speed against llama.cpp on the same GGUF, same machine, same run.

Run: python benchmarks/bench_runtime.py   (needs the optional extra: pip install -e ".[bench]")

Peer: llama-cpp-python on SmolLM2-135M-Instruct Q4_1 (layers Q4_1, embedding/head Q8_0).
chipfuse: int4-g32 asymmetric layers (the Q4_1 grid; scales and zeros held in bf16) and an int8 head,
in one process and on 1, 2 and 4 emulated dies. Both greedy, both with all cores.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from report import llama_cpp_decode_rate, write_section

from chipfuse.api import open_device
from chipfuse.frontends import load_model_config
from chipfuse.frontends.model_files import default_gguf
from chipfuse.runtime.reference import reference_model
from chipfuse.runtime.stage import Segment
from chipfuse.runtime.tokenizer import load_tokenizer

DECODE_TOKENS = 128
PREFILL_TOKENS = 512
THREADS = os.cpu_count() or 1
TEXT = ("The history of computing is a story of ideas, machines and people. " * 80)


def prompt_ids(tok, n: int) -> list[int]:
    return tok.encode(TEXT, add_special_tokens=False)[:n]


def bench_llama_cpp(path, prompt_short, prompt_long):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=THREADS, n_batch=512, verbose=False)

    def decode_rate():
        return llama_cpp_decode_rate(llm, prompt_short, DECODE_TOKENS)

    def prefill_s():
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt_long)
        return time.perf_counter() - t

    decode_rate()
    return max(decode_rate() for _ in range(3)), min(prefill_s() for _ in range(3))


def bench_single_process(path, prompt_short, prompt_long):
    torch.set_num_threads(THREADS)
    cfg = load_model_config(path)
    m = reference_model(path, cfg, "int4", "int8", context=2048)

    def decode_rate():
        m.free(0)
        logits = m.forward(torch.tensor(prompt_short), [Segment(0, 0, len(prompt_short))])
        pos = len(prompt_short)
        t = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            tok = int(logits[0].argmax())
            logits = m.forward(torch.tensor([tok]), [Segment(0, pos, 1)])
            pos += 1
        return DECODE_TOKENS / (time.perf_counter() - t)

    def prefill_s():
        m.free(0)
        t = time.perf_counter()
        m.forward(torch.tensor(prompt_long), [Segment(0, 0, len(prompt_long))])
        return time.perf_counter() - t

    decode_rate()
    return max(decode_rate() for _ in range(3)), min(prefill_s() for _ in range(3))


def bench_device(system, dies, prompt_short, prompt_long):
    with open_device(system, dies=dies, context=2048) as dev:
        rates, ttfts = [], []
        for _ in range(5):
            g = dev.submit(prompt_short, DECODE_TOKENS + 1, stop_ids=set())
            list(g)
            rates.append(g.decode_tokens_per_s)
            g = dev.submit(prompt_long, 1, stop_ids=set())
            list(g)
            ttfts.append(g.ttft_s)
        return max(rates), min(ttfts)


def main() -> None:
    path = default_gguf()
    tok = load_tokenizer(path)
    short, long = prompt_ids(tok, 16), prompt_ids(tok, PREFILL_TOKENS)
    try:
        peer = bench_llama_cpp(path, short, long)
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install -e '.[bench]' (see README)")
    rows = [("llama.cpp (llama-cpp-python 0.3.36), Q4_1 file", *peer)]
    rows.append(("chipfuse, one process (int4-g32 + int8 head)", *bench_single_process(path, short, long)))
    for system, dies, label in (("talk-medium-d2d", None, "1 die"), ("talk-heavy-2die-d2d", None, "2 dies"),
                                ("talk-4die-d2d", None, "4 dies")):
        rows.append((f"chipfuse Device, {label} ({system})", *bench_device(system, dies, short, long)))
    lines = [
        "## Runtime against llama.cpp: SmolLM2-135M-Instruct, same GGUF, same run",
        "",
        f"Command: `python benchmarks/bench_runtime.py` (optional extra `.[bench]`). Greedy, {THREADS} threads, "
        f"decode = {DECODE_TOKENS} tokens after a 16-token prompt (best of 3; Device: best of 5), prefill = one {PREFILL_TOKENS}-token "
        "prompt (best of 3; for Device: time to first token). Weight bits match: llama.cpp runs the file's Q4_1 "
        "layers and Q8_0 embedding/head; chipfuse holds int4-g32 asymmetric layers (the Q4_1 grid; the packed "
        "kernel keeps scales and zero points in bf16, so values differ from the file's by at most 2^-9 relative "
        "per scale) and an int8 head.",
        "",
        "| runtime | decode tokens/s | ratio to llama.cpp | prefill 512 s | prefill tokens/s | ratio to llama.cpp |",
        "|---|---|---|---|---|---|",
    ]
    for name, rate, pre in rows:
        lines.append(f"| {name} | {rate:.1f} | {rate / peer[0]:.2f} | {pre:.3f} | {PREFILL_TOKENS / pre:.0f} | "
                     f"{peer[1] / pre:.2f} |")
    body = "\n".join(lines) + "\n"
    write_section("runtime-vs-llama-cpp", body)
    print(body)


if __name__ == "__main__":
    main()
