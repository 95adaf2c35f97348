"""Read a model's weights as FP32 tensors under canonical names, only the blocks asked for.

Sources: a GGUF file (dequantized with the `gguf` package; the reference is that FP32 model)
or a Hugging Face folder with config.json and *.safetensors. Canonical names:
`embed`, `layers.{i}.{attn_norm,q_proj,k_proj,v_proj,o_proj,q_bias,k_bias,v_bias,q_norm,k_norm,
mlp_norm,gate_proj,up_proj,down_proj}`, `final_norm`, `lm_head` (absent when tied).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ChipfuseError
from ..frontends.config import ModelConfig

GGUF_LAYER = {"attn_norm.weight": "attn_norm", "attn_q.weight": "q_proj", "attn_k.weight": "k_proj",
              "attn_v.weight": "v_proj", "attn_output.weight": "o_proj", "attn_q.bias": "q_bias",
              "attn_k.bias": "k_bias", "attn_v.bias": "v_bias", "attn_q_norm.weight": "q_norm",
              "attn_k_norm.weight": "k_norm", "ffn_norm.weight": "mlp_norm", "ffn_gate.weight": "gate_proj",
              "ffn_up.weight": "up_proj", "ffn_down.weight": "down_proj"}
HF_LAYER = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "q_proj",
            "self_attn.k_proj.weight": "k_proj", "self_attn.v_proj.weight": "v_proj",
            "self_attn.o_proj.weight": "o_proj", "self_attn.q_proj.bias": "q_bias", "self_attn.k_proj.bias": "k_bias",
            "self_attn.v_proj.bias": "v_bias", "self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm",
            "post_attention_layernorm.weight": "mlp_norm", "mlp.gate_proj.weight": "gate_proj",
            "mlp.up_proj.weight": "up_proj", "mlp.down_proj.weight": "down_proj"}
GGUF_TOP = {"token_embd.weight": "embed", "output_norm.weight": "final_norm", "output.weight": "lm_head"}
HF_TOP = {"embed_tokens.weight": "embed", "norm.weight": "final_norm", "lm_head.weight": "lm_head"}
RUNTIME_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order (pairs interleaved per head) back to Hugging Face's halves."""
    rows = w.shape[0]
    half = rows // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def wanted_names(cfg: ModelConfig, blocks: range) -> set[str]:
    """Canonical tensor names that blocks [start, end) need (block 0 embed, L+1 head)."""
    names: set[str] = set()
    last = cfg.num_layers + 1
    for b in blocks:
        if b == 0:
            names.add("embed")
        elif b == last:
            names |= {"final_norm", "lm_head" if not cfg.tied_embeddings else "embed"}
        else:
            names |= {f"layers.{b - 1}.{n}" for n in set(GGUF_LAYER.values())}
    return names


_READERS: dict[tuple, object] = {}  # one parsed GGUF per file version in this process


def _reader(path: Path):
    """gguf's reader for `path`, parsed once per process and file version: parsing every metadata field (a
    49,152-entry vocabulary) takes seconds, and quantize / mixed precision / merge each open the file again."""
    import gguf

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _READERS:
        if len(_READERS) >= 4:
            _READERS.pop(next(iter(_READERS)))
        _READERS[key] = gguf.GGUFReader(str(path))
    return _READERS[key]


class GGUFWeights:
    def __init__(self, path: str | Path, cfg: ModelConfig):
        self.path, self.cfg = Path(path), cfg
        self.reader = _reader(self.path)
        self.arch = str(self.reader.fields["general.architecture"].contents())
        self.by_name = {t.name: t for t in self.reader.tensors}

    def load(self, names: set[str]) -> dict[str, torch.Tensor]:
        from gguf.quants import dequantize

        out = {}
        for gname, t in self.by_name.items():
            c = _canonical(gname, GGUF_TOP, "blk.", GGUF_LAYER)
            if c is None or c not in names:
                continue
            arr = dequantize(t.data, t.tensor_type)
            w = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True)).reshape(
                [int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else [int(t.shape[0])])
            if self.arch in ("llama", "mistral") and c.endswith(("q_proj", "k_proj")):
                heads = self.cfg.num_heads if c.endswith("q_proj") else self.cfg.num_kv_heads
                w = _unpermute(w, heads)
            out[c] = w
        return out


class SafetensorsWeights:
    def __init__(self, folder: str | Path, cfg: ModelConfig):
        self.folder, self.cfg = Path(folder), cfg
        self.files = sorted(self.folder.glob("*.safetensors"))
        if not self.files:
            raise ChipfuseError(f"{folder}: no *.safetensors files")

    def load(self, names: set[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        out = {}
        for f in self.files:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    c = _canonical(key.removeprefix("model."), HF_TOP, "layers.", HF_LAYER)
                    if c is not None and c in names:
                        out[c] = st.get_tensor(key).float()
        return out


def _canonical(key: str, top: dict[str, str], layer_prefix: str, layer_map: dict[str, str]) -> str | None:
    """A file's tensor name as a canonical name, or None for tensors the runtime does not use."""
    if key in top:
        return top[key]
    if key.startswith(layer_prefix):
        _, i, rest = key.split(".", 2)
        if rest in layer_map:
            return f"layers.{i}.{layer_map[rest]}"
    return None


def open_weights(path: str | Path, cfg: ModelConfig):
    p = Path(path)
    if cfg.family not in RUNTIME_FAMILIES:
        raise ChipfuseError(f"the runtime executes {', '.join(RUNTIME_FAMILIES)} models; {cfg.name} is {cfg.family} "
                            f"(`chipfuse plan` still plans it)")
    if p.suffix == ".gguf":
        return GGUFWeights(p, cfg)
    if p.is_dir():
        return SafetensorsWeights(p, cfg)
    raise ChipfuseError(f"{p}: give a .gguf file or a folder with config.json and *.safetensors")


def projection_widths(cfg: ModelConfig, q_dim: int | None = None, kv_dim: int | None = None) -> dict[str, int]:
    """Output width of each projection that may share one fused weight (q, k, v; gate, up), so the adapters of a
    fused weight know their columns (the serving path and training; `q_dim`/`kv_dim` for a shard's heads)."""
    q = cfg.num_heads * cfg.head_dim if q_dim is None else q_dim
    kv = cfg.num_kv_heads * cfg.head_dim if kv_dim is None else kv_dim
    return {"q_proj": q, "k_proj": kv, "v_proj": kv, "gate_proj": cfg.intermediate_size,
            "up_proj": cfg.intermediate_size}
