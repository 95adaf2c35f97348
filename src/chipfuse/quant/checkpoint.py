"""Quantized weights on disk: INT4 codes (two per byte), scales and zero points, in safetensors.

Written by `chipfuse quantize --method gptq --save FILE`, read by the workers (`--quantized FILE`),
so a calibration-based result runs exactly as it was measured. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ChipfuseError
from .quantize import QuantizedInt4


def save_quantized(path: str | Path, tensors: dict[str, QuantizedInt4], meta: dict) -> None:
    from safetensors.torch import save_file

    out = {}
    for name, t in tensors.items():
        q = t.q.to(torch.uint8)
        out[name + ".q4"] = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
        out[name + ".scale"] = t.scale.float().contiguous()
        out[name + ".zero"] = t.zero.float().contiguous()
    save_file(out, str(path), metadata={"chipfuse": json.dumps({**meta, "group": next(iter(tensors.values())).group})})


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["chipfuse"])
    except (OSError, KeyError, ValueError) as err:
        raise ChipfuseError(f"{path}: not a chipfuse quantized checkpoint ({err})") from None


def load_quantized(path: str | Path, names: set[str] | None = None) -> dict[str, QuantizedInt4]:
    """The checkpoint's tensors (only `names`, if given) as QuantizedInt4."""
    from safetensors import safe_open

    group = int(read_meta(path)["group"])
    out = {}
    with safe_open(str(path), framework="pt") as f:
        keys = {k.rsplit(".", 1)[0] for k in f.keys()}
        for name in sorted(keys if names is None else keys & names):
            p = f.get_tensor(name + ".q4")
            q = torch.stack([p & 0xF, p >> 4], -1).reshape(p.shape[0], -1).to(torch.int32)
            out[name] = QuantizedInt4(q, f.get_tensor(name + ".scale"), f.get_tensor(name + ".zero"), group)
    return out
