"""Fuzz category: Hugging Face config.json files, mutated from every catalogue entry's config.

Each case is the bytes of a config.json: a catalogue config with a few changes to its parsed
values (weird numbers, wrong types, deleted or added keys, a multimodal wrapper, a top level that
is not an object) or to its text (NaN/Infinity tokens, huge numbers, truncation, non-UTF-8 bytes,
deep nesting, an oversized file). `check` loads it like the CLI and compiles a plan from it.
"""

from __future__ import annotations

import copy
import json
import random
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import strategies as st

from .harness import container_of, places, plan_outcome

NAME = "config.json"

WEIRD_VALUES = (float("inf"), float("-inf"), float("nan"), 1e300, 5e-324, -1, 0, True, False, "896", [], {}, None,
                2**40, 10**30, 896.5, 0.5, 1, 3, 7, "sliding_attention", "chunked_attention", [0], [None], {"a": 1})
WEIRD_TOKENS = ("Infinity", "-Infinity", "NaN", "1e400", "-1e400", "1" + "0" * 5000, "1e300", "5e-324", "-0",
                "0", "-1", "true", "null", '"896"', "[]", "{}", "896.5", "1.0", "4096.0")
EXTRA_KEYS = ("head_dim", "num_key_value_heads", "sliding_window", "layer_types", "sliding_window_pattern",
              "use_sliding_window", "text_config", "rope_parameters", "rope_theta", "rms_norm_eps",
              "max_position_embeddings", "tie_word_embeddings", "attention_bias", "model_type")
NUMBER = re.compile(r"(?<=[:\[,] )-?\d[\d.eE+-]*")
TOP_LEVELS = ("[]", "[1, 2]", "0", "3.5", "null", '"llama"', "true", "")


@lru_cache(maxsize=1)
def _seeds() -> tuple[tuple[str, str], ...]:
    """(name, JSON text) of every catalogue entry's config: the seeds of every case."""
    from chipfuse.frontends import catalogue

    return tuple((n, json.dumps(e["config"])) for n, e in sorted(catalogue().items()))


# --- value mutations: on the parsed mapping -------------------------------------------------------

def _weird(rnd: random.Random):
    """A fresh copy of a weird value (cases must not share mutable lists or dicts)."""
    return copy.deepcopy(rnd.choice(WEIRD_VALUES))


def _mutate_value(cfg: dict, rnd: random.Random) -> dict:
    """One change to the mapping: a weird value, a deleted key, an added key or a resized list."""
    paths = [p for p, _ in places(cfg) if p]
    op = rnd.choice(["value", "value", "value", "delete", "add", "add", "resize", "scale"])
    if op == "add":
        cfg[rnd.choice(EXTRA_KEYS)] = _weird(rnd)
        return cfg
    if not paths:
        return cfg
    path = rnd.choice(paths)
    parent, key = container_of(cfg, path), path[-1]
    if op == "value":
        parent[key] = _weird(rnd)
    elif op == "delete":
        del parent[key]
    elif op == "resize" and isinstance(parent[key], list):
        parent[key] = parent[key][:rnd.randrange(len(parent[key]) + 1)] + parent[key][:rnd.choice([0, 1, 5])]
    elif op == "scale" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] = parent[key] * rnd.choice([3, 7, 1000, 10**6]) + rnd.choice([0, 1])
    return cfg


def _wrap(cfg, rnd: random.Random):
    """A multimodal wrapper around the config, or a top level that is not an object."""
    if rnd.randrange(3):
        return {"model_type": cfg.get("model_type", "gemma3") if isinstance(cfg, dict) else "gemma3",
                "text_config": rnd.choice([cfg, cfg, cfg, None, [cfg], "x"])}
    return rnd.choice([[cfg], 896, None, "config", 1.5])


# --- text mutations: str -> str ------------------------------------------------------------------

def _replace_number(text: str, rnd: random.Random) -> str:
    spans = [m.span() for m in NUMBER.finditer(text)]
    if not spans:
        return text
    a, b = rnd.choice(spans)
    return text[:a] + rnd.choice(WEIRD_TOKENS) + text[b:]


def _truncate(text: str, rnd: random.Random) -> str:
    return text[:rnd.randrange(len(text) + 1)]


def _deep_nesting(text: str, rnd: random.Random) -> str:
    n = rnd.choice([50, 999, 1000, 5000, 100_000])
    deep = rnd.choice(["[" * n + "]" * n, '{"a": ' * n + "1" + "}" * n])
    spans = [m.span() for m in NUMBER.finditer(text)]
    if not spans:
        return deep
    a, b = rnd.choice(spans)
    return text[:a] + deep + text[b:]


def _duplicate_key(text: str, rnd: random.Random) -> str:
    return text.replace("{", '{"num_hidden_layers": 2, ', 1) if text.startswith("{") else text


def _top_level(text: str, rnd: random.Random) -> str:
    return rnd.choice(TOP_LEVELS)


TEXT_MUTATIONS = (_replace_number, _replace_number, _replace_number, _truncate, _deep_nesting, _duplicate_key,
                  _top_level)


# What a case does, drawn by hypothesis (repetition sets the proportions; hypothesis' own random
# numbers lean to boundary values, so rare kinds are chosen here, not by thresholds on them).
KINDS = ("values",) * 10 + ("text",) * 6 + ("values+bytes", "text+bytes", "wrapped", "oversized")
BAD_BYTES = (b"\xff", b"\xc3\x28", b"\x80\x80", b"\xfe\xff\x00", b"\x00")


def _splice_bytes(raw: bytes, rnd: random.Random) -> bytes:
    """Insert bytes that are not UTF-8 (or a NUL) somewhere."""
    i = rnd.randrange(len(raw) + 1)
    return raw[:i] + rnd.choice(BAD_BYTES) + raw[i:]


def _mutated_values(text: str, rnd: random.Random, wrap: bool) -> str:
    cfg = json.loads(text)
    for _ in range(rnd.randint(1, 3)):
        cfg = _mutate_value(cfg, rnd)
    return json.dumps(_wrap(cfg, rnd) if wrap else cfg)


def _mutated_text(text: str, rnd: random.Random) -> str:
    for _ in range(rnd.randint(1, 2)):
        text = rnd.choice(TEXT_MUTATIONS)(text, rnd)
    return text


@st.composite
def _case(draw) -> bytes:
    _name, text = draw(st.sampled_from(_seeds()))
    kind = draw(st.sampled_from(KINDS))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # Python's own draws: a replay never diverges
    if kind.startswith("text"):
        text = _mutated_text(text, rnd)
    elif kind != "oversized":
        text = _mutated_values(text, rnd, wrap=kind == "wrapped")
    raw = text.encode("utf-8")
    if kind.endswith("+bytes"):
        raw = _splice_bytes(raw, rnd)
    if kind == "oversized":
        raw = raw + b" " * (5 << 20)  # valid JSON, over the 4 MiB bound
    return raw


def strategy():
    return _case()


def check(case: bytes) -> str:
    """Load the file like the CLI (`-m path/config.json`), then compile a plan for it."""
    from chipfuse.frontends import load_model_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed-model" / "config.json"
        path.parent.mkdir()
        path.write_bytes(case)
        cfg = load_model_config(path)
    return plan_outcome(cfg)
