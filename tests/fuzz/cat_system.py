"""Fuzz category: system YAML files, mutated from every shipped preset.

Each case is the bytes of a system file: a preset with a few text or structure mutations (bad
numbers, deleted or repeated keys, non-UTF-8 bytes, truncation, deep nesting, alias bombs, huge
lists, swapped values). `check` loads it like the CLI and compiles two models on it.
"""

from __future__ import annotations

import copy
import random
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import yaml
from hypothesis import strategies as st

from chipfuse.errors import ChipfuseError
from chipfuse.hw.load import PRESET_DIR, load_system, preset_names

from .harness import container_of, impossible_figures, places

NAME = "system YAML"

WEIRD_SCALARS = (".inf", "-.inf", ".nan", "1e300", "-1e300", "5e-324", "-1", "0", "true", "false", '"896"',
                 "[]", "{}", "null", "~", "0x7fffffffffffffff", "1" + "0" * 400, "!!python/object/apply:os.getcwd []",
                 "!!binary aGVsbG8=", "2024-01-01", "'text'", "-0.0", "1e-300", "NaN")
NUMBER = re.compile(r"(?<=[:\[,]\s)-?\d[\d_.eE+-]*|(?<=:)\s*-?\d[\d_.eE+-]*")
KEY_LINE = re.compile(r"^(\s*-?\s*)([A-Za-z_][\w.-]*):", re.MULTILINE)


@lru_cache(maxsize=8)
def _preset_texts() -> tuple[tuple[str, str], ...]:
    """(name, text) of every shipped preset: the seeds of every case."""
    return tuple((n, (PRESET_DIR / f"{n}.yaml").read_text(encoding="utf-8")) for n in preset_names())


@lru_cache(maxsize=4)
def _model(name: str):
    from chipfuse.frontends import load_model_config

    return load_model_config(name)


# --- text mutations: str -> str (or bytes) --------------------------------------------------------

def _replace_number(text: str, rnd: random.Random) -> str:
    spans = [m.span() for m in NUMBER.finditer(text)]
    if not spans:
        return text
    a, b = rnd.choice(spans)
    return text[:a] + " " + rnd.choice(WEIRD_SCALARS) + text[b:]


def _key_lines(text: str) -> list[re.Match]:
    return list(KEY_LINE.finditer(text))


def _delete_key(text: str, rnd: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    keyed = [i for i, ln in enumerate(lines) if KEY_LINE.match(ln)]
    if keyed:
        del lines[rnd.choice(keyed)]
    return "".join(lines)


def _duplicate_line(text: str, rnd: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i = rnd.randrange(len(lines))
    lines.insert(i, lines[i])
    return "".join(lines)


def _rename_key(text: str, rnd: random.Random) -> str:
    keys = _key_lines(text)
    if not keys:
        return text
    m = rnd.choice(keys)
    name = m.group(2)
    new = rnd.choice([name[:-1], name + "s", name.upper(), name.replace("_", "-"), "x" + name, "<<"])
    return text[:m.start(2)] + (new or "k") + text[m.end(2):]


def _swap_values(text: str, rnd: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    simple = [i for i, ln in enumerate(lines) if re.match(r"^\s*[\w.-]+: [^\s{\[].*$", ln)]
    if len(simple) < 2:
        return text
    i, j = rnd.sample(simple, 2)
    ki, vi = lines[i].split(": ", 1)
    kj, vj = lines[j].split(": ", 1)
    lines[i], lines[j] = f"{ki}: {vj}", f"{kj}: {vi}"
    return "".join(lines)


def _truncate(text: str, rnd: random.Random) -> str:
    return text[:rnd.randrange(len(text) + 1)]


def _deep_nesting(text: str, rnd: random.Random) -> str:
    n = rnd.choice([40, 200, 1000, 5000])
    deep = rnd.choice(["[" * n + "]" * n, "{a: " * n + "1" + "}" * n, "".join(" " * i + "- \n" for i in range(0, n, 1))[:200000]])
    return _set_value_text(text, rnd, deep)


def _set_value_text(text: str, rnd: random.Random, value: str) -> str:
    spans = [m.span() for m in NUMBER.finditer(text)]
    if not spans:
        return text + f"\nextra: {value}\n"
    a, b = rnd.choice(spans)
    return text[:a] + " " + value + text[b:]


def _alias_bomb(text: str, rnd: random.Random) -> str:
    levels = rnd.choice([3, 6, 9])
    bomb = "x0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" + "".join(
        f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, levels))
    where = rnd.choice(["top", "sources"])
    if where == "top":
        return bomb + text
    return text.replace("sources:", bomb.replace("x", "  x") + "sources:", 1)


def _huge_list(text: str, rnd: random.Random) -> str:
    n = rnd.choice([300, 5000, 200_000])
    item = rnd.choice(["1", "{name: d, type: t}", "{between: [host, d], kind: pcie, gen: 3, lanes: 4}"])
    return _set_value_text(text, rnd, "[" + ", ".join([item] * n) + "]")


def _python_tag(text: str, rnd: random.Random) -> str:
    return _set_value_text(text, rnd, rnd.choice(["!!python/object/apply:os.system ['true']",
                                                  "!!python/name:os.system", "!!set {a, b}"]))


TEXT_MUTATIONS = (_replace_number, _replace_number, _replace_number, _delete_key, _duplicate_line, _rename_key,
                  _swap_values, _truncate, _deep_nesting, _alias_bomb, _huge_list, _python_tag)


# --- structure mutations: on the parsed mapping, then re-dumped -----------------------------------

WEIRD_VALUES = (float("inf"), float("-inf"), float("nan"), 1e300, 5e-324, -1, 0, True, False, "896", [], {}, None,
                10**30, -1e-9, 0.5, "host", ["host", "host"])


def _mutate_structure(data: dict, rnd: random.Random) -> None:
    """One change to a random place in the parsed system: a weird value, a deletion, a copy or a swap."""
    paths = [p for p, _ in places(data) if p]
    if not paths:
        return
    path = rnd.choice(paths)
    parent, key = container_of(data, path), path[-1]
    op = rnd.choice(["value", "value", "value", "delete", "copy", "swap", "unknown", "grow"])
    if op == "value":
        parent[key] = copy.deepcopy(rnd.choice(WEIRD_VALUES))  # never the shared object
    elif op == "delete":
        del parent[key]
    elif op == "copy" and isinstance(parent, list):
        parent.append(parent[key])
    elif op == "swap":
        other = rnd.choice(paths)
        op_parent, ok = container_of(data, other), other[-1]
        if other[:len(path)] != path and path[:len(other)] != other:
            parent[key], op_parent[ok] = op_parent[ok], parent[key]
    elif op == "unknown" and isinstance(parent, dict):
        parent[f"{key}_x"] = parent[key]
    elif op == "grow" and isinstance(parent[key], list):
        parent[key] = parent[key] * rnd.choice([2, 50, 400])


def _structure_case(text: str, rnd: random.Random, n: int) -> str:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        return text
    for _ in range(n):
        _mutate_structure(data, rnd)
    return yaml.safe_dump(data, sort_keys=False)


def _to_bytes(text: str, rnd: random.Random, extra: str) -> bytes:
    """Encode; `extra` may splice in non-UTF-8 bytes or blow the file past the 1 MiB bound."""
    raw = text.encode("utf-8")
    if extra == "non-utf8":
        i = rnd.randrange(len(raw) + 1)
        raw = raw[:i] + rnd.choice([b"\xff", b"\xc3\x28", b"\x80\x80", b"\xfe\xff\x00"]) + raw[i:]
    elif extra == "huge":
        raw = raw * (2 + (1 << 21) // max(1, len(raw)))
    return raw


@st.composite
def _case(draw) -> bytes:
    """Mostly one to three mutations of one kind; rare extras drawn uniformly (hypothesis's Random
    leans to its first choices, so the mix is decided by sampled_from)."""
    _, text = draw(st.sampled_from(_preset_texts()))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # Python's own draws: a replay never diverges
    kind = draw(st.sampled_from(["structure"] * 4 + ["text"] * 6))
    mutations = draw(st.lists(st.sampled_from(TEXT_MUTATIONS), min_size=1, max_size=3))
    extra = draw(st.sampled_from(["none"] * 16 + ["non-utf8", "huge"]))
    if kind == "structure":
        try:
            text = _structure_case(text, rnd, len(mutations))
        except RecursionError:  # a swap made a cycle: keep the text
            pass
    else:
        for mutate in mutations:
            text = mutate(text, rnd)
    return _to_bytes(text, rnd, extra)


def strategy():
    return _case()


def check(case: bytes) -> str:
    """Load the file like the CLI, then compile smollm2 and llama-2-7b on it."""
    from chipfuse.compile.compiler import compile_plan

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "system.yaml"
        path.write_bytes(case)
        system = load_system(path)
    outcome = "refused"
    for model in ("smollm2", "llama-2-7b"):
        try:
            plan = compile_plan(_model(model), system, context=2048)
        except ChipfuseError:
            continue
        if impossible_figures(plan):
            return "impossible"
        outcome = "ok"
    return outcome
