"""Model front ends: a catalogue name, a config.json or a GGUF file -> ModelConfig."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ..errors import SpecError
from .config import ModelConfig, from_hf_config
from .gguf_meta import from_gguf

__all__ = ["ModelConfig", "load_model_config", "catalogue", "catalogue_names", "resolve_name"]


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict]:
    """Built-in model configurations (facts from each model's published config.json)."""
    text = (resources.files("chipfuse") / "frontends" / "catalogue.yaml").read_text()
    data = yaml.safe_load(text)
    return {k: v for k, v in data.items() if k != "aliases"}


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    text = (resources.files("chipfuse") / "frontends" / "catalogue.yaml").read_text()
    return yaml.safe_load(text).get("aliases", {}) or {}


def catalogue_names() -> list[str]:
    return sorted(catalogue())


def resolve_name(name: str) -> str | None:
    key = name.lower()
    if key in catalogue():
        return key
    return _aliases().get(key)


def load_model_config(spec: str | Path) -> ModelConfig:
    """A catalogue name, a config.json path (or a folder holding one), or a .gguf path."""
    p = Path(spec)
    if p.suffix == ".gguf":
        if not p.exists():
            raise SpecError(f"{p}: no such GGUF file")
        return from_gguf(p)
    if p.is_dir() and (p / "config.json").exists():
        p = p / "config.json"
    if p.suffix == ".json":
        if not p.exists():
            raise SpecError(f"{p}: no such config file")
        try:
            cfg = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise SpecError(f"{p}: line {err.lineno}: not valid JSON ({err.msg})") from None
        return from_hf_config(cfg, name=p.parent.name or p.stem, source=str(p))
    key = resolve_name(str(spec))
    if key is None:
        close = difflib.get_close_matches(str(spec).lower(), catalogue_names() + list(_aliases()), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpecError(f"unknown model {spec!r}: not a catalogue name, a config.json or a .gguf file{hint} "
                        f"(`chipfuse presets` lists the catalogue)")
    entry = catalogue()[key]
    return from_hf_config(entry["config"], name=key, source=f"catalogue entry {key}")
