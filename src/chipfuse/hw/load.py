"""Read system files and presets; turn validation failures into one clear message.

A system file is untrusted input: it is read with a size limit, its YAML structure (nesting
depth, alias expansion, duplicate keys) is checked on the parser's event stream before any
Python objects are built, and validation errors are reported one line per problem.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import SpecError
from ..errors import format_validation_error as _format_errors
from ..io import read_text_bounded
from .spec import System

PRESET_DIR = resources.files("chipfuse") / "hw" / "presets"
MAX_SYSTEM_FILE_BYTES = 1 << 20  # 1 MiB: a real system file is a few KiB
MAX_YAML_DEPTH = 32  # a system file nests about 6 deep
MAX_YAML_NODES = 200_000  # values after expanding aliases (an alias bomb expands to billions)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in PRESET_DIR.iterdir() if p.name.endswith(".yaml"))


def _spec_fields() -> list[str]:
    """Every field name of the system models: candidates for 'did you mean'."""
    from . import spec

    names: set[str] = {"boards"}  # the compact form's key (hw/compact.py suggests within it)
    for model in (spec.System, spec.HostSoC, spec.DieType, spec.DRAM, spec.Link, spec.Die, spec.CPU,
                  spec.HostTraffic, spec.Port, spec.Package, spec.DieMemory, spec.SharedMemory, spec.NVM, spec.DiePower):
        names.update(model.model_fields)
    return sorted(names)


def _suggest_field(field: str) -> str | None:
    """The known field name closest to a misspelt one, if any is close."""
    close = difflib.get_close_matches(str(field), _spec_fields(), n=1, cutoff=0.6)
    return close[0] if close else None


def format_validation_error(source: str, err: ValidationError, data: object = None) -> str:
    """One line per problem: file, field path, bad value, what is accepted."""
    return _format_errors(source, err, "system description", suggest=_suggest_field)


def parse_system(data: object, source: str) -> System:
    from .quick import is_quick, parse_quick

    if is_quick(data):  # a device from a handful of facts (hw/quick.py)
        assert isinstance(data, dict)
        return parse_quick(data, source)
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a system file is a YAML mapping with host, die_types, dies and links")
    try:
        return System.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, err, data)) from None


class _Frame:
    """One open YAML mapping or sequence while scanning events."""

    def __init__(self, event: yaml.CollectionStartEvent):
        self.anchor = event.anchor
        self.is_mapping = isinstance(event, yaml.MappingStartEvent)
        self.size = 1
        self.key_next = True
        self.keys: set[str] = set()


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""


def _note_child(frame: _Frame, event: yaml.Event, source: str) -> None:
    """Track keys of a mapping: a key written twice would silently keep only the last value."""
    if not frame.is_mapping:
        return
    if frame.key_next and isinstance(event, yaml.ScalarEvent):
        if event.value in frame.keys:
            raise SpecError(f"{source}:{_where(event)} key {event.value!r} appears twice in one mapping "
                            f"(YAML keeps only the last); keep one")
        frame.keys.add(event.value)
    frame.key_next = not frame.key_next


def check_yaml_shape(text: str, source: str) -> None:
    """Refuse YAML too deep, with too many values once aliases expand, or with repeated keys,
    before building any objects (deep nesting would overflow the stack, alias bombs hang)."""
    frames: list[_Frame] = []
    sizes: dict[str | None, int] = {}  # by anchor; an alias event's anchor is typed str | None
    for event in yaml.parse(text, Loader=_Loader):
        if not isinstance(event, (yaml.NodeEvent, yaml.CollectionEndEvent)):
            continue
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)) and frames:
            _note_child(frames[-1], event, source)
        if isinstance(event, yaml.CollectionStartEvent):
            if len(frames) >= MAX_YAML_DEPTH:
                raise SpecError(_too_deep(source, _where(event)))
            frames.append(_Frame(event))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            done = frames.pop()
            size, anchor = done.size, done.anchor
        else:
            size = sizes.get(event.anchor, 1) if isinstance(event, yaml.AliasEvent) else 1
            anchor = event.anchor if isinstance(event, yaml.ScalarEvent) else None
        if anchor:
            sizes[anchor] = size
        if frames:
            frames[-1].size += size
            if frames[-1].size > MAX_YAML_NODES:
                raise SpecError(f"{source}: expands to over {MAX_YAML_NODES:,} values through YAML aliases (*name); "
                                f"write the values out instead of nesting aliases")


def parse_yaml(text: str, source: str) -> object:
    """The Python data of a system file's YAML text, or a SpecError naming the line."""
    try:
        check_yaml_shape(text, source)
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(err, "problem", None) or err
        if "nesting depth" in str(problem):  # libyaml's own limit can trip before ours
            raise SpecError(_too_deep(source, where)) from None
        raise SpecError(f"{source}:{where} not valid YAML: {problem}") from None


def _too_deep(source: str, where: str) -> str:
    return (f"{source}:{where} nested more than {MAX_YAML_DEPTH} levels deep; "
            f"a system file nests about 6 (see docs/hardware.md)")


def load_system(name_or_path: str | Path) -> System:
    """Load a preset by name or a system YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        source = str(p)
        text = read_text_bounded(p, "system file", MAX_SYSTEM_FILE_BYTES, error=SpecError)
    else:
        res = PRESET_DIR / f"{name_or_path}.yaml"
        if not res.is_file():
            close = difflib.get_close_matches(str(name_or_path), preset_names(), n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(f"unknown system {name_or_path!r}: not a file and not a preset{hint} "
                            f"(`chipfuse presets` lists them)")
        source, text = f"preset {name_or_path}", res.read_text(encoding="utf-8")
    return parse_system(parse_yaml(text, source), source)
