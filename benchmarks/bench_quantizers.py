"""chipfuse's quantizers beside llama.cpp's on the same FP32 reference, and INT8 decode beside Q8_0.

Run: python benchmarks/bench_quantizers.py   (needs the optional extra: pip install -e ".[bench]")

1. Write the FP32 reference as a GGUF (the `gguf` package): every tensor of SmolLM2's Q4_1 file
   dequantized to F32, metadata copied.
2. Quantize it with llama.cpp (`llama_model_quantize`) to Q8_0 and Q4_K_M.
3. Perplexity of those files through llama.cpp, and of chipfuse's formats through chipfuse, on
   the same tokens of quant/data/evaluation.txt, in the same run.
   chipfuse's rows: INT8 and INT4 g64/g128 by round-to-nearest and by GPTQ, and a mixed recipe
   (GPTQ codes, one format per layer chosen by `quant.mixed.search`) within the same bits per
   weight as llama.cpp's Q4_K_M file: the "similar bits" comparison.
4. Decode tokens/s of llama.cpp on the Q8_0 file beside chipfuse's int8 runtime (same bits).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import llama_cpp_decode_rate, write_section

from chipfuse.frontends import load_model_config
from chipfuse.frontends.model_files import default_gguf
from chipfuse.quant import accuracy as acc
from chipfuse.quant.formats import Recipe, get_format
from chipfuse.quant.gptq import collect_hessians, dequantized, gptq_weights
from chipfuse.quant.mixed import search
from chipfuse.runtime.reference import reference_model
from chipfuse.runtime.stage import Segment
from chipfuse.runtime.tokenizer import load_tokenizer
from chipfuse.runtime.weights import open_weights, wanted_names

WINDOW = 512
THREADS = os.cpu_count() or 1


def write_fp32_gguf(src: Path, dst: Path) -> None:
    """Same metadata and tensor names as `src`, every tensor dequantized to F32."""
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(str(src))
    arch = str(r.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "general.file_type":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        arr = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w.add_tensor(t.name, arr.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = THREADS
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def tensor_bits_per_weight(path: Path, n_params: int) -> float:
    """Bits per weight of a GGUF file's tensor data (metadata and tokenizer left out)."""
    import gguf

    return 8 * sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors) / n_params


def llama_perplexity(path: Path, wins: list[list[int]]) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=WINDOW, n_batch=WINDOW, n_threads=THREADS, logits_all=True, verbose=False)
    nll, n = 0.0, 0
    for w in wins:
        llm.reset()
        llm.eval(w)
        logits = torch.tensor(np.array(llm.scores[: len(w)]), dtype=torch.float64)
        nll += acc.next_token_nll(torch.log_softmax(logits, -1), w)
        n += len(w) - 1
    return math.exp(nll / n)


def llama_decode_rate(path: Path, prompt: list[int], n: int = 128) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=THREADS, verbose=False)
    return max(llama_cpp_decode_rate(llm, prompt, n) for _ in range(3))


def chipfuse_decode_rate(path: Path, cfg, layer: str, head: str, prompt: list[int], n: int = 128) -> float:
    torch.set_num_threads(THREADS)
    m = reference_model(path, cfg, layer, head, context=1024)
    best = 0.0
    for _ in range(3):
        m.free(0)
        logits = m.forward(torch.tensor(prompt), [Segment(0, 0, len(prompt))])
        pos, t = len(prompt), time.perf_counter()
        for _ in range(n):
            logits = m.forward(torch.tensor([int(logits[0].argmax())]), [Segment(0, pos, 1)])
            pos += 1
        best = max(best, n / (time.perf_counter() - t))
    return best


def device_decode_rate(system: str, precision: str, prompt: list[int], n: int = 128) -> float:
    from chipfuse.api import open_device

    with open_device(system, precision=precision, context=1024) as dev:
        rates = []
        for _ in range(5):
            g = dev.submit(prompt, n + 1, stop_ids=set())
            list(g)
            rates.append(g.decode_tokens_per_s)
    return max(rates)


def main() -> None:
    import llama_cpp

    torch.set_num_threads(THREADS)
    src = default_gguf()
    cfg = load_model_config(src)
    tok = load_tokenizer(src)
    wins = acc.windows(tok, acc.shipped_text("evaluation"), WINDOW)
    tmp = Path(tempfile.mkdtemp(prefix="chipfuse-quant-bench-"))
    f32, q8, q4km = tmp / "f32.gguf", tmp / "q8_0.gguf", tmp / "q4_k_m.gguf"
    write_fp32_gguf(src, f32)
    llama_quantize(f32, q8, llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)
    llama_quantize(f32, q4km, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    n_params = acc.n_params(cfg)
    rows = []
    base_l = llama_perplexity(f32, wins)
    rows.append(("llama.cpp", "F32 (reference)", 32.0, base_l, base_l))
    for name, path in (("Q8_0", q8), ("Q4_K_M", q4km)):
        rows.append(("llama.cpp", name, tensor_bits_per_weight(path, n_params), llama_perplexity(path, wins), base_l))
    weights = open_weights(src, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    scorer = acc.Scorer(cfg, weights, wins)  # the same scoring `chipfuse quantize` uses
    base_c = scorer.score(weights)["perplexity"]
    rows.append(("chipfuse", "fp32 (reference)", 32.0, base_c, base_c))
    hess = collect_hessians(cfg, weights, acc.windows(tok, acc.shipped_text("calibration"), WINDOW))
    deq = {f: dequantized(gptq_weights(cfg, weights, hess, get_format(f)), weights)
           for f in ("int8", "int4-g64", "int4-g128")}
    for fmt in ("int8", "int4-g64", "int4-g128", "int4-g32"):
        r = Recipe.of(fmt)
        for method in ("rtn", "gptq") if fmt in deq else ("rtn",):
            ppl = scorer.score(acc.quantized_weights(weights, cfg, r, replace=deq[fmt] if method == "gptq" else None))
            rows.append(("chipfuse", f"{r.name} ({method})", 8 * acc.weight_bytes(cfg, r) / n_params,
                         ppl["perplexity"], base_c))
    budget = rows[2][2] * n_params / 8  # Q4_K_M's tensor bytes
    cands = [get_format(f) for f in ("int8", "int4-g64", "int4-g128")]
    select = acc.Scorer(cfg, weights, acc.windows(tok, acc.shipped_text("calibration"), WINDOW, limit=2))
    mixed = search(cfg, weights, scorer, cands, budget, replace=deq, select=select)  # chosen on calibration text
    rows.append(("chipfuse", f"mixed {mixed['recipe'].name} (gptq)", 8 * mixed["bytes"] / n_params,
                 mixed["measured"]["perplexity"], base_c))
    by_fmt = {f.name: [str(i) for i, n in enumerate(mixed["per_layer"]) if n == f.name] for f in cands}
    mixed_note = (f"Mixed recipe within Q4_K_M's {rows[2][2]:.2f} bits/weight (`quant.mixed.search` over "
                  "int8/int4-g64/int4-g128 GPTQ codes, per-layer KL on 2 windows of the calibration text, not the "
                  "evaluation text): "
                  + "; ".join(f"{n} for layers {', '.join(ls)}" for n, ls in by_fmt.items() if ls) + ".")
    prompt = tok.encode("The history of computing is a story of ideas, machines and people.", add_special_tokens=False)
    dec = [("llama.cpp Q8_0 file", llama_decode_rate(q8, prompt)),
           ("chipfuse int8 (one process)", chipfuse_decode_rate(src, cfg, "int8", "int8", prompt)),
           ("chipfuse Device int8, 1 die (talk-medium-d2d)", device_decode_rate("talk-medium-d2d", "int8", prompt)),
           ("chipfuse Device int8, 4 dies (talk-4die-d2d)", device_decode_rate("talk-4die-d2d", "int8", prompt))]
    lines = [
        "## Quantizers side by side with llama.cpp's, same FP32 reference, same text",
        "",
        "Command: `python benchmarks/bench_quantizers.py` (optional extra `.[bench]`). The FP32 reference GGUF is "
        "SmolLM2's Q4_1 file dequantized and written with the `gguf` package; llama.cpp quantizes it with "
        "`llama_model_quantize`. Perplexity on "
        f"{len(wins)} windows x {WINDOW} tokens of quant/data/evaluation.txt. llama.cpp's bits/weight is its file's "
        "tensor bytes over the parameter count; chipfuse's is the IR's byte count (embedding/head int8 when layers "
        "are int4). GPTQ is calibrated on quant/data/calibration.txt (other text than the evaluation). "
        "**The reference weights sit on an asymmetric INT4 g32 grid (Q4_1), so int4-g32 is lossless here and "
        "proves nothing; compare g64/g128 with Q4_K_M.**",
        "",
        "| quantizer | format | bits/weight | perplexity | increase over its FP32 |",
        "|---|---|---|---|---|",
    ]
    for who, name, bpw, ppl, base in rows:
        lines.append(f"| {who} | {name} | {bpw:.2f} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")
    lines += ["", mixed_note]
    lines += ["", "Decode at 8 bits (128 tokens, greedy, best of 3; Device: best of 5, its own decode timer; same run):", "",
              "| runtime | decode tokens/s | ratio to llama.cpp |", "|---|---|---|"]
    for name, rate in dec:
        lines.append(f"| {name} | {rate:.1f} | {rate / dec[0][1]:.2f} |")
    body = "\n".join(lines) + "\n"
    write_section("quantizers-vs-llama-cpp", body)
    print(body)


if __name__ == "__main__":
    main()
