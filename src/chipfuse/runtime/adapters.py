"""LoRA adapters read from a folder in peft's layout, checked against the model they are meant for.

`chipfuse finetune` writes them; peft's own LoRA folders of Llama-family models read the same way.
Served unmerged: each die adds scale * B (A x) to its layers' projections, so the base stays exactly
as the dies hold it and one base can serve several adapters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ChipfuseError
from ..frontends.config import ModelConfig
from ..plan.train import TARGETS, LoraSpec, adapter_shapes
from .lora import HF_NAMES

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_MODULE = {v: k for k, v in HF_NAMES.items()}  # self_attn.q_proj -> q_proj


class AdapterError(ChipfuseError):
    """An adapter folder that cannot be served with this model; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Adapters:
    """Per layer and projection: (A [r, in], B [out, r] already multiplied by the scale)."""

    folder: str
    rank: int
    scale: float
    targets: tuple[str, ...]
    layers: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]

    def for_layers(self, ids: list[int]) -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        return {i: self.layers[i] for i in ids if i in self.layers}


def _config(folder: Path) -> dict:
    f = folder / CONFIG
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such folder (give the --out folder of `chipfuse finetune`, or a peft LoRA "
                           "folder)")
    if not f.exists():
        raise AdapterError(f"{folder}: no {CONFIG}: not a LoRA adapter folder")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{f}: not JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{f}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}: "
                           "chipfuse serves LoRA adapters only")
    return cfg


def read_adapter(folder: str | Path, model: ModelConfig) -> Adapters:
    """The adapters of `folder` for `model`, every tensor checked for name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _config(folder)
    where = folder / CONFIG
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (isinstance(rank, int) and rank >= 1) or not (isinstance(alpha, int | float) and alpha > 0):
        raise AdapterError(f"{where}: r {rank!r} and lora_alpha {alpha!r} must be a positive whole number and a "
                           "positive number")
    for key, ok in (("bias", "none"), ("fan_in_fan_out", False)):
        if cfg.get(key, ok) != ok:
            raise AdapterError(f"{where}: {key} {cfg[key]!r} is not served (only {key} {ok!r})")
    if cfg.get("use_dora"):
        raise AdapterError(f"{where}: DoRA adapters are not served (plain LoRA only)")
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    wfile = folder / WEIGHTS
    if not wfile.exists():
        raise AdapterError(f"{folder}: no {WEIGHTS} (chipfuse reads safetensors, never pickled .bin files)")
    try:
        tensors = load_file(str(wfile))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{wfile}: not a readable safetensors file ({e})") from None
    layers: dict[int, dict[str, list]] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        try:
            i = parts.index("layers")
            layer, module, which = int(parts[i + 1]), ".".join(parts[i + 2: i + 4]), parts[i + 4]
        except (ValueError, IndexError):
            raise AdapterError(f"{wfile}: tensor {name!r} is not a LoRA tensor of a layer's projection") from None
        if module not in _MODULE or which not in ("lora_A", "lora_B") or not 0 <= layer < model.num_layers:
            raise AdapterError(f"{wfile}: tensor {name!r} does not belong to {model.name} ({model.num_layers} layers; "
                               f"projections {', '.join(TARGETS)})")
        slot = layers.setdefault(layer, {}).setdefault(_MODULE[module], [None, None])
        slot[0 if which == "lora_A" else 1] = t.float()
    if not layers:
        raise AdapterError(f"{wfile}: no LoRA tensors")
    targets = sorted({t for per in layers.values() for t in per})
    shapes = adapter_shapes(model, LoraSpec(rank=1, targets=tuple(targets)))  # in and out features only
    out: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for layer, per in layers.items():
        out[layer] = {}
        for t, (a, b) in per.items():
            fin, fout = shapes[t]
            if a is None or b is None or tuple(a.shape) != (rank, fin) or tuple(b.shape) != (fout, rank):
                raise AdapterError(
                    f"{wfile}: layer {layer} {t}: expected lora_A {(rank, fin)} and lora_B {(fout, rank)} for "
                    f"{model.name} at rank {rank}, found {None if a is None else tuple(a.shape)} and "
                    f"{None if b is None else tuple(b.shape)}: an adapter of another model or rank")
            out[layer][t] = (a.contiguous(), (b * scale).contiguous())
    return Adapters(str(folder), rank, scale, tuple(targets), out)
