"""Where chipfuse keeps its cache; a module of its own so the CLI's first step can import it cheaply."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """chipfuse's cache folder: $CHIPFUSE_CACHE, else $XDG_CACHE_HOME/chipfuse, else ~/.cache/chipfuse."""
    base = os.environ.get("CHIPFUSE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "chipfuse")
    return Path(base)
