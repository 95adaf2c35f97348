"""Read system files and presets; turn validation failures into one clear message."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import SpecError
from .spec import System

PRESET_DIR = resources.files("chipfuse") / "hw" / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in PRESET_DIR.iterdir() if p.name.endswith(".yaml"))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(source: str, err: ValidationError, data: object = None) -> str:
    """One line per problem: file, field path, bad value, what is accepted."""
    lines = [f"{source}: invalid system description ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            field = loc[-1] if loc else ""
            hint = _suggest_field(field, loc, data)
            if hint:
                msg += f"; did you mean {hint!r}?"
        got = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"  {_loc(loc)}: {msg}{shown}")
    return "\n".join(lines)


def _suggest_field(field: str, loc: tuple, data: object) -> str | None:
    from . import spec

    candidates: set[str] = set()
    for model in (spec.System, spec.HostSoC, spec.DieType, spec.DRAM, spec.Link, spec.Die, spec.CPU,
                  spec.HostTraffic, spec.Port, spec.Package, spec.DieMemory, spec.SharedMemory, spec.NVM, spec.DiePower):
        candidates.update(model.model_fields)
    close = difflib.get_close_matches(str(field), sorted(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def parse_system(data: object, source: str) -> System:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a system file is a YAML mapping with host, die_types, dies and links")
    try:
        return System.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, err, data)) from None


def load_system(name_or_path: str | Path) -> System:
    """Load a preset by name or a system YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise SpecError(f"{p}: no such system file")
        source, text = str(p), p.read_text()
    else:
        res = PRESET_DIR / f"{name_or_path}.yaml"
        if not res.is_file():
            close = difflib.get_close_matches(str(name_or_path), preset_names(), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(f"unknown system {name_or_path!r}: not a file and not a preset{hint} "
                            f"(`chipfuse presets` lists them)")
        source, text = f"preset {name_or_path}", res.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{source}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    return parse_system(data, source)
