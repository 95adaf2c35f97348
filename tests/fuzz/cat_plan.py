"""Fuzz category: plan JSON files, mutated from plans the compiler made for smollm2.

Each case is the bytes of a plan file: a real plan with JSON-text mutations (Infinity/NaN tokens,
huge numbers, truncation, deep nesting, non-UTF-8 bytes) or structure mutations (reversed or
missing blocks, empty stages, unknown dies, wrong types). `check` loads it and predicts it.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import strategies as st

from chipfuse.plan.plan import Plan
from chipfuse.sim.predict import predict

from .harness import bad_numbers, impossible_figures, mutate_anywhere

NAME = "plan JSON"
PRESETS = ("talk-4die-d2d", "talk-heavy-2die-pcie", "talk-light-usb")
WEIRD_TOKENS = ("Infinity", "-Infinity", "NaN", "1e400", "-1", "0", "true", "false", "null", '"12"', "[]", "{}",
                "1" + "0" * 5000, "1e-320", "-0.0", "9007199254740993", "1.5")
NUMBER = re.compile(r"(?<=: )-?\d[\d.eE+-]*")
WEIRD_VALUES = (float("inf"), float("nan"), -1, 0, 10**20, 1e300, True, None, "x", [], {}, [5, 2], [0], "die9",
                ["host", "die9"], 2**63)


@lru_cache(maxsize=8)
def _plan_texts() -> tuple[str, ...]:
    """JSON of the seed plans (built once)."""
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system

    cfg = load_model_config("smollm2")
    return tuple(compile_plan(cfg, load_system(n), context=2048).to_json() for n in PRESETS)


# --- text mutations ---------------------------------------------------------------------------------

def _number_span(text: str, rnd: random.Random) -> tuple[int, int]:
    """Where a random number is written, or the end of the text if there is none."""
    spans = [m.span() for m in NUMBER.finditer(text)]
    return rnd.choice(spans) if spans else (len(text), len(text))


def _replace_number(text: str, rnd: random.Random) -> str:
    a, b = _number_span(text, rnd)
    return text[:a] + rnd.choice(WEIRD_TOKENS) + text[b:]


def _truncate(text: str, rnd: random.Random) -> str:
    return text[:rnd.randrange(len(text) + 1)]


def _deep(text: str, rnd: random.Random) -> str:
    n = rnd.choice([20, 100, 1000, 100_000])
    a, b = _number_span(text, rnd)
    return text[:a] + "[" * n + "1" + "]" * n + text[b:]


def _top_level(text: str, rnd: random.Random) -> str:
    return rnd.choice(["[]", "[" + text + "]", "0", "null", '"plan"', "true", "", "   ", "{}", "1e999"])


def _huge(text: str, rnd: random.Random) -> str:
    return text.replace('"warnings": [', '"warnings": [' + '"x", ' * rnd.choice([1000, 3_000_000]), 1)


TEXT_MUTATIONS = (_replace_number, _replace_number, _replace_number, _truncate, _deep, _top_level, _huge)


# --- structure mutations ----------------------------------------------------------------------------

def _anywhere(d: dict, rnd: random.Random) -> None:
    mutate_anywhere(d, rnd, WEIRD_VALUES)


def _stages_op(d: dict, rnd: random.Random) -> None:
    """A pipeline-level edit: reversed blocks, no stages, an unknown die, swapped or dropped stages."""
    stages = d["stages"]
    if not isinstance(stages, list) or not stages or not all(isinstance(x, dict) for x in stages):
        return
    op = rnd.choice(["reverse", "empty", "unknown_die", "swap", "drop", "dup", "shift", "flags", "layers",
                     "route", "bytes", "workload", "config", "system", "formats", "kv", "kind", "model"])
    s = rnd.choice(stages)
    if op == "reverse":
        s["blocks"] = s["blocks"][::-1]
    elif op == "empty":
        d["stages"] = []
    elif op == "unknown_die":
        s["die"] = rnd.choice(["die9", "host", "", "usb-hub"])
    elif op == "swap" and len(stages) > 1:
        stages[0], stages[-1] = stages[-1], stages[0]
    elif op == "drop":
        stages.remove(s)
    elif op == "dup":
        stages.append(dict(s))
    elif op == "shift":
        s["blocks"] = [b + rnd.choice([-1, 1, 100]) for b in s["blocks"]]
    elif op == "flags":
        s["has_embedding"], s["has_lm_head"] = not s["has_embedding"], not s["has_lm_head"]
    elif op == "layers":
        s["layers"] = rnd.choice([None, [0, 0], [5, 2], [-1, 3]])
    elif op == "route":
        s["route_in"] = rnd.choice([[], ["nowhere"], ["host"], [s["die"], "host"]])
    elif op == "bytes":
        s[rnd.choice(["weight_bytes", "kv_bytes", "workspace_bytes", "memory_bytes"])] = rnd.choice(
            [-1, 0, 10**18, 2**64, 1.5])
    elif op == "workload":
        d["workload"][rnd.choice(["context", "batch", "prompt_tokens"])] = rnd.choice(
            [0, -5, 10**8, 1, 3000, 2**31, 10**7])
    elif op == "config":
        d["models"][0]["config"][rnd.choice(["num_layers", "hidden_size", "vocab_size", "num_heads", "head_dim",
                                         "max_position", "rope_theta"])] = rnd.choice(
            [0, 1, 7, 10**9, 2**40, -3, 1e300])
    elif op == "system":
        _anywhere(d["system"], rnd)
    else:
        _v2_op(op, d, s, rnd)


def _v2_op(op: str, d: dict, s: dict, rnd: random.Random) -> None:
    """Version-2 fields: a stage's resolved formats, the KV precision, a shard stage, a second model."""
    if op == "formats":
        fmt = rnd.choice(["int4-g32", "fp8-e4m3", "fp32", "int9", "", 5])
        s[rnd.choice(["format", "head_format"])] = fmt
        s["block_formats"] = rnd.choice([[], [[s["blocks"][0] + 1, fmt]], [[0, "int8"]], [[3, "int8"], [2, "int8"]]])
    elif op == "kv":
        d["workload"]["kv_precision"] = rnd.choice(["int8", "fp8", "float16", "bf16", "fp32", "q4"])
    elif op == "kind":
        s["kind"] = "shard"
        s["shard"] = rnd.choice([None, {"group": [s["die"]], "index": 0, "heads": [0, 9], "kv_heads": [0, 3],
                                        "mlp_columns": [0, 1536], "collective": "all-reduce"},
                                 {"group": [s["die"], "die9"], "index": 1, "heads": [0, 6], "kv_heads": [0, 2],
                                  "mlp_columns": [0, -1]}])
    elif op == "model":
        extra = dict(d["models"][0], id=rnd.choice(["m0", "m1", "", "bad id"]))
        d["models"].append(extra)
        s["model"] = rnd.choice(["m1", "m9", "m0"])


def _structure(text: str, rnd: random.Random, ops: list) -> str:
    d = json.loads(text)
    for op in ops:
        op(d, rnd)
    return json.dumps(d, indent=rnd.choice([None, 2]))  # allow_nan: writes Infinity/NaN tokens


@st.composite
def _case(draw) -> bytes:
    """One to three mutations of one kind; the mix is drawn with sampled_from, which is uniform
    (hypothesis's Random leans to its first choices)."""
    text = draw(st.sampled_from(_plan_texts()))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # Python's own draws: a replay never diverges
    kind = draw(st.sampled_from(["structure"] * 6 + ["text"] * 4))
    if kind == "structure":
        ops = draw(st.lists(st.sampled_from([_stages_op, _stages_op, _anywhere]), min_size=1, max_size=3))
        try:
            text = _structure(text, rnd, ops)
        except (KeyError, TypeError, AttributeError, ValueError):
            pass  # an earlier edit removed what a later one needs: keep the text as it is
    else:
        for mutate in draw(st.lists(st.sampled_from(TEXT_MUTATIONS), min_size=1, max_size=2)):
            text = mutate(text, rnd)
    raw = text.encode("utf-8")
    if draw(st.sampled_from([False] * 19 + [True])):
        i = rnd.randrange(len(raw) + 1)
        raw = raw[:i] + rnd.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + raw[i:]
    return raw


def strategy():
    return _case()


def _bad_prediction(pred) -> bool:
    """Non-finite or negative figures, or no decode speed."""
    return bool(bad_numbers(pred.model_dump())) or not pred.decode_tokens_per_s > 0 or not pred.ttft_s > 0


def check(case: bytes) -> str:
    """Load the plan file like the CLI, then predict it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_bytes(case)
        plan = Plan.load(path)
    pred = predict(plan)
    plan.prediction = pred
    if _bad_prediction(pred) or impossible_figures(plan):
        return "impossible"
    return "ok"
