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
from ..quant.quantize import CODECS, held_dtype, quantize
from .kernels import HELD, KERNELS, Int4Partial, Linear, make_embedding, make_linear, refine_top
from .weights import projection_widths, wanted_names


@dataclass(frozen=True)
class Segment:
    """A sequence's part of a micro-batch: its KV slot, first position, and token count."""

    slot: int
    pos: int
    n: int


@dataclass(frozen=True)
class ShardSpec:
    """The part of every layer a tensor-parallel die holds, as [first, count] spans (plan.Shard): whole KV
    groups with their query heads, a run of MLP columns and, with the head, a run of vocabulary rows."""

    kv_heads: tuple[int, int]
    mlp_columns: tuple[int, int]
    vocab: tuple[int, int] | None = None


def _codes(w: dict, names: list[str], fmt: Format, quantized: dict):
    """The codes of the rows of `names` stacked: a checkpoint's if all are there, else round-to-nearest of FP32."""
    if quantized and all(n in quantized for n in names):
        codec = CODECS[fmt.family]
        ts = [quantized[n] for n in names]
        if not all(codec.fits(x, fmt) for x in ts):
            raise ChipfuseError(f"the quantized checkpoint holds codes for {names[0]} that do not match its format "
                                f"{fmt.name}")
        return codec.cat(ts)
    return None


def _linear(w: dict, names: list[str], fmt: Format, quantized: dict, rows: torch.Tensor | None = None,
            cols: tuple[int, int] | None = None) -> Linear | None:
    """One kernel for the rows of `names` stacked, or for a tensor shard of them: output `rows`, or input
    columns `cols` = (first, count). A shard holds exactly the whole weight's codes (quantized whole, then cut)."""
    codes = _codes(w, names, fmt, quantized)
    k = w[names[0]].shape[1]
    if rows is None and cols is None:
        if codes is not None:
            return make_linear(None, fmt, codes, in_features=k)
        return make_linear(torch.cat([w[n] for n in names]) if len(names) > 1 else w[names[0]], fmt)
    if codes is None:
        codes = quantize(torch.cat([w[n] for n in names]) if len(names) > 1 else w[names[0]], fmt)
    codec = CODECS[fmt.family]
    if rows is not None:
        return make_linear(None, fmt, codec.take_rows(codes, rows), in_features=k) if len(rows) else None
    assert cols is not None
    if not cols[1]:
        return None
    part, lpad = codec.take_cols(codes, cols[0], cols[0] + cols[1])
    if fmt.family == "int4":  # its output is one part of a sum over the group: summed unrounded
        return Int4Partial(part, fmt, cols[1], lpad)
    return make_linear(None, fmt, part, in_features=cols[1], lpad=lpad)


def _span(first: int, count: int, unit: int, offset: int = 0) -> torch.Tensor:
    return torch.arange(offset + first * unit, offset + (first + count) * unit)


class _Layer:
    round_sum = staticmethod(Linear.round_sum)  # whole layers: nothing to round (a shard's kernel's, below)

    def __init__(self, cfg: ModelConfig, w: dict[str, torch.Tensor], i: int, fmt: Format, quantized: dict | None = None,
                 shard: ShardSpec | None = None):
        p = f"layers.{i}."
        quantized = quantized or {}
        self.attn_norm = w[p + "attn_norm"].float()
        self.mlp_norm = w[p + "mlp_norm"].float()
        self.q_norm = w.get(p + "q_norm")
        self.k_norm = w.get(p + "k_norm")
        biases = [w.get(p + n) for n in ("q_bias", "k_bias", "v_bias")]
        qkv_bias = torch.cat(biases).float() if all(b is not None for b in biases) else None
        qkv, gate_up = [p + "q_proj", p + "k_proj", p + "v_proj"], [p + "gate_proj", p + "up_proj"]
        if shard is None:
            # fused projections: one kernel call for q, k, v and one for gate, up
            self.qkv = _linear(w, qkv, fmt, quantized)
            self.qkv_bias = qkv_bias
            self.o = _linear(w, [p + "o_proj"], fmt, quantized)
            self.gate_up = _linear(w, gate_up, fmt, quantized)
            self.down = _linear(w, [p + "down_proj"], fmt, quantized)
            return
        hd, per = cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
        (k0, kn), (c0, cn) = shard.kv_heads, shard.mlp_columns
        rows = torch.cat([_span(k0 * per, kn * per, hd), _span(k0, kn, hd, cfg.q_dim),
                          _span(k0, kn, hd, cfg.q_dim + cfg.kv_dim)])
        self.qkv = _linear(w, qkv, fmt, quantized, rows=rows)
        self.qkv_bias = qkv_bias[rows] if qkv_bias is not None else None
        self.o = _linear(w, [p + "o_proj"], fmt, quantized, cols=(k0 * per * hd, kn * per * hd))
        cols = torch.cat([_span(c0, cn, 1), _span(c0, cn, 1, cfg.intermediate_size)])
        self.gate_up = _linear(w, gate_up, fmt, quantized, rows=cols)
        self.down = _linear(w, [p + "down_proj"], fmt, quantized, cols=(c0, cn))
        # every die of the group rounds the sums alike, even one holding no heads or columns of this layer
        self.round_sum = KERNELS[fmt.family].linear.round_sum

    def linears(self) -> list[Linear]:
        return [lin for lin in (self.qkv, self.o, self.gate_up, self.down) if lin is not None]


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
                 layer_formats: dict[int, Format] | None = None, quantized: dict | None = None,
                 shard: ShardSpec | None = None):
        """`shard`: hold only this tensor-parallel part of every layer (and of the head's vocabulary); the
        partial outputs are summed by `reduce` and the logits joined by `gather_vocab`, which the worker sets."""
        self.cfg, self.blocks, self.fmt, self.context, self.shard = cfg, blocks, fmt, context, shard
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
        self.layers = [_Layer(cfg, weights, i, layer_formats.get(i, fmt), quantized, shard) for i in self.layer_ids]
        if self.has_head:
            self.final_norm = weights["final_norm"].float()
            table = weights["embed"] if cfg.tied_embeddings else weights["lm_head"]
            if shard is not None and shard.vocab is not None:
                self.head = _linear({"head": table}, ["head"], head_fmt, {}, rows=_span(*shard.vocab, 1))
            else:
                self.head = make_linear(table, head_fmt)
        self.embed = None
        if self.has_embedding:
            if self.has_head and cfg.tied_embeddings and shard is None and self.head.rows(torch.tensor([0])) is not None:
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
        kv_heads = cfg.num_kv_heads if self.shard is None else self.shard.kv_heads[1]
        self.n_kv, self.n_heads = kv_heads, kv_heads * (cfg.num_heads // cfg.num_kv_heads)
        self.q_dim, self.kv_dim = self.n_heads * cfg.head_dim, self.n_kv * cfg.head_dim
        self.lora: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}  # LoRA adapters, by layer index here
        self.capture = None  # optional callback(layer, input name, tensor): calibration statistics
        self.reduce = None  # a tensor shard's sum of partial outputs over its group (set by the worker)
        self.gather_vocab = None  # a tensor shard's join of the group's logits (set by the worker)
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
        self.cfg, self.blocks, self.fmt, self.context, self.shard = cfg, blocks, fmt, context, None
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
            shape = (self.n_kv, self.context, self.cfg.head_dim)
            self.cache[slot] = [(torch.zeros(shape, dtype=self.kv_dtype), torch.zeros(shape, dtype=self.kv_dtype))
                                for _ in self.layers]
            if self._fast is not None:
                self._fast.set_slot(slot, [t for kv in self.cache[slot] for t in kv])
        return self.cache[slot]

    def free(self, slot: int) -> None:
        self.cache.pop(slot, None)
        if self._fast is not None:
            self._fast.free_slot(slot)

    def attach_adapters(self, adapters) -> None:
        """Serve LoRA adapters (runtime.adapters.Adapters) unmerged: each projection adds scale * B (A x), on the
        Python path and in the compiled decode path alike (rebuilt with them on its next use)."""
        if self.shard is not None:
            raise ValueError("tensor-split plans do not serve adapters yet: plan the dies as a pipeline")
        by_id = adapters.for_layers(self.layer_ids)
        self.lora = {li: by_id[i] for li, i in enumerate(self.layer_ids) if i in by_id}
        self._fast, self._fast_tried = None, False

    FUSED = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))

    def _fused_lora(self, li: int, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One (A, B) for the fused projections `names` of layer `li`: A's rows a block per adapter, B
        block-diagonal over the projections' output columns (zeros where a projection has none)."""
        ads = self.lora.get(li, {})
        if not any(n in ads for n in names):
            return None
        widths = projection_widths(self.cfg, self.q_dim, self.kv_dim)
        outs = [widths[n] if len(names) > 1 else None for n in names]
        a_rows, b_blocks = [], []
        for n, w in zip(names, outs):
            if n in ads:
                a, b = ads[n]
                a_rows.append(a)
                b_blocks.append((w if w is not None else b.shape[0], b))
            else:
                b_blocks.append((w, None))
        total_r = sum(a.shape[0] for a in a_rows)
        out_total = sum(w for w, _ in b_blocks)
        big_b = torch.zeros(out_total, total_r)
        row = col = 0
        for w, b in b_blocks:
            if b is not None:
                big_b[row: row + w, col: col + b.shape[1]] = b
                col += b.shape[1]
            row += w
        return torch.cat(a_rows), big_b

    def _with_lora(self, li: int, names: tuple[str, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y (the fused projections `names` of x) plus the adapters' terms, each in its own columns."""
        ads = self.lora.get(li)
        if not ads or not any(n in ads for n in names):
            return y
        widths = projection_widths(self.cfg, self.q_dim, self.kv_dim)
        y = y.clone()
        col = 0
        for n in names:
            w = widths[n] if len(names) > 1 else y.shape[-1]
            if n in ads:
                a, b = ads[n]
                y[..., col: col + w] += (x @ a.t()) @ b.t()
            col += w
        return y

    def _compiled(self):
        """The compiled decode path for these layers (None if unavailable or disabled). A tensor shard takes it
        once its group's `reduce` is set (the C++ loop calls it between each layer's halves), when every layer
        holds all four projections (a shard without heads or columns of some layer stays on the Python path)."""
        if not self._fast_tried:
            if self.shard is not None and (self.reduce is None or any(len(ly.linears()) < 4 for ly in self.layers)):
                return None
            self._fast_tried = True
            from . import fastpath

            mod = fastpath.load()
            if mod is not None and self.layers:
                cfg = self.cfg
                inter = cfg.intermediate_size if self.shard is None else self.shard.mlp_columns[1]
                st = mod.Stage(cfg.hidden_size, self.n_heads, self.n_kv, cfg.head_dim, inter, cfg.rms_norm_eps,
                               self.cos, self.sin)
                for li, ly in enumerate(self.layers):
                    st.add_layer(ly.attn_norm, ly.mlp_norm, ly.qkv_bias, ly.q_norm, ly.k_norm,
                                 *(lin.cpp_spec() for lin in ly.linears()))
                    for which, names in enumerate(self.FUSED):
                        ab = self._fused_lora(li, names)
                        if ab is not None:
                            st.set_lora(li, which, *ab)
                if self.shard is not None:
                    st.set_reduce(self.reduce)
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
        join = self.gather_vocab or (lambda logits: logits)
        if all_logits:
            h = self._norm(x, self.final_norm)
            return join(self.head(h))
        ends = torch.tensor([sum(s.n for s in segs[: i + 1]) - 1 for i in range(len(segs))])
        h = self._norm(x[ends], self.final_norm)
        # a vocabulary shard re-scores its own near-best logits: the group's best is among some shard's
        return join(refine_top(self.head, h, self.head(h)))

    def _layer(self, layer: _Layer, li: int, x: torch.Tensor, rope, segs: list[Segment], caches) -> torch.Tensor:
        """One transformer layer; a tensor shard sums its partial attention and MLP outputs over its group."""
        total = self.reduce or (lambda part: part)
        h = self._norm(x, layer.attn_norm)
        if self.capture is not None:
            self.capture(li, "attn_in", h)
        rnd = layer.round_sum
        x = x + rnd(total(self._attention(layer, li, h, rope, segs, caches) if layer.qkv is not None
                          else torch.zeros_like(x)))
        h = self._norm(x, layer.mlp_norm)
        if self.capture is not None:
            self.capture(li, "mlp_in", h)
        if layer.gate_up is None:
            return x + rnd(total(torch.zeros_like(x)))
        gu = self._with_lora(li, ("gate_proj", "up_proj"), h, layer.gate_up(h))
        inter = gu.shape[1] // 2
        act = F.silu(gu[:, :inter]) * gu[:, inter:]
        if self.capture is not None:
            self.capture(li, "down_in", act)
        return x + rnd(total(self._with_lora(li, ("down_proj",), act, layer.down(act))))

    def _attention(self, layer: _Layer, li: int, h: torch.Tensor, rope, segs: list[Segment], caches) -> torch.Tensor:
        """The attention block's output projection (this die's heads only, for a shard) for normed input `h`."""
        cfg = self.cfg
        t = h.shape[0]
        qkv = self._with_lora(li, ("q_proj", "k_proj", "v_proj"), h, layer.qkv(h))
        if layer.qkv_bias is not None:
            qkv = qkv + layer.qkv_bias
        nh, nkv = self.n_heads, self.n_kv
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
        if self.capture is not None:
            self.capture(li, "o_in", attn)
        return self._with_lora(li, ("o_proj",), attn, layer.o(attn))
