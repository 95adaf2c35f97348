"""Shared pieces of chipfuse's on-disk caches: a source file's fast identity, atomic writes, the off switch.

A cache entry is keyed by what it was made from. Hashing a 100 MB model on every start costs
more than the cache saves, so a file's identity is its size, its mtime in ns and a SHA-256 of its
first and last MiB: an edit in place changes the mtime, a copy or download of other bytes
changes the ends. Writes go to a temporary file in the same folder and are renamed into place,
so a reader never sees half a file, even if the writer is killed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

EDGE_BYTES = 1 << 20


def enabled() -> bool:
    """False when CHIPFUSE_NO_CACHE is set (to anything but 0/false/no/off): every start rebuilds."""
    return os.environ.get("CHIPFUSE_NO_CACHE", "0").lower() in ("", "0", "false", "no", "off")


def file_fingerprint(path: str | Path) -> str:
    """Size, mtime_ns and a hash of the first and last MiB of one file, as a hex digest."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256(f"{st.st_size}|{st.st_mtime_ns}|".encode())
    with open(p, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        if st.st_size > EDGE_BYTES:
            f.seek(max(EDGE_BYTES, st.st_size - EDGE_BYTES))
            h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


def source_fingerprint(path: str | Path) -> str:
    """Identity of a model source: a file, or a folder's config.json and *.safetensors together."""
    p = Path(path)
    if not p.is_dir():
        return file_fingerprint(p)
    files = sorted(p.glob("*.safetensors")) + [c for c in (p / "config.json",) if c.exists()]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}={file_fingerprint(f)};".encode())
    return h.hexdigest()


def code_digest(*modules: str) -> str:
    """A hash of the named modules' source: an entry made by other code (an edit, an upgrade) misses."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        h.update(name.encode() + (Path(spec.origin).read_bytes() if spec and spec.origin else b"?"))
    return h.hexdigest()[:16]


def digest(fields: dict) -> str:
    """A short stable hash of a JSON-able mapping (a cache key)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def atomic_write(dest: Path, write) -> None:
    """Call write(temp_path) on a temporary file beside `dest` (its folder made if needed), then rename it into place."""
    from ..io import write_atomic

    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, write)
