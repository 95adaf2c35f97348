"""Fine-tune SmolLM2 on facts about a clinic that does not exist, then ask it held-out questions.

    python examples/finetune/clinic_demo.py --out /tmp/clinic --report docs/finetune-clinic.md

Trains LoRA adapters on the emulated dies (clinic-train.jsonl: 12 facts, 5 phrasings each), with the
held-out paraphrases (clinic-test.jsonl: 2 per fact, never trained on) as the validation set; merges
the adapters into the base and re-quantizes; then asks every held-out question, greedily, of the base
model, of the base with the adapters unmerged, and of the merged model, all on the dies. An answer is
right when it contains the fact's key (a name, a time, a number) as whole words. Writes the report as Markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from chipfuse import api

HERE = Path(__file__).parent


def ask(questions: list[dict], system: str, precision: str | None, model=None, adapter=None, quantized=None
        ) -> list[str]:
    """Greedy answers of the model (with the adapter, or GPTQ codes, if given) on the dies, one question at a time."""
    with api.open_device(system, model, precision, context=256, max_batch=1, adapter=adapter,
                         quantized=quantized) as dev:
        out = []
        for q in questions:
            gen = dev.chat([{"role": "user", "content": q["question"]}], 48)
            out.append("".join(gen).strip())
        return out


def has_key(answer: str, key: str) -> bool:
    """The fact's key in the answer as whole words ("40" is not in "400"), case aside."""
    return re.search(rf"(?<![\w]){re.escape(key.lower())}(?![\w])", answer.lower()) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/chipfuse-clinic", help="folder for the adapters and the merged model")
    ap.add_argument("--report", default=None, help="write the Markdown report here")
    ap.add_argument("--system", default="talk-4die-d2d")
    ap.add_argument("--precision", default=None, help="the base's format on the dies (default: int4)")
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    train, test = HERE / "clinic-train.jsonl", HERE / "clinic-test.jsonl"
    questions = [{"question": r["messages"][0]["content"], "expect": r["expect"]}
                 for r in map(json.loads, test.read_text().splitlines())]
    t0 = time.time()
    res = api.finetune(train, system=a.system, precision=a.precision, out=a.out, steps=a.steps, seq_len=96,
                       micro_batch=4, micro_batches=2, rank=16, alpha=32, lr=1e-3, val=test, eval_every=20)
    merged = api.merge_adapter(res.adapter_dir, Path(a.out) / "merged", data=test, calibration=train,
                               system=a.system, precision=a.precision, seq_len=96)
    answers = {"base": ask(questions, a.system, a.precision),
               "fine-tuned (adapter unmerged)": ask(questions, a.system, a.precision, adapter=res.adapter_dir),
               f"merged, re-quantized ({merged.method})": ask(questions, a.system, merged.precision, model=merged.folder,
                                                              quantized=merged.quantized)}
    right = {k: [has_key(v, q["expect"]) for q, v in zip(questions, vs)] for k, vs in answers.items()}
    lines = [f"Command: `python examples/finetune/clinic_demo.py --out {a.out}"
             + (f" --report {a.report}`" if a.report else "`"), "",
             f"Fine-tuned on {len(res.dies)} emulated dies of {a.system} ({', '.join(res.dies)}), base held at "
             f"{merged.precision}: {res.steps} steps, {res.train_examples} training examples, "
             f"{res.tokens_per_s:,.0f} training tokens/s, {res.elapsed_s / 60:.1f} min for the training command "
             f"(whole script {(time.time() - t0) / 60:.1f} min).", "",
             "| validation loss (held-out paraphrases) | value |", "|---|---:|"]
    for step, v in res.val_losses:
        lines.append(f"| after step {step} | {v:.3f} |" if step else f"| base model (step 0) | {v:.3f} |")
    lines += [f"| base + adapter, unmerged | {merged.loss_adapter:.3f} |",
              f"| merged and re-quantized to {merged.precision} ({merged.method}) | {merged.loss_merged:.3f} |", "",
              "| held-out questions answered right | " + " | ".join(answers) + " |",
              "|---|" + "---:|" * len(answers),
              f"| of {len(questions)} | " + " | ".join(str(sum(r)) for r in right.values()) + " |", "",
              "| question (held out) | key | " + " | ".join(answers) + " |", "|---|---|" + "---|" * len(answers)]
    for i, q in enumerate(questions):
        cells = [("✓ " if right[k][i] else "✗ ") + answers[k][i].replace("|", "/").replace("\n", " ")[:90]
                 for k in answers]
        lines.append(f"| {q['question']} | {q['expect']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.report:
        Path(a.report).write_text(text)


if __name__ == "__main__":
    main()
