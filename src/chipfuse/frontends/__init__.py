"""Model front ends: a catalogue name, a config.json or a GGUF file -> ModelConfig."""

from __future__ import annotations

import difflib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ..errors import SpecError
from .config import ModelConfig, from_hf_config
from .gguf_meta import from_gguf

__all__ = [
    "ModelConfig",
    "alias_of",
    "catalogue",
    "catalogue_names",
    "load_model_config",
    "read_config_json",
    "resolve_name",
]

MAX_CONFIG_JSON_BYTES = 4 * 2**20  # real config.json files are a few KB; a bigger file is not one


@lru_cache(maxsize=1)
def _catalogue_file() -> dict:
    """catalogue.yaml parsed once."""
    return yaml.safe_load((resources.files("chipfuse") / "frontends" / "catalogue.yaml").read_text())


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict]:
    """Built-in model configurations (facts from each model's published config.json)."""
    return {k: v for k, v in _catalogue_file().items() if k != "aliases"}


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    """Other names people use for catalogue entries -> the entry."""
    return _catalogue_file().get("aliases", {}) or {}


def catalogue_names() -> list[str]:
    return sorted(catalogue())


def resolve_name(name: str) -> str | None:
    """The catalogue entry a name (or one of its aliases) stands for, case-insensitively; None if unknown."""
    key = name.lower()
    if key in catalogue():
        return key
    return _aliases().get(key)


def alias_of(name: str) -> str | None:
    """The catalogue entry `name` is an alias of (so callers can say so); None for entries and unknown names."""
    key = name.lower()
    return None if key in catalogue() else _aliases().get(key)


def _refuse_constant(token: str):
    """JSON has no NaN or Infinity; Python's json would accept them as floats."""
    raise ValueError(f"{token} is not a JSON number (write a finite number)")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (which of the two would count is a guess)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _file_size(p: Path, what: str) -> int:
    """Size in bytes of a regular file, or a SpecError saying why it cannot be read."""
    try:
        st = p.stat()
    except (OSError, ValueError) as err:
        raise SpecError(f"{p}: no such {what} ({getattr(err, 'strerror', None) or err})") from None
    if not os.path.isfile(p):
        raise SpecError(f"{p}: not a regular file; give a {what}")
    return st.st_size


def read_config_json(path: str | Path) -> dict:
    """A config.json's top-level value, read defensively: bounded size, UTF-8, strict JSON, bounded nesting."""
    p = Path(path)
    size = _file_size(p, "config file")
    if size > MAX_CONFIG_JSON_BYTES:
        raise SpecError(f"{p}: {size:,} bytes is too big for a config.json (limit {MAX_CONFIG_JSON_BYTES:,}); "
                        "give the model's config.json, not a weights or tokenizer file")
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except OSError as err:
        raise SpecError(f"{p}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{p}: byte {err.start} is not UTF-8 text; a config.json is UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise SpecError(f"{p}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise SpecError(f"{p}: JSON nested too deeply to be a config.json") from None
    except ValueError as err:  # NaN/Infinity, duplicate keys, integers over Python's digit limit
        raise SpecError(f"{p}: not valid for a config.json: {err}") from None


def _unknown(spec: str) -> SpecError:
    """The error for a name that is neither a file nor in the catalogue, with close names."""
    close = difflib.get_close_matches(spec.lower(), catalogue_names() + list(_aliases()), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return SpecError(f"unknown model {spec!r}: not a catalogue name, a config.json or a .gguf file{hint} "
                     f"(`chipfuse presets` lists the catalogue)")


def _is_dir(p: Path) -> bool:
    """p is a directory (False for unusable paths, e.g. with a NUL byte)."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def load_model_config(spec: str | Path) -> ModelConfig:
    """A catalogue name, a config.json path (or a folder holding one), or a .gguf path."""
    if not str(spec).strip():
        raise SpecError("empty model name: give a catalogue name, a config.json or a .gguf file")
    p = Path(spec)
    if p.suffix.lower() == ".gguf":
        _file_size(p, "GGUF file")
        return from_gguf(p)
    if _is_dir(p):
        if (p / "config.json").exists():
            p = p / "config.json"
        elif isinstance(spec, Path) or resolve_name(str(spec)) is None:
            raise SpecError(f"{p}: a folder without config.json; give a model folder holding config.json, "
                            "a config.json, a .gguf file or a catalogue name")
    if p.suffix.lower() == ".json":
        cfg = read_config_json(p)
        return from_hf_config(cfg, name=p.parent.name or p.stem, source=str(p))
    key = resolve_name(str(spec))
    if key is None:
        raise _unknown(str(spec))
    entry = catalogue()[key]
    return from_hf_config(entry["config"], name=key, source=f"catalogue entry {key}")
