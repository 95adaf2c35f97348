"""Fine-tuning speed: LoRA training tokens/s on 1, 2 and 4 emulated dies, beside the simulator's prediction for
the same plans and beside a plain PyTorch + peft run of the same model, data and steps (the peer), same run.

Run: python benchmarks/bench_finetune.py

This machine is probed as N dies (`chipfuse probe`, each die's kernels on cores / N threads), the plan is made
on that probed system (pipeline, FP32 base: the emulated dies compute in FP32 from the base they hold, so the
probe's FP32 rate is the one that applies), and `chipfuse finetune` trains SmolLM2-135M on the shipped
evaluation text cut into sequences of 128 tokens: rank 8 on every projection, 4 micro-batches of 2
sequences per step. The peer is transformers' LlamaForCausalLM from the same GGUF with peft's LoRA (same rank,
targets, dropout, AdamW, learning rate, sequences and steps) on every core of this machine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from report import ROOT, write_section

from chipfuse import api
from chipfuse.compile.train import TARGETS

DATA = ROOT / "src" / "chipfuse" / "quant" / "data" / "evaluation.txt"
STEPS, SEQ, MB, MBS, RANK, LR = 10, 128, 2, 4, 8, 2e-4


def ours(n: int, tmp: Path) -> tuple[api.FinetuneResult, int]:
    from chipfuse.runtime.probe import probe, save_system

    cores = os.cpu_count() or 1
    threads = max(1, cores // n)
    host, _ = probe([f"die{i}" for i in range(n)], threads=threads, train=True)
    spec_file = tmp / f"host-{n}.yaml"
    save_system(host, spec_file)
    res = api.finetune(DATA, system=str(spec_file), precision="fp32", out=tmp / f"out-{n}", steps=STEPS, seq_len=SEQ,
                       micro_batch=MB, micro_batches=MBS, rank=RANK, alpha=2 * RANK, lr=LR, val_fraction=0,
                       dies=n, threads=threads)
    return res, threads


def peer() -> float:
    """Training tokens/s of transformers + peft on the same sequences, steps and settings."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chipfuse.frontends.model_files import default_gguf
    from chipfuse.runtime.tokenizer import load_tokenizer
    from chipfuse.runtime.train_data import collate, load_dataset, step_examples

    torch.set_num_threads(os.cpu_count() or 1)
    gguf = default_gguf()
    tok = load_tokenizer(gguf)
    ds = load_dataset(DATA, tok, SEQ)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.05,
                                             target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, foreach=False)
    tokens, spent = 0, 0.0
    for k in range(STEPS):
        chosen = step_examples(ds, k, MB * MBS, 0)
        b = collate(chosen, MB, tok.eos_token_id)
        n_labels = b.n_labels
        t0 = time.perf_counter()
        for m in range(b.ids.shape[0]):
            logits = model(input_ids=b.ids[m]).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     b.labels[m][:, 1:].reshape(-1), ignore_index=-100,
                                                     reduction="sum") / n_labels
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        spent += time.perf_counter() - t0
        tokens += sum(len(e.ids) for e in chosen)
    return tokens / spent


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in (1, 2, 4):
            res, threads = ours(n, tmp)
            rows.append((n, len(res.dies), threads, res.tokens_per_s, res.predicted.tokens_per_s, res.step_s,
                         res.predicted.step_s, res.predicted.bubble, res.losses[0], res.losses[-1]))
            print(rows[-1], flush=True)
    rate_peer = peer()
    print("peer", rate_peer)
    lines = ["## Fine-tuning (LoRA) speed", "",
             "Command: `python benchmarks/bench_finetune.py`. SmolLM2-135M, rank 8 on all seven projections, "
             f"{MBS} micro-batches of {MB} x {SEQ} tokens per step, {STEPS} steps, FP32 base, on this machine probed "
             "as N dies (`chipfuse probe --train`, cores / N threads per die: autograd's training rate measured on "
             "two layers); predicted = `sim/train.py` on the same plan and probed system. Peer: transformers + peft, the same sequences, steps and settings, every core, "
             "same run.", "",
             "| dies asked | dies used | threads/die | measured tokens/s | predicted tokens/s | measured / predicted "
             "| s/step measured | s/step predicted | bubble | loss first -> last | vs peer |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for n, used, th, meas, pred, step_m, step_p, bubble, l0, l1 in rows:
        lines.append(f"| {n} | {used} | {th} | {meas:,.0f} | {pred:,.0f} | {meas / pred:.2f} | {step_m:.2f} | "
                     f"{step_p:.2f} | {bubble:.0%} | {l0:.2f} -> {l1:.2f} | {meas / rate_peer:.2f}x |")
    lines += ["", f"Peer (transformers {_version('transformers')} + peft {_version('peft')}): {rate_peer:,.0f} "
              "training tokens/s.", "",
              "Measured / predicted below 1: the probe times two layers, not the head's 49,152-way log-softmax "
              "and its gradient nor the host's part of a step; and with more dies than this machine's cores "
              f"({os.cpu_count()}) the dies take turns where the model runs them at once. The median of "
              f"measured/predicted is {statistics.median(r[3] / r[4] for r in rows):.2f}."]
    write_section("finetune", "\n".join(lines))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
