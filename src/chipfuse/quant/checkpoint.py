"""Quantized weights on disk: INT4 codes (two per byte) with scales and zero points, or INT8 codes
with per-channel scales, in safetensors, under the recipe that says which layer holds which format.

Written by `chipfuse quantize --method gptq --save FILE`, read by the workers (`--quantized FILE`),
so a calibration-based result runs exactly as it was measured. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ChipfuseError
from .formats import Recipe, get_format, recipe_from_dict, recipe_to_dict
from .quantize import QuantizedInt4, QuantizedInt8

Codes = QuantizedInt4 | QuantizedInt8


def save_quantized(path: str | Path, tensors: dict[str, Codes], recipe: Recipe, meta: dict) -> None:
    """Write codes and `meta` (model, layers, method) with the recipe they were made for."""
    from safetensors.torch import save_file

    out = {}
    for name, t in tensors.items():
        if isinstance(t, QuantizedInt8):
            out[name + ".q8"] = t.q.to(torch.int8).contiguous()
        else:
            q = t.q.to(torch.uint8)
            out[name + ".q4"] = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
            out[name + ".zero"] = t.zero.float().contiguous()
        out[name + ".scale"] = t.scale.float().contiguous()
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
    """The checkpoint's tensors (only `names`, if given) as QuantizedInt4 or QuantizedInt8."""
    from safetensors import safe_open

    read_meta(path)
    out: dict[str, Codes] = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        stems = {k.rsplit(".", 1)[0] for k in keys}
        for name in sorted(stems if names is None else stems & names):
            scale = f.get_tensor(name + ".scale")
            if name + ".q8" in keys:
                out[name] = QuantizedInt8(f.get_tensor(name + ".q8"), scale)
                continue
            p = f.get_tensor(name + ".q4")
            q = torch.stack([p & 0xF, p >> 4], -1).reshape(p.shape[0], -1).to(torch.int32)
            out[name] = QuantizedInt4(q, scale, f.get_tensor(name + ".zero"), q.shape[1] // scale.shape[1])
    return out
