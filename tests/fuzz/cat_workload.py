"""Fuzz category: workload YAML files, mutated from a real one (a small CNN's ONNX file, a fed model and SmolLM2).

Each case is the bytes of a workload file: YAML-text mutations (weird numbers, truncation, deep nesting,
non-UTF-8 bytes, the wrong top level) or structure mutations (weird values anywhere, dropped or unknown
keys, feeds that loop or name nobody, impossible rates, huge frames). `check` places it on talk-4die-d2d
as `chipfuse place` does: a clear refusal, or a placement whose figures are all finite and non-negative.
"""

from __future__ import annotations

import copy
import random
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml
from hypothesis import strategies as st

from .harness import bad_numbers, mutate_anywhere, yaml_mutant, yaml_text_op

NAME = "workload YAML"
WEIRD_VALUES = (float("inf"), float("nan"), -1, 0, 1e-300, 10**20, 1e300, True, None, "x", [], {}, [1, 3, 0, 5],
                [1, 3, 100000, 100000], "det", "cnn", {"model": "cnn", "per_item": 0}, {"model": "chat"}, 2**63)
WEIRD_TOKENS = (".inf", ".nan", "-1", "0", "1e400", "true", "null", '"12"', "[]", "{}", "1" + "0" * 400, "~")


@lru_cache(maxsize=1)
def _base() -> str:
    """A real workload's YAML, its vision model a small CNN written once to a temporary folder."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from cv_helpers import small_cnn

    folder = Path(tempfile.mkdtemp(prefix="chipfuse-fuzz-workload-"))
    cnn = small_cnn(folder / "cnn.onnx")
    return yaml.safe_dump({"name": "fuzz", "models": [
        {"name": "cnn", "onnx": str(cnn), "frame": [1, 3, 64, 64], "precision": "int8", "rate": 30},
        {"name": "cnn2", "onnx": str(cnn), "frame": [1, 3, 32, 32], "fed_by": {"model": "cnn", "per_item": 4},
         "latency_ms": 50},
        {"name": "chat", "llm": "smollm2", "precision": "int4", "rate": 20, "prompt_tokens": 128,
         "output_tokens": 32, "batch": 2, "priority": 2}]}, sort_keys=False)


def _anywhere(d: dict, rnd: random.Random) -> None:
    mutate_anywhere(d, rnd, WEIRD_VALUES)


def _models_op(d: dict, rnd: random.Random) -> None:
    models = d["models"]
    op = rnd.choice(["loop", "self", "nobody", "dup", "empty", "many", "huge_rate", "tiny_rate", "frame", "both",
                     "neither", "precision", "prompt", "scale", "scale", "scale", "priority"])
    m = rnd.choice(models)
    if op == "scale":  # a plausible edit: another rate, another share of the feed
        if "rate" in m:
            m["rate"] = rnd.choice([0.01, 0.5, 3, 100, 5000])
        else:
            m["fed_by"]["per_item"] = rnd.choice([0.1, 1, 30])
    elif op == "priority":
        m["priority"] = rnd.choice([0.01, 1, 100])
    elif op == "loop":
        models[0]["fed_by"] = {"model": "cnn2", "per_item": 1}
        models[0].pop("rate", None)
    elif op == "self":
        m["fed_by"] = {"model": m["name"], "per_item": 1}
        m.pop("rate", None)
    elif op == "nobody":
        models[1]["fed_by"]["model"] = rnd.choice(["cnn3", "", "CNN"])
    elif op == "dup":
        models.append(copy.deepcopy(m))
    elif op == "empty":
        d["models"] = []
    elif op == "many":
        d["models"] = [{**copy.deepcopy(models[0]), "name": f"m{i}"} for i in range(rnd.choice([65, 1000]))]
    elif op == "huge_rate":
        m["rate"] = rnd.choice([1e6, 1e7, 9e6])
        m.pop("fed_by", None)
    elif op == "tiny_rate":
        m["rate"] = rnd.choice([1e-9, 1e-300, 5e-324])
        m.pop("fed_by", None)
    elif op == "frame":
        m["frame"] = rnd.choice([[1, 3, 8192, 8192], [1, 3, 1, 1], [1, 3, 2, 2], [8, 3, 64, 64], [1, 4, 64, 64]])
    elif op == "both":
        m["onnx"], m["llm"] = "ocr-det", "smollm2"
    elif op == "neither":
        m.pop("onnx", None), m.pop("llm", None)
    elif op == "precision":
        m["precision"] = rnd.choice(["int4", "fp8", "int3", "", "fp32"])
    else:
        m["prompt_tokens"], m["output_tokens"] = rnd.choice([(1, 1), (10**6, 10**6), (0, 5), (5000, 1)])


TOPS = ["[]", "0", "null", "''", "models: 5", "models: {}", "", "- 1\n- 2", "!!python/object:os.system x"]


def _text_op(text: str, rnd: random.Random) -> str:
    return yaml_text_op(text, rnd, WEIRD_TOKENS, ("rate: 30", "rate"), TOPS)


@st.composite
def _case(draw) -> bytes:
    return yaml_mutant(draw, _base(), [_models_op, _models_op, _anywhere], _text_op)


def strategy():
    return _case()


def check(case: bytes) -> str:
    """Place the workload file on talk-4die-d2d like `chipfuse place`."""
    from chipfuse import api

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.yaml"
        path.write_bytes(case)
        res = api.place(path, "talk-4die-d2d", time_limit_s=2.0)
    data = res.to_json()
    if bad_numbers(data) or not res.lam >= 0 or (res.met and any(m.served < m.demand * (1 - 1e-6) for m in res.models)):
        return "impossible"
    return "ok"
