"""LoRA training of one die's blocks: the frozen base at the die's precision, FP32 adapters on top.

A `TrainStage` holds blocks [start, end) of a Llama-family model for training: its base weights are the
values the die holds in its format (quantized, scales rounded as the kernels keep them, dequantized: the
QLoRA arrangement), frozen; each target projection of each layer gets adapters A [r, in] and B [out, r]
with y = W x + (alpha / r) B A dropout(x). Its forward is differentiable in its input hidden state and
its adapters, so a die can take the gradient of its output from the next die and pass the gradient of
its input to the previous one. Given every block, the same class is the single-process reference.

Initialisation and dropout come from seeds of (job seed, layer, module[, step, micro-batch]), never from
a global generator, so any split of the layers over dies draws the same numbers.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..frontends.config import ModelConfig
from ..plan.train import LoraSpec
from ..quant.formats import Format
from ..quant.quantize import QuantizedInt4, QuantizedInt8, dequantize, quantize
from .weights import projection_widths, wanted_names

IGNORE = -100  # a label the loss skips (prompt and padding tokens)
HF_NAMES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
            "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
            "down_proj": "mlp.down_proj"}


def seed_of(*parts: object) -> int:
    """A 63-bit seed from any parts, the same in every process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def held_values(w: torch.Tensor, fmt: Format, codes=None) -> torch.Tensor:
    """FP32 values of `w` as a die holds it in `fmt` (a checkpoint's `codes` if given): the kernels keep INT4
    and INT8 scales in bfloat16, so they are rounded so here too."""
    c = codes if codes is not None else quantize(w, fmt)
    if isinstance(c, QuantizedInt4):
        c = QuantizedInt4(c.q, c.scale.to(torch.bfloat16).float(), c.zero.to(torch.bfloat16).float(), c.group)
    elif isinstance(c, QuantizedInt8):
        c = QuantizedInt8(c.q, c.scale.to(torch.bfloat16).float())
    return dequantize(c)[:, : w.shape[1]].contiguous()


class Adapter:
    """A [r, in] and B [out, r] of one projection (B starts at zero: training starts at the base model)."""

    def __init__(self, in_features: int, out_features: int, spec: LoraSpec, seed: int):
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(in_features)  # Kaiming-uniform with a = sqrt(5), as nn.Linear and peft start A
        self.a = (torch.rand(spec.rank, in_features, generator=g) * 2 - 1).mul_(bound).requires_grad_()
        self.b = torch.zeros(out_features, spec.rank, requires_grad=True)
        self.scale, self.dropout = spec.scale, spec.dropout

    def delta(self, x: torch.Tensor, seed: int | None) -> torch.Tensor:
        """scale * B A dropout(x); `seed` draws the dropout mask (None: no dropout, as in evaluation)."""
        if self.dropout > 0 and seed is not None:
            g = torch.Generator().manual_seed(seed)
            keep = torch.rand(x.shape, generator=g) >= self.dropout
            x = x * keep / (1.0 - self.dropout)
        return F.linear(F.linear(x, self.a), self.b) * self.scale


class _Layer:
    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], i: int, fmt: Format, quantized: dict):
        p = f"layers.{i}."

        def held(name: str) -> torch.Tensor:
            return held_values(w[p + name], fmt, quantized.get(p + name))

        self.attn_norm, self.mlp_norm = w[p + "attn_norm"].float(), w[p + "mlp_norm"].float()
        self.q_norm, self.k_norm = w.get(p + "q_norm"), w.get(p + "k_norm")
        biases = [w.get(p + n) for n in ("q_bias", "k_bias", "v_bias")]
        self.qkv_bias = torch.cat(biases).float() if all(b is not None for b in biases) else None
        self.qkv = torch.cat([held("q_proj"), held("k_proj"), held("v_proj")])  # one product for q, k and v
        self.o = held("o_proj")
        self.gate_up = torch.cat([held("gate_proj"), held("up_proj")])
        self.down = held("down_proj")
        self.adapters: dict[str, Adapter] = {}


class TrainStage:
    """Blocks [start, end) for training: 0 = embedding, 1..L = layers, L+1 = final norm + head + loss."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], blocks: tuple[int, int], fmt: Format,
                 spec: LoraSpec, seed: int, head_fmt: Format | None = None,
                 layer_formats: dict[int, Format] | None = None, quantized: dict | None = None,
                 checkpointing: bool = False):
        self.cfg, self.blocks, self.spec, self.seed, self.checkpointing = cfg, blocks, spec, seed, checkpointing
        start, end = blocks
        last = cfg.num_layers + 1
        self.has_embedding, self.has_head = start == 0, end == last + 1
        self.layer_ids = [b - 1 for b in range(max(start, 1), min(end, last))]
        missing = wanted_names(cfg, range(start, end)) - set(weights) - {
            f"layers.{i}.{n}" for i in self.layer_ids for n in ("q_bias", "k_bias", "v_bias", "q_norm", "k_norm")}
        if missing:
            raise KeyError(f"weights missing for blocks {blocks}: {sorted(missing)[:5]}")
        quantized = quantized or {}
        layer_formats = layer_formats or {}
        head_fmt = head_fmt or fmt
        self.layers = [_Layer(cfg, weights, i, layer_formats.get(i, fmt), quantized) for i in self.layer_ids]
        from ..plan.train import adapter_shapes

        shapes = adapter_shapes(cfg, spec)
        for i, layer in zip(self.layer_ids, self.layers):
            for t in spec.targets:
                fin, fout = shapes[t]
                layer.adapters[t] = Adapter(fin, fout, spec, seed_of(seed, "init", i, t))
        self.embed = held_values(weights["embed"], head_fmt) if self.has_embedding else None
        if self.has_head:
            self.final_norm = weights["final_norm"].float()
            table = weights["embed"] if cfg.tied_embeddings else weights["lm_head"]
            self.head = self.embed if self.has_embedding and cfg.tied_embeddings else held_values(table, head_fmt)
        hd = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        self._inv_freq = inv
        self._rope_len = 0

    # ---- the adapters, by peft's names ----
    def named_adapters(self) -> dict[str, torch.Tensor]:
        """Every adapter tensor by its name in peft's layout (base_model.model.model.layers.I.self_attn.q_proj.
        lora_A.weight, ...), so a checkpoint, a gradient or the optimiser state is a flat dict."""
        out = {}
        for i, layer in zip(self.layer_ids, self.layers):
            for t, ad in layer.adapters.items():
                base = f"base_model.model.model.layers.{i}.{HF_NAMES[t]}"
                out[f"{base}.lora_A.weight"], out[f"{base}.lora_B.weight"] = ad.a, ad.b
        return out

    def parameters(self) -> list[torch.Tensor]:
        return list(self.named_adapters().values())

    def load_adapters(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set this stage's adapters from `tensors` (peft names); every one of them must be there, shaped alike."""
        for name, p in self.named_adapters().items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"adapter tensor {name}: expected shape {tuple(p.shape)}, found "
                                 f"{'none' if t is None else tuple(t.shape)}")
            with torch.no_grad():
                p.copy_(t.float())

    # ---- compute ----
    def _rope(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        ang = torch.outer(torch.arange(t, dtype=torch.float64), self._inv_freq)
        cos = torch.cat([ang.cos(), ang.cos()], -1).float()
        sin = torch.cat([ang.sin(), ang.sin()], -1).float()
        return cos[None, None], sin[None, None]  # [1, 1, T, hd]: broadcast over batch and heads

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rms_norm_eps)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def forward(self, inp: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
        """ids [B, T] or hidden [B, T, H] -> hidden [B, T, H], or logits [B, T, V] at the head.
        `key` (step, micro-batch) seeds dropout; None turns it off (evaluation)."""
        x = F.embedding(inp, self.embed) if self.has_embedding else inp
        if self.layers:
            rope = self._rope(x.shape[1])
            for i, layer in zip(self.layer_ids, self.layers):
                if self.checkpointing and torch.is_grad_enabled():
                    x = checkpoint(self._layer, layer, i, x, rope, key, use_reentrant=False)
                else:
                    x = self._layer(layer, i, x, rope, key)
        if not self.has_head:
            return x
        return F.linear(self._norm(x, self.final_norm), self.head)

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed next-token cross-entropy over labelled positions (labels [B, T], IGNORE where unscored)."""
        v = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=IGNORE,
                               reduction="sum")

    def _proj(self, layer: _Layer, i: int, names: tuple[str, ...], w: torch.Tensor, x: torch.Tensor,
              key: tuple | None) -> torch.Tensor:
        y = F.linear(x, w)
        if not any(n in layer.adapters for n in names):
            return y
        parts, col = [], 0
        for n, size in zip(names, self._split_sizes(names, w.shape[0])):
            part = y[..., col: col + size]
            ad = layer.adapters.get(n)
            if ad is not None:
                part = part + ad.delta(x, None if key is None else seed_of(self.seed, "dropout", *key, i, n))
            parts.append(part)
            col += size
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _split_sizes(self, names: tuple[str, ...], rows: int) -> list[int]:
        """Output widths of the projections fused in one weight (q, k, v or gate, up)."""
        by = projection_widths(self.cfg)
        return [by[n] for n in names] if len(names) > 1 else [rows]

    def _layer(self, layer: _Layer, i: int, x: torch.Tensor, rope, key: tuple | None) -> torch.Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = self._norm(x, layer.attn_norm)
        qkv = self._proj(layer, i, ("q_proj", "k_proj", "v_proj"), layer.qkv, h, key)
        if layer.qkv_bias is not None:
            qkv = qkv + layer.qkv_bias
        q = qkv[..., : nh * hd].view(b, t, nh, hd).transpose(1, 2)
        k = qkv[..., nh * hd: (nh + nkv) * hd].view(b, t, nkv, hd).transpose(1, 2)
        v = qkv[..., (nh + nkv) * hd:].view(b, t, nkv, hd).transpose(1, 2)
        if layer.q_norm is not None:
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        q, k = self._rotate(q, *rope), self._rotate(k, *rope)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b, t, nh * hd)
        x = x + self._proj(layer, i, ("o_proj",), layer.o, o, key)
        h = self._norm(x, layer.mlp_norm)
        gu = self._proj(layer, i, ("gate_proj", "up_proj"), layer.gate_up, h, key)
        inter = cfg.intermediate_size
        act = F.silu(gu[..., :inter]) * gu[..., inter:]
        return x + self._proj(layer, i, ("down_proj",), layer.down, act, key)


def load_stage(path, cfg: ModelConfig, blocks: tuple[int, int], fmt: Format, spec: LoraSpec, seed: int,
               head_fmt: Format | None = None, layer_formats: dict[int, Format] | None = None,
               quantized_path: str | None = None, checkpointing: bool = False) -> TrainStage:
    """A TrainStage read from the model file (GGUF or a folder), optionally with a quantized checkpoint's codes."""
    from .weights import open_weights

    names = wanted_names(cfg, range(*blocks))
    weights = open_weights(path, cfg).load(names)
    quantized = None
    if quantized_path:
        from ..quant.checkpoint import load_quantized

        quantized = load_quantized(quantized_path, set(names))
    return TrainStage(cfg, weights, blocks, fmt, spec, seed, head_fmt, layer_formats, quantized, checkpointing)
