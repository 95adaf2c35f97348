"""A model file's ModelConfig, cached by the file's identity: parsing a GGUF's metadata takes seconds.

`gguf.GGUFReader` walks every metadata array (49k vocabulary strings for SmolLM2) in Python, so
reading the architecture of a 100 MB file costs 2-4 s on each start. The config is small JSON;
it is kept under `cache_dir()/configs` keyed by file_cache.file_fingerprint, the chipfuse
version and the front end's code, and read back in milliseconds. CHIPFUSE_NO_CACHE=1 reads the file every time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .. import __version__
from ..frontends import load_model_config
from ..frontends.config import ModelConfig
from ..frontends.model_files import cache_dir
from .file_cache import atomic_write, code_digest, digest, enabled, file_fingerprint

CACHE_FORMAT = 1


def gguf_config(path: str | Path) -> ModelConfig:
    """load_model_config(path) for a .gguf file, from the cache when this exact file was read before."""
    if not enabled():
        return load_model_config(path)
    key = digest({"cache_format": CACHE_FORMAT, "chipfuse": __version__, "source": file_fingerprint(path),
                  "code": code_digest("chipfuse.frontends.config", "chipfuse.frontends.gguf_meta")})
    cached = cache_dir() / "configs" / f"{Path(path).stem}.{key}.json"
    if cached.exists():
        try:
            return ModelConfig.model_validate_json(cached.read_text())
        except Exception as e:  # a corrupt or outdated file: read the model again
            warnings.warn(f"chipfuse: ignoring cached model config {cached} ({type(e).__name__}); rereading the model",
                          stacklevel=2)
    cfg = load_model_config(path)
    try:
        atomic_write(cached, lambda tmp: tmp.write_text(cfg.model_dump_json()))
    except OSError:
        pass  # a read-only cache only costs the next start the same seconds
    return cfg
