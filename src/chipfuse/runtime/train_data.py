"""Fine-tuning data: chat JSONL (`messages`) or plain text, tokenised with the model's own template.

A chat record is rendered by the model file's chat template; only the assistant's tokens (up to and
including its end-of-turn token) are scored. The template must render each conversation prefix as a
prefix of the whole (ChatML-style templates do); a template that does not is refused rather than
scoring the wrong tokens. Plain text (`{"text": ...}` records or a .txt file) is scored everywhere
and cut into pieces of the sequence length. Sequences are drawn in a fresh order each epoch, from a
seed, so a resumed run sees the same sequences at the same step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ChipfuseError
from .lora import IGNORE, seed_of
from .trainer import Batch

ROLES = ("system", "user", "assistant", "tool")
MAX_RECORDS = 1_000_000


class DataError(ChipfuseError):
    """A training file that cannot be read as chat JSONL or text; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where not scored

    @property
    def scored(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass(frozen=True)
class Dataset:
    examples: tuple[Example, ...]
    source: str
    truncated: int = 0  # records cut to the sequence length
    dropped: int = 0  # records with nothing left to score after the cut

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.examples)


def _records(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, record) of a JSONL file, or the whole text of a .txt file as one record."""
    if not path.exists():
        raise DataError(f"{path}: no such file (give a chat JSONL file with `messages`, or plain text)")
    if path.is_dir():
        raise DataError(f"{path} is a folder: give one .jsonl or .txt file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() in (".txt", ".md"):
        return [(1, text)]
    out: list[tuple[int, dict | str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(out) >= MAX_RECORDS:
            raise DataError(f"{path}: more than {MAX_RECORDS:,} records; split the file")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno}); each line holds one record "
                            '{"messages": [{"role": "user", "content": ...}, ...]} or {"text": ...}') from None
        except RecursionError:
            raise DataError(f"{path}:{n}: nested too deeply to be a record (a record is "
                            '{"messages": [...]} or {"text": ...})') from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: a record is a JSON object with `messages` or `text`, "
                            f"found {type(rec).__name__}")
        out.append((n, rec))
    if not out:
        raise DataError(f"{path}: no records (the file is empty)")
    return out


def _messages(where: str, rec: dict) -> list[dict]:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and a string content, "
                            f"found {_brief(m)}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: no assistant message, so nothing to learn from (the loss is on the "
                        "assistant's tokens only)")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _brief(x) -> str:
    """A short rendering of a bad value for a message (never recursing into a deep one)."""
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: ..." for k in list(x)[:4]) + "}"
    if isinstance(x, list):
        return f"a list of {len(x)}"
    return repr(x)[:80]


def _chat_example(tok, where: str, msgs: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and its labels (the assistant turns only)."""
    full = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    ids = tok.encode(full, add_special_tokens=False)
    labels = [IGNORE] * len(ids)
    eos = getattr(tok, "eos_token_id", None)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=False) if i else ""
        upto = tok.apply_chat_template(msgs[: i + 1], add_generation_prompt=False, tokenize=False)
        if not (full.startswith(before) and full.startswith(upto)):
            raise DataError(f"{where}: the model's chat template does not render a conversation's first turns as "
                            "the start of the whole, so the assistant's tokens cannot be found; use plain text")
        a = len(tok.encode(before, add_special_tokens=False)) if before else 0
        b = len(tok.encode(upto, add_special_tokens=False))
        if ids[:b] != tok.encode(upto, add_special_tokens=False):
            raise DataError(f"{where}: the tokens of the conversation's start differ from those of the whole "
                            "(the template joins turns mid-token); use plain text")
        end = b
        if eos is not None and eos in ids[a:b]:
            end = a + ids[a:b].index(eos) + 1  # score the end-of-turn token, not the newline after it
        for j in range(a, end):
            labels[j] = ids[j]
    return ids, labels


def load_dataset(path: str | Path, tok, seq_len: int) -> Dataset:
    """Every record of `path` as token ids and labels, cut to `seq_len` tokens."""
    p = Path(path)
    examples, truncated, dropped = [], 0, 0
    for n, rec in _records(p):
        where = f"{p}:{n}"
        if isinstance(rec, str) or "text" in rec and "messages" not in rec:
            text = rec if isinstance(rec, str) else rec["text"]
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: `text` must be a non-empty string")
            ids = tok.encode(text, add_special_tokens=False)
            for k in range(0, len(ids), seq_len):
                piece = ids[k: k + seq_len]
                if len(piece) >= 2:
                    examples.append(Example(tuple(piece), tuple(piece)))
            continue
        if "messages" not in rec:
            raise DataError(f"{where}: a record needs `messages` (chat) or `text`; found keys "
                            f"{', '.join(sorted(rec)) or 'none'}")
        ids, labels = _chat_example(tok, where, _messages(where, rec))
        if len(ids) > seq_len:
            truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        ex = Example(tuple(ids), tuple(labels))
        if ex.scored == 0:
            dropped += 1
            continue
        examples.append(ex)
    if not examples:
        raise DataError(f"{p}: no sequence with a scored token within --seq-len {seq_len}"
                        + (f" ({dropped} records lost their assistant turns to the cut: raise --seq-len)"
                           if dropped else ""))
    return Dataset(tuple(examples), str(p), truncated, dropped)


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, validation): a seeded `fraction` of the examples held out (at least one when fraction > 0)."""
    if fraction <= 0:
        return ds, None
    if not fraction < 1:
        raise DataError(f"--val-fraction {fraction}: give a share in [0, 1)")
    n = len(ds.examples)
    k = max(1, round(n * fraction))
    if n - k < 1:
        raise DataError(f"{ds.source}: {n} example(s) is too few to hold {k} out for validation; add data, or "
                        "give --val-fraction 0 or a --val file")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of("split", seed) & 0x7FFFFFFF))
    val = {int(i) for i in order[:k]}
    train = tuple(e for i, e in enumerate(ds.examples) if i not in val)
    held = tuple(e for i, e in enumerate(ds.examples) if i in val)
    return Dataset(train, ds.source, ds.truncated, ds.dropped), Dataset(held, ds.source)


def collate(examples: list[Example], micro_batch: int, pad_id: int) -> Batch:
    """Micro-batches of `micro_batch` examples, right-padded to the longest (padding is never scored; with
    causal attention no real token sees it)."""
    t = max(len(e.ids) for e in examples)
    m = -(-len(examples) // micro_batch)
    ids = torch.full((m, micro_batch, t), pad_id, dtype=torch.int64)
    labels = torch.full((m, micro_batch, t), IGNORE, dtype=torch.int64)
    for k, e in enumerate(examples):
        ids[k // micro_batch, k % micro_batch, : len(e.ids)] = torch.tensor(e.ids)
        labels[k // micro_batch, k % micro_batch, : len(e.labels)] = torch.tensor(e.labels)
    return Batch(ids, labels)


def step_examples(ds: Dataset, step: int, per_step: int, seed: int) -> list[Example]:
    """The examples of optimiser step `step`: the stream of seeded per-epoch orders, `per_step` at a time."""
    n = len(ds.examples)
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed_of("epoch", seed, epoch) & 0x7FFFFFFF))
        out.append(ds.examples[int(order[i])])
    return out


def eval_batches(ds: Dataset, micro_batch: int, micro_batches: int, pad_id: int) -> list[Batch]:
    """The whole of `ds` in order, as batches of at most micro_batch x micro_batches sequences."""
    per = micro_batch * micro_batches
    return [collate(list(ds.examples[k: k + per]), micro_batch, pad_id) for k in range(0, len(ds.examples), per)]
