"""Device families and classes: which presets share fitted efficiency factors, and which kind of processor runs
their engine.

A family is a vendor's devices running one kind of engine (Apple GPUs under llama.cpp's Metal backend, Rockchip
NPUs under RKLLM); `chipfuse calibrate` fits one set of factors per family. A class (CPU, GPU, NPU) groups
families whose engines run on the same kind of processor: a device of a family the data file has never seen
borrows its class's factors, fitted on the other families of that class. The fitted numbers live in
`hw/fitted_factors.yaml` (written by `chipfuse calibrate --apply`), the one place a quick device reads them from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CLASSES = ("CPU", "GPU", "NPU")

# family -> (class, preset-name prefixes); the longest matching prefix decides (rk3588-npu is not the rk3588 CPU), and
# a name ending in -cpu or -npu is one of that class's families (apple-m2-max-cpu is the M2 Max's CPU, not its
# GPU); a tie goes to the family listed first
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Apple M-series GPU (Metal)": ("GPU", ("apple-m",)),
    "NVIDIA Jetson GPU": ("GPU", ("jetson-",)),
    "NVIDIA desktop GPU": ("GPU", ("rtx-",)),
    "Arm SBC CPU": ("CPU", ("raspberry-pi-", "rk3588", "cix-", "qcs")),
    "x86 CPU": ("CPU", ("ryzen-9-", "ryzen-7-", "ryzen-5-", "threadripper-", "core-i", "core-ultra-", "intel-n", "epyc-",
                        "xeon-")),
    "Arm laptop and server CPU": ("CPU", ("graviton", "ampere-", "apple-m", "snapdragon-")),
    "Rockchip NPU (RKLLM)": ("NPU", ("rk3588-npu", "rk3576-npu", "rk3562-npu", "rv1126b-npu")),
    "Qualcomm NPU (Hexagon)": ("NPU", ("snapdragon-",)),
    "AMD Ryzen AI NPU": ("NPU", ("ryzen-ai-",)),
    "Intel NPU": ("NPU", ("intel-npu-", "core-ultra-npu-")),
    "Hailo NPU": ("NPU", ("hailo-",)),
}

def family_of(device: str) -> str:
    """The family a preset name belongs to ("other" when none matches)."""
    best, length = "other", 0
    suffix = next((c for c in CLASSES if device.endswith("-" + c.lower())), None)
    for fam, (cls, prefixes) in FAMILIES.items():
        if suffix and cls != suffix:
            continue
        for p in prefixes:
            if device.startswith(p) and len(p) > length:
                best, length = fam, len(p)
    return best


def class_of(family: str) -> str | None:
    """The class (CPU, GPU, NPU) of a family; None for an unknown one."""
    return FAMILIES[family][0] if family in FAMILIES else None


def factors_path() -> Path:
    """Where `chipfuse calibrate --apply` writes the fitted factors and quick devices read them."""
    return Path(str(resources.files("chipfuse") / "hw" / "fitted_factors.yaml"))


def fitted_factors() -> dict[str, Any]:
    """{"families": {family: factors, devices, engines}, "classes": {class: factors}} as last written by
    `chipfuse calibrate --apply`; empty sections when nothing was fitted yet."""
    path = factors_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        data = {}
    return {"families": data.get("families") or {}, "classes": data.get("classes") or {}}
