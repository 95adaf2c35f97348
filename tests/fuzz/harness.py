"""Fuzz harness shared by the test suite (small budget) and benchmarks/fuzz_inputs.py (large budget).

A category module (`cat_*.py` beside this file) exposes:
  NAME: str                      -- e.g. "system YAML"
  strategy() -> SearchStrategy   -- hypothesis strategy of one mutated input (a picklable value)
  check(case) -> str             -- feeds the input to chipfuse the way the CLI does and returns
                                    "ok" (accepted, result sane), "refused" (a ChipfuseError: one
                                    clear message) or "impossible" (accepted, but the result holds
                                    impossible figures); any other exception is a traceback.
The harness runs `check` under a wall-clock alarm: an input that takes longer is a hang.
"""

from __future__ import annotations

import copy
import math
import signal
import traceback
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from chipfuse.errors import ChipfuseError

OUTCOMES = ("ok", "refused", "impossible", "traceback", "hang")


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so `except Exception` in chipfuse cannot swallow it."""


@dataclass
class Report:
    name: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # outcome -> a few descriptions

    @property
    def tried(self) -> int:
        return sum(self.counts.values())

    @property
    def bad(self) -> int:
        return self.counts["traceback"] + self.counts["hang"] + self.counts["impossible"]

    def note(self, outcome: str, text: str, keep: int = 5) -> None:
        self.counts[outcome] += 1
        if outcome in ("traceback", "hang", "impossible"):
            self.examples.setdefault(outcome, [])
            if len(self.examples[outcome]) < keep:
                self.examples[outcome].append(text)


def classify(check, case, timeout_s: float) -> tuple[str, str]:
    """(outcome, description) of one input."""
    def on_alarm(*_):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            return _outcome(check, case)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Hang:  # also when the alarm lands while an outcome is being written down
        return "hang", f"over {timeout_s:g} s: {_short(case)}"
    finally:
        signal.signal(signal.SIGALRM, old)


def _outcome(check, case) -> tuple[str, str]:
    try:
        out = check(case)
        if out not in ("ok", "refused", "impossible"):
            return "traceback", f"check returned {out!r} for {_short(case)}"
        return out, _short(case)
    except ChipfuseError:
        return "refused", _short(case)
    except RecursionError:
        return "traceback", f"RecursionError: {_short(case)}"
    except Exception:  # noqa: BLE001 - the whole point: any other exception is a traceback
        return "traceback", f"{traceback.format_exc(limit=-3)}\ninput: {_short(case)}"


def _short(case, n: int = 300) -> str:
    s = repr(case)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} chars)"


def run_category(mod, n: int, timeout_s: float = 20.0, seed: int | None = 0) -> Report:
    """Try `n` inputs from `mod.strategy()` (generation only, no shrinking) and count the outcomes."""
    rep = Report(mod.NAME)

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mod.strategy())
    def body(case):
        rep.note(*classify(mod.check, case, timeout_s))

    (body if seed is None else hypothesis_seed(seed)(body))()  # a seed makes the run repeatable
    return rep


def bad_numbers(x, path: str = "") -> list[str]:
    """Every non-finite or negative number in a nested mapping/list, by its path."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, (int, float)):
        return [] if math.isfinite(x) and x >= 0 else [f"{path} = {x!r}"]
    if isinstance(x, dict):
        return [b for k, v in x.items() for b in bad_numbers(v, f"{path}.{k}")]
    if isinstance(x, (list, tuple)):
        return [b for i, v in enumerate(x) for b in bad_numbers(v, f"{path}[{i}]")]
    return []


def impossible_figures(plan) -> list[str]:
    """What is impossible in a plan that claims to fit: non-finite or negative numbers, a stage that
    uses more memory than its die has, no decode speed."""
    dump = plan.model_dump(mode="python")
    dump.pop("system", None)  # the input, already validated on its own
    bad = bad_numbers(dump, "plan")
    for st in plan.stages:
        if st.used_bytes > st.memory_bytes:
            bad.append(f"stage {st.index} on {st.die} uses {st.used_bytes} of {st.memory_bytes} bytes")
    pred = plan.prediction
    if plan.fits and pred is not None:
        if not pred.decode_tokens_per_s > 0 or not pred.ttft_s > 0:
            bad.append(f"decode {pred.decode_tokens_per_s} tokens/s, ttft {pred.ttft_s} s")
    return bad


# --- pieces the categories share ----------------------------------------------------------------

def places(node, prefix=()):
    """Every (path, value) in a nested mapping/list: the places a structure mutation can hit."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from places(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from places(v, (*prefix, i))


YAML_BOMB = "a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"


def yaml_text_op(text: str, rnd, weird_tokens, nest_at: tuple[str, str], tops: list[str]) -> str:
    """One text edit of a YAML input: a number's value replaced by a weird token, the text cut short, a value
    nested thousands deep (`nest_at`: the text to replace and its key), another top level, or an alias bomb."""
    op = rnd.choice(["number", "number", "truncate", "deep", "top", "alias"])
    lines = text.splitlines()
    if op == "number":
        nums = [i for i, line in enumerate(lines) if any(c.isdigit() for c in line) and ":" in line]
        if nums:
            i = rnd.choice(nums)
            lines[i] = f"{lines[i].split(':')[0]}: {rnd.choice(weird_tokens)}"
        return "\n".join(lines)
    if op == "truncate":
        return text[:rnd.randrange(len(text) + 1)]
    if op == "deep":
        n = rnd.choice([50, 1000, 100_000])
        return text.replace(nest_at[0], f"{nest_at[1]}: " + "[" * n + "1" + "]" * n, 1)
    if op == "top":
        return rnd.choice(tops)
    return YAML_BOMB + text


def yaml_mutant(draw, base_text: str, structure_ops: list, text_op) -> bytes:
    """One mutant of a YAML input, for a category's composite strategy: 6 in 10 edit the parsed structure with 1-3
    of `structure_ops` (each `op(d, rnd)`), the rest edit the text with `text_op(text, rnd)` once or twice; 1 in
    20 then gets a non-UTF-8 byte. One seed is drawn and Python's generator does the rest: a replay never diverges."""
    import random

    import yaml
    from hypothesis import strategies as st

    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    text = base_text
    if draw(st.sampled_from(["structure"] * 6 + ["text"] * 4)) == "structure":
        d = yaml.safe_load(text)
        for op in draw(st.lists(st.sampled_from(structure_ops), min_size=1, max_size=3)):
            try:
                op(d, rnd)
            except (KeyError, TypeError, AttributeError, IndexError, ValueError):
                pass
        text = yaml.safe_dump(d, sort_keys=False)
    else:
        for _ in range(draw(st.integers(1, 2))):
            text = text_op(text, rnd)
    raw = text.encode("utf-8")
    if draw(st.sampled_from([False] * 19 + [True])):
        i = rnd.randrange(len(raw) + 1)
        raw = raw[:i] + b"\xff" + raw[i:]
    return raw


def mutate_anywhere(d: dict, rnd, weird_values) -> None:
    """A weird value, a deletion or an unknown key at a random place of a parsed input."""
    paths = [p for p, _ in places(d) if p]
    if not paths:
        return
    path = rnd.choice(paths)
    parent, key = container_of(d, path), path[-1]
    op = rnd.random()
    if op < 0.7:
        parent[key] = copy.deepcopy(rnd.choice(weird_values))  # never the shared object: no cycles, no carry-over
    elif op < 0.85:
        del parent[key]
    elif isinstance(parent, dict):
        parent[f"{key}x"] = 1


def container_of(data, path):
    """The container holding the value at `path`."""
    for p in path[:-1]:
        data = data[p]
    return data


def plan_outcome(cfg) -> str:
    """Plan a model that loaded on talk-4die-d2d: "refused" (a clear error), "ok" or "impossible"."""
    from chipfuse.compile.compiler import compile_plan

    context = min(2048, cfg.max_position)
    try:
        plan = compile_plan(cfg, _four_dies(), context=context, prompt_tokens=min(512, context))
    except ChipfuseError:
        return "refused"
    return "impossible" if impossible_figures(plan) else "ok"


@lru_cache(maxsize=1)
def _four_dies():
    from chipfuse.hw.load import load_system

    return load_system("talk-4die-d2d")
