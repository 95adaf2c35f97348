"""Quantized weights on disk: each weight's codes as its family's codec packs them (INT4 two per byte
with scales and zero points, INT8 with per-channel scales...), in safetensors, under the recipe that
says which layer holds which format.

Written by `chipfuse quantize --method gptq --save FILE`, read by the workers (`--quantized FILE`),
so a calibration-based result runs exactly as it was measured. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ChipfuseError
from .formats import Recipe, get_format, recipe_from_dict, recipe_to_dict
from .quantize import CODECS, Codes, family_of


def save_quantized(path: str | Path, tensors: dict[str, Codes], recipe: Recipe, meta: dict) -> None:
    """Write codes and `meta` (model, layers, method) with the recipe they were made for."""
    from safetensors.torch import save_file

    out = {f"{name}.{key}": v for name, t in tensors.items() for key, v in CODECS[family_of(t)].pack(t).items()}
    from ..io import write_atomic

    meta_json = json.dumps({**meta, "recipe": recipe_to_dict(recipe)})
    write_atomic(path, lambda tmp: save_file(out, str(tmp), metadata={"chipfuse": meta_json}))


def read_meta(path: str | Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["chipfuse"])
    except (OSError, KeyError, ValueError, TypeError, RecursionError, SafetensorError) as err:
        raise ChipfuseError(f"{path}: not a chipfuse quantized checkpoint ({err}); write one with "
                            "`chipfuse quantize --method gptq --save FILE`") from None


def checkpoint_recipe(path: str | Path, meta: dict | None = None) -> Recipe:
    """The recipe a checkpoint's codes were made for (older files: one format, int8 head);
    `meta` is its `read_meta`, if already read."""
    meta = read_meta(path) if meta is None else meta
    try:
        return recipe_from_dict(meta["recipe"]) if "recipe" in meta else Recipe.of(get_format(meta["format"]))
    except (KeyError, ValueError, TypeError, ChipfuseError) as err:
        raise ChipfuseError(f"{path}: its recipe cannot be read ({err})") from None


def load_quantized(path: str | Path, names: set[str] | None = None) -> dict[str, Codes]:
    """The checkpoint's codes (only `names`, if given), each unpacked by the codec whose marker it carries."""
    from safetensors import safe_open

    read_meta(path)
    out: dict[str, Codes] = {}
    with safe_open(str(path), framework="pt") as f:
        parts: dict[str, dict[str, str]] = {}  # stem -> {suffix: key}
        for key in f.keys():
            stem, _, suffix = key.rpartition(".")
            parts.setdefault(stem, {})[suffix] = key
        for name in sorted(parts if names is None else set(parts) & names):
            codec = next((c for c in CODECS.values() if c.marker in parts[name]), None)
            if codec is None:
                raise ChipfuseError(f"{path}: {name} holds no codes this version reads "
                                    f"(it has {', '.join(sorted(parts[name]))})")
            out[name] = codec.unpack({suffix: f.get_tensor(key) for suffix, key in parts[name].items()})
    return out
