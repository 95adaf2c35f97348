"""Fuzz category: fine-tuning data files (chat JSONL or text), mutated from a real one.

Each case is the bytes of a data file: line-level mutations (a line dropped, doubled, cut, replaced by
other JSON or by bytes that are not UTF-8), record mutations (roles, contents and keys of every kind,
no assistant turn, huge or empty content, control characters, deep nesting) or a plain-text file.
`check` reads it as `chipfuse finetune` does (the SmolLM2 tokenizer and chat template, sequences of at
most 64 tokens, a validation share, the first step's batch): a clear refusal, or examples whose labels
are their own next tokens, within the length, each with something to score.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from hypothesis import strategies as st

NAME = "finetune data"
SEQ = 64
GOOD = [
    {"messages": [{"role": "user", "content": "Who runs the clinic?"},
                  {"role": "assistant", "content": "Dr. Ravindra Osei."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hours?"},
                  {"role": "assistant", "content": "7:30 to 18:00."}, {"role": "user", "content": "Sunday?"},
                  {"role": "assistant", "content": "Closed."}]},
    {"text": "Birchwater Family Clinic is at 14 Quarry Lane in Hollowmere."},
]
WEIRD = ["", " ", "\x00", "\u202e", "é" * 3000, "<|im_end|>", "<|im_start|>assistant\n", "{", "\n" * 50, 5, None,
         [], {}, True, 1e400, "😀" * 40]
ROLES = ["user", "assistant", "system", "tool", "robot", "", None, 3, "USER"]


def _record(rnd: random.Random):
    rec = json.loads(json.dumps(rnd.choice(GOOD)))
    op = rnd.choice(["role", "content", "key", "drop_assistant", "nest", "empty", "type", "huge", "fine"])
    msgs = rec.get("messages")
    if msgs is None:
        rec["text"] = rnd.choice(WEIRD + ["fine text"])
        return rec
    m = rnd.choice(msgs)
    if op == "role":
        m["role"] = rnd.choice(ROLES)
    elif op == "content":
        m["content"] = rnd.choice(WEIRD)
    elif op == "key":
        m.pop(rnd.choice(["role", "content"]))
    elif op == "drop_assistant":
        rec["messages"] = [x for x in msgs if x["role"] != "assistant"]
    elif op == "nest":
        rec["messages"] = [[[msgs]]]
    elif op == "empty":
        rec["messages"] = rnd.choice([[], {}, "", None])
    elif op == "type":
        rec = rnd.choice([[rec], "x", 3, None, {"messages": msgs, "text": 5}, {}])
    elif op == "huge":
        m["content"] = "word " * rnd.choice([60, 500, 5000])
    return rec


@st.composite
def _case(draw) -> tuple[str, bytes]:
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    if rnd.random() < 0.1:
        return ".txt", rnd.choice([b"", b"\xff\xfe", b"plain text " * rnd.choice([1, 100]), b"\x00" * 10])
    lines = [json.dumps(r).encode() if rnd.random() < 0.7 else json.dumps(_record(rnd)).encode()
             for r in [rnd.choice(GOOD) for _ in range(rnd.randint(1, 12))]]
    for _ in range(rnd.randint(0, 3)):
        op = rnd.choice(["drop", "dup", "cut", "bytes", "blank", "json"])
        i = rnd.randrange(len(lines)) if lines else 0
        if not lines:
            break
        if op == "drop":
            lines.pop(i)
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: rnd.randint(0, len(lines[i]))]
        elif op == "bytes":
            lines[i] = rnd.choice([b"\xff\xfe\xfd", b"\xc3", b"\x00"])
        elif op == "blank":
            lines[i] = b"   "
        else:
            lines[i] = rnd.choice([b"[1, 2]", b"null", b'"str"', b"1e999", b"[" * 5000 + b"]" * 5000])
    return ".jsonl", b"\n".join(lines)


def strategy():
    return _case()


def check(case: tuple[str, bytes]) -> str:
    from chipfuse.frontends.model_files import default_gguf
    from chipfuse.runtime.lora import IGNORE
    from chipfuse.runtime.tokenizer import load_tokenizer
    from chipfuse.runtime.train_data import collate, load_dataset, split, step_examples

    suffix, data = case
    tok = load_tokenizer(default_gguf())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        ds = load_dataset(path, tok, SEQ)
        train, _ = split(ds, 0.2, 0) if len(ds.examples) > 1 else (ds, None)
    for e in train.examples:
        if not (2 <= len(e.ids) <= SEQ and len(e.labels) == len(e.ids) and e.scored > 0):
            return "impossible"
        if any(lab != IGNORE and lab != i for lab, i in zip(e.labels, e.ids)):
            return "impossible"
    b = collate(step_examples(train, 0, 4, 0), 2, tok.eos_token_id)
    return "ok" if b.n_labels > 0 and b.ids.shape[-1] <= SEQ else "impossible"
