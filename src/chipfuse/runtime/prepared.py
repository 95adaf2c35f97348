"""Prepared per-die weights on disk: a stage's packed tensors, so a warm start skips dequantizing and packing.

Each worker turns its blocks of the model file into the tensors its kernels hold (INT4 codes
and scales, INT8 codes, FP16/BF16/FP8 matrices, norms). That takes seconds in Python; the
result is saved once as safetensors (no pickle) under `cache_dir()/prepared` and memory-mapped
on the next start. The key covers everything that decides those tensors: the source file's
identity (file_cache.source_fingerprint), the model config, the stage's blocks and formats
(layers, per-block overrides, head), a quantized checkpoint's identity, the chipfuse and torch
versions, a hash of the code that packs (CODE), the machine and CACHE_FORMAT. A file whose metadata or tensors do not fit is
ignored with a warning and rebuilt; CHIPFUSE_NO_CACHE=1 turns the cache off.
"""

from __future__ import annotations

import json
import platform
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..frontends.config import ModelConfig
from ..frontends.model_files import cache_dir
from ..quant.formats import Format
from .file_cache import atomic_write, code_digest, digest, enabled, source_fingerprint
from .stage import StageModel

CACHE_FORMAT = 2  # bump when the saved layout or any kernel's state() changes meaning
# the code that turns a model file into packed tensors: an edit to any of it invalidates the cache
CODE = ("chipfuse.runtime.weights", "chipfuse.runtime.stage", "chipfuse.runtime.kernels",
        "chipfuse.quant.quantize", "chipfuse.quant.formats")


def folder() -> Path:
    return cache_dir() / "prepared"


def stage_key(source: str | Path, cfg: ModelConfig, blocks: tuple[int, int], fmt: Format, head_fmt: Format | None,
              layer_formats: dict[int, Format], quantized: str | Path | None) -> dict:
    """Everything the prepared tensors of one stage depend on, as a JSON-able mapping."""
    return {"cache_format": CACHE_FORMAT, "chipfuse": __version__, "code": code_digest(*CODE), "torch": torch.__version__,
            "machine": platform.machine(), "source": source_fingerprint(source),
            "config": cfg.model_dump(mode="json"), "blocks": list(blocks), "format": asdict(fmt),
            "head_format": asdict(head_fmt) if head_fmt else None,
            "layer_formats": {str(i): asdict(f) for i, f in sorted(layer_formats.items())},
            "quantized": source_fingerprint(quantized) if quantized else None}


def stage_file(source: str | Path, blocks: tuple[int, int], key: dict) -> Path:
    return folder() / f"{Path(source).stem}.blocks{blocks[0]}-{blocks[1]}.{digest(key)}.safetensors"


def save(model: StageModel, path: Path, key: dict) -> None:
    """Write the stage's packed tensors atomically; a failed write only warns (the run goes on)."""
    from safetensors.torch import save_file

    tensors, layout = model.prepared_state()
    seen: set[int] = set()
    flat = {}
    for name, t in tensors.items():  # safetensors refuses tensors sharing memory: give each its own
        t = t.contiguous()
        flat[name] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    meta = {"key": json.dumps(key, sort_keys=True), "layout": json.dumps(layout)}
    try:
        atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=meta))
    except OSError as e:
        warnings.warn(f"chipfuse: could not cache prepared weights in {path} ({e}); the next start rebuilds them",
                      stacklevel=2)


def load(path: Path, key: dict, cfg: ModelConfig, blocks: tuple[int, int], fmt: Format, context: int,
         kv_precision: str, head_fmt: Format | None) -> StageModel | None:
    """The cached stage, or None (with a warning if a file was there but unusable)."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != json.dumps(key, sort_keys=True):
                raise ValueError("its key does not match this stage")
            tensors = {k: _aligned(f.get_tensor(k)) for k in f.keys()}
        return StageModel.from_prepared(cfg, tensors, json.loads(meta["layout"]), blocks, fmt, context,
                                        kv_precision, head_fmt)
    except Exception as e:  # a corrupt, truncated or foreign file: rebuild, never fail the start
        warnings.warn(f"chipfuse: ignoring cached prepared weights {path} ({type(e).__name__}: {e}); rebuilding",
                      stacklevel=2)
        return None


ALIGN_BYTES = 64


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` at an address the packed kernels can load from: a tensor read from the file sits wherever the header
    left it (its length moves every offset), and the INT8 packed GEMM crashed on one at an odd address."""
    return t if t.data_ptr() % ALIGN_BYTES == 0 else t.clone()


def stage(source: str | Path, cfg: ModelConfig, blocks: tuple[int, int], fmt: Format, head_fmt: Format | None,
          layer_formats: dict[int, Format], quantized: str | Path | None, context: int, kv_precision: str,
          build: Callable[[], StageModel]) -> tuple[StageModel, str]:
    """The stage from the cache if it holds it ("hit"), else build() and cache it ("miss"; "off" if disabled)."""
    if not enabled():
        return build(), "off"
    key = stage_key(source, cfg, blocks, fmt, head_fmt, layer_formats, quantized)
    path = stage_file(source, blocks, key)
    model = load(path, key, cfg, blocks, fmt, context, kv_precision, head_fmt)
    if model is not None:
        return model, "hit"
    model = build()
    save(model, path, key)
    return model, "miss"
