"""One die's share of a Llama-family model: its blocks' weights in its precision, and its KV cache.

A `StageModel` runs "my blocks" for a micro-batch of sequences: token ids in (if it holds the
embedding) or a hidden state; a hidden state out, or logits of each sequence's last token
(if it holds the LM head). The same class, given every block, is the single-process
reference the distributed runtime is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ChipfuseError
from ..frontends.config import ModelConfig
from ..quant.formats import Format, get_format
from ..quant.formats import kv_precision as kv_format_name
from ..quant.quantize import CODECS, held_dtype
from .kernels import HELD, Linear, make_embedding, make_linear, refine_top
from .weights import wanted_names


@dataclass(frozen=True)
class Segment:
    """A sequence's part of a micro-batch: its KV slot, first position, and token count."""

    slot: int
    pos: int
    n: int


def _linear(w: dict, names: list[str], fmt: Format, quantized: dict) -> Linear:
    """One kernel for the rows of `names` stacked: from a checkpoint's codes if all are there, else from FP32."""
    if quantized and all(n in quantized for n in names):
        codec = CODECS[fmt.family]
        ts = [quantized[n] for n in names]
        if not all(codec.fits(x, fmt) for x in ts):
            raise ChipfuseError(f"the quantized checkpoint holds codes for {names[0]} that do not match its format "
                                f"{fmt.name}")
        return make_linear(None, fmt, codec.cat(ts), in_features=w[names[0]].shape[1])
    return make_linear(torch.cat([w[n] for n in names]) if len(names) > 1 else w[names[0]], fmt)


class _Layer:
    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], i: int, fmt: Format, quantized: dict | None = None):
        p = f"layers.{i}."
        quantized = quantized or {}
        self.attn_norm = w[p + "attn_norm"].float()
        self.mlp_norm = w[p + "mlp_norm"].float()
        # fused projections: one kernel call for q, k, v and one for gate, up
        self.qkv = _linear(w, [p + "q_proj", p + "k_proj", p + "v_proj"], fmt, quantized)
        biases = [w.get(p + n) for n in ("q_bias", "k_bias", "v_bias")]
        self.qkv_bias = torch.cat(biases).float() if all(b is not None for b in biases) else None
        self.q_norm = w.get(p + "q_norm")
        self.k_norm = w.get(p + "k_norm")
        self.o = _linear(w, [p + "o_proj"], fmt, quantized)
        self.gate_up = _linear(w, [p + "gate_proj", p + "up_proj"], fmt, quantized)
        self.down = _linear(w, [p + "down_proj"], fmt, quantized)

    def linears(self) -> list[Linear]:
        return [self.qkv, self.o, self.gate_up, self.down]


class _TiedEmbedding:
    """Token embedding read from the LM head's own weight rows (tied models, same die)."""

    resident_bytes = 0

    def __init__(self, head: Linear):
        self.head = head

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head.rows(ids)


class StageModel:
    """Blocks [start, end) of the model: 0 = embedding, 1..L = layers, L+1 = final norm + head."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], blocks: tuple[int, int], fmt: Format,
                 context: int, kv_precision: str = "fp16", head_fmt: Format | None = None,
                 layer_formats: dict[int, Format] | None = None, quantized: dict | None = None):
        self.cfg, self.blocks, self.fmt, self.context = cfg, blocks, fmt, context
        head_fmt = head_fmt or fmt
        start, end = blocks
        last = cfg.num_layers + 1
        self.has_embedding = start == 0
        self.has_head = end == last + 1
        self.layer_ids = [b - 1 for b in range(max(start, 1), min(end, last))]
        missing = wanted_names(cfg, range(start, end)) - set(weights) - {
            f"layers.{i}.{n}" for i in self.layer_ids for n in ("q_bias", "k_bias", "v_bias", "q_norm", "k_norm")}
        if missing:
            raise KeyError(f"weights missing for blocks {blocks}: {sorted(missing)[:5]}")
        layer_formats = layer_formats or {}
        self.layers = [_Layer(cfg, weights, i, layer_formats.get(i, fmt), quantized) for i in self.layer_ids]
        if self.has_head:
            self.final_norm = weights["final_norm"].float()
            self.head = make_linear(weights["embed"] if cfg.tied_embeddings else weights["lm_head"], head_fmt)
        self.embed = None
        if self.has_embedding:
            if self.has_head and cfg.tied_embeddings and self.head.rows(torch.tensor([0])) is not None:
                self.embed = _TiedEmbedding(self.head)  # one copy of the table serves both
            else:
                self.embed = make_embedding(weights["embed"], head_fmt)
        self._init_runtime(kv_precision)

    def _init_runtime(self, kv_precision: str) -> None:
        """KV cache, rotary tables and the compiled path's slot: what a stage needs besides its weights."""
        cfg, context = self.cfg, self.context
        self.kv_dtype = held_dtype(get_format(kv_format_name(kv_precision)))
        self.cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        hd = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.outer(torch.arange(context, dtype=torch.float64), inv)
        self.cos = torch.cat([ang.cos(), ang.cos()], -1).float()
        self.sin = torch.cat([ang.sin(), ang.sin()], -1).float()
        self.q_dim, self.kv_dim = cfg.q_dim, cfg.kv_dim
        self.capture = None  # optional callback(layer, input name, tensor): calibration statistics
        self._fast = None  # the compiled decode path, built on the first one-token step (fastpath.py)
        self._fast_tried = False

    # ---- prepared weights (the packed tensors, for runtime/prepared.py's cache) ----
    def prepared_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Every tensor the stage holds, flat, and a layout saying which kernel class holds which."""
        tensors: dict[str, torch.Tensor] = {}
        layout: dict = {"layers": [], "embed": None, "head": None}

        def put(prefix: str, kernel) -> str:
            for k, t in kernel.state().items():
                tensors[f"{prefix}.{k}"] = t
            return type(kernel).__name__

        for i, ly in zip(self.layer_ids, self.layers):
            p = f"layers.{i}"
            entry = {"index": i, **{n: put(f"{p}.{n}", getattr(ly, n)) for n in ("qkv", "o", "gate_up", "down")}}
            for n in ("attn_norm", "mlp_norm", "qkv_bias", "q_norm", "k_norm"):
                if getattr(ly, n) is not None:
                    tensors[f"{p}.{n}"] = getattr(ly, n)
            layout["layers"].append(entry)
        if self.has_head:
            tensors["final_norm"] = self.final_norm
            layout["head"] = put("head", self.head)
        if self.embed is not None:
            layout["embed"] = "tied" if isinstance(self.embed, _TiedEmbedding) else put("embed", self.embed)
        return tensors, layout

    @classmethod
    def from_prepared(cls, cfg: ModelConfig, tensors: dict[str, torch.Tensor], layout: dict, blocks: tuple[int, int],
                      fmt: Format, context: int, kv_precision: str = "fp16", head_fmt: Format | None = None) -> StageModel:
        """The stage exactly as `prepared_state` saw it, from its tensors: no dequantizing, no packing."""
        self = cls.__new__(cls)
        self.cfg, self.blocks, self.fmt, self.context = cfg, blocks, fmt, context
        start, end = blocks
        last = cfg.num_layers + 1
        self.has_embedding, self.has_head = start == 0, end == last + 1
        self.layer_ids = [b - 1 for b in range(max(start, 1), min(end, last))]
        if [e["index"] for e in layout["layers"]] != self.layer_ids:
            raise ValueError(f"prepared layers {[e['index'] for e in layout['layers']]} are not {self.layer_ids}")

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + ".")}

        self.layers = []
        for e in layout["layers"]:
            p = f"layers.{e['index']}"
            ly = _Layer.__new__(_Layer)
            for n in ("qkv", "o", "gate_up", "down"):
                setattr(ly, n, HELD[e[n]].from_state(group(f"{p}.{n}")))
            for n in ("attn_norm", "mlp_norm", "qkv_bias", "q_norm", "k_norm"):
                setattr(ly, n, tensors.get(f"{p}.{n}"))
            self.layers.append(ly)
        if self.has_head:
            self.final_norm = tensors["final_norm"]
            self.head = HELD[layout["head"]].from_state(group("head"))
        self.embed = None
        if self.has_embedding:
            self.embed = _TiedEmbedding(self.head) if layout["embed"] == "tied" else \
                HELD[layout["embed"]].from_state(group("embed"))
        self._init_runtime(kv_precision)
        return self

    # ---- memory ----
    def resident_weight_bytes(self) -> int:
        n = self.embed.resident_bytes if self.embed else 0
        for layer in self.layers:
            n += sum(lin.resident_bytes for lin in layer.linears())
            n += 4 * (layer.attn_norm.numel() + layer.mlp_norm.numel())
        if self.has_head:
            n += self.head.resident_bytes + 4 * self.final_norm.numel()
        return n

    def kv_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for slot in self.cache.values() for k, _ in slot)

    def _slot(self, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if slot not in self.cache:
            shape = (self.cfg.num_kv_heads, self.context, self.cfg.head_dim)
            self.cache[slot] = [(torch.zeros(shape, dtype=self.kv_dtype), torch.zeros(shape, dtype=self.kv_dtype))
                                for _ in self.layers]
            if self._fast is not None:
                self._fast.set_slot(slot, [t for kv in self.cache[slot] for t in kv])
        return self.cache[slot]

    def free(self, slot: int) -> None:
        self.cache.pop(slot, None)
        if self._fast is not None:
            self._fast.free_slot(slot)

    def _compiled(self):
        """The compiled decode path for these layers (None if unavailable or disabled)."""
        if not self._fast_tried:
            self._fast_tried = True
            from . import fastpath

            mod = fastpath.load()
            if mod is not None and self.layers:
                cfg = self.cfg
                st = mod.Stage(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                               cfg.intermediate_size, cfg.rms_norm_eps, self.cos, self.sin)
                for ly in self.layers:
                    st.add_layer(ly.attn_norm, ly.mlp_norm, ly.qkv_bias, ly.q_norm, ly.k_norm,
                                 *(lin.cpp_spec() for lin in ly.linears()))
                for slot, kv in self.cache.items():
                    st.set_slot(slot, [t for pair in kv for t in pair])
                self._fast = st
        return self._fast

    # ---- compute ----
    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rms_norm_eps)

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary embedding (Hugging Face's half rotation) on [T, heads, head_dim]."""
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    @torch.inference_mode()
    def forward(self, inp: torch.Tensor, segs: list[Segment], all_logits: bool = False) -> torch.Tensor:
        """ids [T] (int64) or hidden [T, H] -> hidden [T, H], or logits [len(segs), V] at the head
        (every position's logits [T, V] with `all_logits`, for scoring)."""
        for s in segs:
            if s.pos + s.n > self.context:
                raise ValueError(f"sequence in slot {s.slot} would reach {s.pos + s.n} tokens; context is {self.context}")
        x = self.embed.lookup(inp) if self.has_embedding else inp.float()
        if self.layers:
            pos = torch.cat([torch.arange(s.pos, s.pos + s.n) for s in segs]) if len(segs) > 1 else \
                torch.arange(segs[0].pos, segs[0].pos + segs[0].n)
            caches = [self._slot(s.slot) for s in segs]
            if all(s.n == 1 for s in segs) and self.capture is None and self._compiled() is not None:
                x = self._fast.forward(x, [s.slot for s in segs], [s.pos for s in segs])
                return self._finish(x, segs, all_logits)
            rope = (self.cos[pos][:, None, :], self.sin[pos][:, None, :])  # shared by every layer
            for li, layer in enumerate(self.layers):
                x = self._layer(layer, li, x, rope, segs, caches)
        return self._finish(x, segs, all_logits)

    def _finish(self, x: torch.Tensor, segs: list[Segment], all_logits: bool) -> torch.Tensor:
        """The hidden state out, or the head's logits (each sequence's last token, or every position)."""
        if not self.has_head:
            return x
        if all_logits:
            h = self._norm(x, self.final_norm)
            return self.head(h)
        ends = torch.tensor([sum(s.n for s in segs[: i + 1]) - 1 for i in range(len(segs))])
        h = self._norm(x[ends], self.final_norm)
        return refine_top(self.head, h, self.head(h))

    def _layer(self, layer: _Layer, li: int, x: torch.Tensor, rope, segs: list[Segment], caches) -> torch.Tensor:
        cfg = self.cfg
        t = x.shape[0]
        h = self._norm(x, layer.attn_norm)
        if self.capture is not None:
            self.capture(li, "attn_in", h)
        qkv = layer.qkv(h)
        if layer.qkv_bias is not None:
            qkv = qkv + layer.qkv_bias
        nh, nkv = cfg.num_heads, cfg.num_kv_heads
        qk = qkv[:, : self.q_dim + self.kv_dim].view(t, nh + nkv, cfg.head_dim)
        v = qkv[:, self.q_dim + self.kv_dim:].view(t, nkv, cfg.head_dim)
        if layer.q_norm is not None:
            qk = torch.cat([self._norm(qk[:, :nh], layer.q_norm), self._norm(qk[:, nh:], layer.k_norm)], 1)
        qk = self._rope(qk, *rope)  # queries and keys rotated in one pass
        q, k = qk[:, :nh], qk[:, nh:]
        outs = []
        row = 0
        for s, cache in zip(segs, caches):
            kc, vc = cache[li]
            kc[:, s.pos: s.pos + s.n] = k[row: row + s.n].transpose(0, 1)
            vc[:, s.pos: s.pos + s.n] = v[row: row + s.n].transpose(0, 1)
            keys = kc[:, : s.pos + s.n].float()
            vals = vc[:, : s.pos + s.n].float()
            qs = q[row: row + s.n].transpose(0, 1)  # [heads, n, hd]
            if s.n == 1:
                o = F.scaled_dot_product_attention(qs[None], keys[None], vals[None], enable_gqa=True)[0]
            else:
                mask = torch.ones(s.n, s.pos + s.n, dtype=torch.bool).tril(diagonal=s.pos)
                o = F.scaled_dot_product_attention(qs[None], keys[None], vals[None], attn_mask=mask, enable_gqa=True)[0]
            outs.append(o.transpose(0, 1).reshape(s.n, self.q_dim))
            row += s.n
        attn = outs[0] if len(outs) == 1 else torch.cat(outs)
        x = x + layer.o(attn)
        h = self._norm(x, layer.mlp_norm)
        gu = layer.gate_up(h)
        inter = gu.shape[1] // 2
        act = F.silu(gu[:, :inter]) * gu[:, inter:]
        if self.capture is not None:
            self.capture(li, "o_in", attn)
            self.capture(li, "mlp_in", h)
            self.capture(li, "down_in", act)
        return x + layer.down(act)
