"""The compiled decode path: a stage's layers for one-token rows in a single C++ call (csrc/decode.cpp).

Built once per machine with the system's C++ compiler (about a minute) into chipfuse's cache,
then loaded in every process. If it cannot be built, the runtime keeps the Python path and
says so once. `CHIPFUSE_FAST_DECODE=0` turns it off (the tests compare both paths).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path

from ..frontends.model_files import cache_dir

SOURCE = Path(__file__).parent / "csrc" / "decode.cpp"
_module = None
_failed = False


def enabled() -> bool:
    return os.environ.get("CHIPFUSE_FAST_DECODE", "1") not in ("0", "false", "no", "off")


def _import_built(name: str, build: Path):
    """The module already built for this source, imported straight from its .so (None if absent or broken).

    cpp_extension.load would get there too, but only after importing its build machinery, probing
    the compiler and running ninja: about a second in each of the dies' processes on every start.
    The name carries the source's hash, so a .so under it is this source's; a half-written one
    (a build killed mid-link) fails to import and the full path below rebuilds it.
    """
    so = build / f"{name}.so"
    if not so.exists():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, so)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception:  # noqa: BLE001 - fall back to the checked build
        return None


def load():
    """The compiled module, building it on first use; None if disabled or not buildable."""
    global _module, _failed
    if _module is not None or _failed or not enabled():
        return _module
    import torch

    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + platform.machine().encode()).hexdigest()[:12]
    name = f"chipfuse_decode_{digest}"
    build = cache_dir() / "ext" / name
    _module = _import_built(name, build)
    if _module is not None:
        return _module
    from torch.utils import cpp_extension

    build.mkdir(parents=True, exist_ok=True)
    fresh = not any(build.glob("*.so"))
    try:
        if fresh:
            print("chipfuse: compiling the decode kernel for this machine (once, about a minute)...", file=sys.stderr)
        _module = cpp_extension.load(name=name, sources=[str(SOURCE)], build_directory=str(build),
                                     extra_cflags=["-O3", "-march=native", "-fopenmp", "-fassociative-math",
                                                   "-fno-signed-zeros", "-fno-trapping-math"],
                                     extra_ldflags=["-fopenmp"],  # at::parallel_for is serial without it
                                     verbose=False)
    except Exception as e:  # no compiler, no ninja, or a build error: keep the Python path
        _failed = True
        warnings.warn(f"chipfuse: compiled decode path unavailable ({str(e).strip().splitlines()[-1][:200]}); "
                      "using the Python path, which is slower. Set CHIPFUSE_FAST_DECODE=0 to silence this.",
                      stacklevel=2)
    return _module
