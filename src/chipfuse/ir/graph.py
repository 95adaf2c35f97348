"""A small graph IR: ops with shapes, grouped into blocks (the units a plan places).

Each op knows its work (FLOP), its weight bytes in a format (scales included, via
`quant.formats`), the activation bytes it moves and the KV-cache bytes it keeps per token.
This module is the single source of those numbers: the compiler, the simulator and the
runtime's memory check all call it. No torch, no model loading: it is cheap to sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..quant.formats import Format, Recipe

OP_KINDS = ("embedding", "matmul", "attention", "norm", "elementwise")
# what a tensor-parallel shard takes a part of: whole KV-head groups (with their query heads),
# columns of the MLP's intermediate dimension, rows of the LM head (vocabulary entries)
SHARD_AXES = ("kv_heads", "mlp_columns", "vocab")
ROW_PARALLEL = ("o_proj", "down_proj")  # split along their inputs; their partial outputs are summed


@dataclass(frozen=True)
class Op:
    """One operation. Shapes live in plain fields so the IR serialises to JSON as is.

    matmul: in_features x out_features weight (stored [out, in]); `tied_to` names an
    embedding op whose table it reuses. attention: heads, kv_heads, head_dim, window.
    norm/elementwise: `dim` features, `flop_per_element` each.
    """

    name: str
    kind: str
    block: int
    inputs: tuple[str, ...] = ()
    in_features: int = 0
    out_features: int = 0
    bias: bool = False
    tied_to: str | None = None
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    window: int | None = None
    dim: int = 0
    flop_per_element: float = 1.0
    last_token_only: bool = False  # prefill needs this op for the last position only (LM head)
    # tensor parallelism: the model axis a shard of this op takes a part of (SHARD_AXES; "" = every die
    # of a group runs it whole), and the phase of its block it runs in (each phase ends with the
    # group's collective: attention then MLP in a layer)
    shard_axis: str = ""
    phase: int = 0
    # mixture of experts: a matmul held `experts` times (one weight per expert), each token using `active` of them
    experts: int = 1
    active: int = 1

    def experts_read(self, tokens: int) -> float:
        """Experts whose weights a step of `tokens` tokens reads: all of them for a dense op; for routed experts
        the expected number of distinct ones if each token picks `active` of `experts` uniformly."""
        if self.experts <= 1:
            return 1.0
        return self.experts * (1.0 - (1.0 - self.active / self.experts) ** tokens)

    def shard(self, part: int, whole: int) -> Op:
        """This op as a die holding `part` of `whole` along its shard axis (the op itself if unsharded).

        The sharded width scales exactly: a projection's rows or columns, the attention's heads, an
        elementwise op's features, a per-head norm's FLOP."""
        if not self.shard_axis or part == whole:
            return self
        if self.kind == "attention":
            return self._with(heads=self.heads * part // whole, kv_heads=self.kv_heads * part // whole)
        if self.kind == "matmul":
            # row-parallel projections (o_proj, down_proj) take a part of their inputs, the others of their outputs
            if self.name.endswith(ROW_PARALLEL):
                return self._with(in_features=self.in_features * part // whole)
            return self._with(out_features=self.out_features * part // whole)
        if self.kind == "norm":  # per-head norms: all heads share one weight, the work scales
            return self._with(flop_per_element=self.flop_per_element * part / whole)
        return self._with(dim=self.dim * part // whole)

    def _with(self, **changes) -> Op:
        """A copy with `changes` (dataclasses.replace without re-running __init__: the split search makes many)."""
        new = object.__new__(Op)
        new.__dict__.update(self.__dict__, **changes)
        return new

    # ---- storage ----
    def weight_bytes(self, fmt: Format) -> int:
        """Resident weight bytes in `fmt` (norm weights and biases stay fp32)."""
        if self.kind in ("matmul", "embedding"):
            # a table is stored one row per token ([vocab, hidden]); a matmul weight [out, in]
            rows, cols = (self.in_features, self.out_features) if self.kind == "embedding" else \
                (self.out_features, self.in_features)
            return self.experts * (fmt.matrix_bytes(rows, cols) + (4 * self.out_features if self.bias else 0))
        if self.kind == "norm":
            return 4 * self.dim
        return 0

    def kv_bytes_per_token(self, kv_bytes_per_element: float) -> float:
        """KV-cache bytes one token adds to this op (keys and values)."""
        if self.kind != "attention":
            return 0.0
        return 2 * self.kv_heads * self.head_dim * kv_bytes_per_element

    def span(self, context: int) -> int:
        """Tokens attended to by a query at position `context` (window-limited)."""
        return context if self.window is None else min(context, self.window)


@dataclass(frozen=True)
class Block:
    """A unit of placement: the embedding, one transformer layer, or the LM head."""

    index: int
    name: str
    kind: str  # embedding | layer | head | node (CV)
    layer: int | None = None


@dataclass(frozen=True)
class Workload:
    """One step of work: `seqs` sequences each adding `new_tokens` after `past_tokens` cached."""

    seqs: int
    new_tokens: int
    past_tokens: int

    @staticmethod
    def prefill(prompt_tokens: int, seqs: int = 1) -> Workload:
        return Workload(seqs, prompt_tokens, 0)

    @staticmethod
    def decode(context: int, seqs: int = 1) -> Workload:
        """A decode step whose new token sees `context` tokens (itself included)."""
        return Workload(seqs, 1, max(context - 1, 0))

    @property
    def tokens(self) -> int:
        return self.seqs * self.new_tokens


@dataclass
class Graph:
    """Ops in execution order, and the blocks they belong to."""

    name: str
    ops: list[Op]
    blocks: list[Block]
    hidden_features: dict[int, int] = field(default_factory=dict)  # block -> output features
    meta: dict = field(default_factory=dict)
    # figures derived from the (never mutated) ops, kept for the split search, which asks for them many times
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def block_ops(self, b: int) -> list[Op]:
        return [op for op in self.ops if op.block == b]

    @cached_property
    def op_block(self) -> np.ndarray:
        return np.array([op.block for op in self.ops], dtype=np.int64)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def op(self, name: str) -> Op:
        return next(o for o in self.ops if o.name == name)

    @property
    def shard_widths(self) -> dict[str, int]:
        """The whole width of each shard axis (KV heads, MLP columns, vocabulary), as the builder set it."""
        return dict(self.meta.get("shard_widths", {}))

    def sharded(self, parts: dict[str, int]) -> Graph:
        """The graph one die of a tensor group runs: every sharded op cut to `parts[axis]` of its axis."""
        widths = self.shard_widths
        if all(parts.get(a, w) == w for a, w in widths.items()):
            return self
        key = ("sharded", tuple(sorted(parts.items())))
        if key not in self.memo:
            ops = [op.shard(parts.get(op.shard_axis, widths[op.shard_axis]), widths[op.shard_axis])
                   if op.shard_axis else op for op in self.ops]
            self.memo[key] = Graph(self.name, ops, self.blocks, self.hidden_features, self.meta)
        return self.memo[key]


@dataclass(frozen=True)
class OpCosts:
    """Per-op work of one workload, as arrays aligned with `graph.ops`.

    `weight_flop` runs at the weight format's precision (matmuls); `act_flop` at the die's
    activation precision (attention, norms, elementwise). `read_bytes` is DRAM traffic of
    the step: weights streamed once per step, activations and the KV cache.
    """

    weight_flop: np.ndarray
    act_flop: np.ndarray
    read_bytes: np.ndarray
    weight_bytes: np.ndarray
    kv_bytes_per_token: np.ndarray


def _attn_positions(op: Op, w: Workload) -> float:
    """Sum over new tokens of the positions each attends to (causal, window-limited)."""
    total = 0.0
    if op.window is None:
        a, b = w.past_tokens + 1, w.past_tokens + w.new_tokens
        total = (a + b) * w.new_tokens / 2
    else:
        for t in range(w.past_tokens + 1, w.past_tokens + w.new_tokens + 1):
            total += min(t, op.window)
    return total * w.seqs


def op_costs(graph: Graph, fmt: Format | Recipe, w: Workload, act_element_bytes: float = 2.0, kv_element_bytes: float = 2.0) -> OpCosts:
    """Work and bytes of every op for one step of `w` with weights held as `fmt` (a format or a recipe)."""
    recipe = Recipe.of(fmt)
    n = len(graph.ops)
    wf, af, rb, wb, kv = (np.zeros(n) for _ in range(5))
    for i, op in enumerate(graph.ops):
        tok = w.seqs if op.last_token_only else w.tokens
        fmt = recipe.for_op(op)
        if op.kind == "matmul":
            wf[i] = 2.0 * op.in_features * op.out_features * tok * op.active
            # a tied head reads the same table as the embedding: same bytes, counted here
            wb[i] = op.weight_bytes(fmt)  # a tied head on another die needs its own copy
            # routed experts: only the experts the step's tokens pick are read
            read_w = wb[i] if op.experts <= 1 else wb[i] / op.experts * op.experts_read(tok)
            rb[i] = read_w + tok * op.active * (op.in_features + op.out_features) * act_element_bytes
        elif op.kind == "embedding":
            wb[i] = op.weight_bytes(fmt)
            rb[i] = tok * op.out_features * (fmt.bits / 8 + act_element_bytes)  # one row per token
        elif op.kind == "attention":
            pos = _attn_positions(op, w)
            af[i] = 4.0 * op.heads * op.head_dim * pos  # QK^T and AV, 2 FLOP per MAC
            kv[i] = op.kv_bytes_per_token(kv_element_bytes)
            # the cache (past and new keys/values) streams once per sequence and step, tiled
            # over all its query heads and new tokens (flash-attention style), then is written
            reads = w.seqs * op.span(w.past_tokens + w.new_tokens)
            rb[i] = reads * kv[i] + tok * (kv[i] + 2 * op.heads * op.head_dim * act_element_bytes)
        else:  # norm, elementwise
            af[i] = op.flop_per_element * op.dim * tok
            wb[i] = op.weight_bytes(fmt)
            rb[i] = wb[i] + 2 * tok * op.dim * act_element_bytes
    return OpCosts(wf, af, rb, wb, kv)


def block_sums(graph: Graph, values: np.ndarray) -> np.ndarray:
    """Sum a per-op array into a per-block array."""
    return np.bincount(graph.op_block, weights=values, minlength=graph.n_blocks)


def kv_cache_bytes(graph: Graph, kv_element_bytes: float, context: int, seqs: int) -> np.ndarray:
    """Per-block KV-cache bytes for `seqs` sequences of `context` tokens (windows respected)."""
    key = ("kv_cache_bytes", kv_element_bytes, context, seqs)
    if key not in graph.memo:
        out = np.zeros(graph.n_blocks)
        for op in graph.ops:
            if op.kind == "attention":
                out[op.block] += seqs * op.span(context) * op.kv_bytes_per_token(kv_element_bytes)
        graph.memo[key] = out
    return graph.memo[key].copy()


def block_weight_bytes(graph: Graph, fmt: Format | Recipe) -> np.ndarray:
    """Resident weight bytes per block, each block counted as if alone on its die."""
    r = Recipe.of(fmt)
    key = ("block_weight_bytes", r)
    if key not in graph.memo:
        graph.memo[key] = block_sums(graph, np.array([op.weight_bytes(r.for_op(op)) for op in graph.ops], dtype=float))
    return graph.memo[key].copy()


def tied_shared_bytes(graph: Graph, fmt: Format | Recipe, blocks: range) -> float:
    """Bytes saved when a tied LM head and its embedding sit on the same die (one copy).

    The runtime reads embedding rows out of the head's own weights for every format but
    packed INT4, whose kernel layout cannot be read by row; there both copies are held."""
    r = Recipe.of(fmt)
    if r.head.family == "int4":
        return 0.0
    names = {op.name: op for op in graph.ops}
    return float(sum(op.weight_bytes(r.for_op(op)) for op in graph.ops
                     if op.tied_to and op.block in blocks and names[op.tied_to].block in blocks))


def workspace_bytes(graph: Graph, blocks: range, tokens: int, seqs: int, act_element_bytes: float) -> float:
    """Activation buffers a die needs: a few of its widest activations for a prefill chunk of
    `tokens`, plus fp32 logits for `seqs` sequences where it holds the LM head."""
    key = ("workspace_bytes", blocks.start, blocks.stop, tokens, seqs, act_element_bytes)
    if key in graph.memo:
        return graph.memo[key]
    width, logits = 0, 0.0
    for op in graph.ops:
        if op.block not in blocks:
            continue
        if op.last_token_only and op.kind == "matmul":
            logits = 4.0 * seqs * op.out_features
        elif op.kind in ("matmul", "embedding"):
            width = max(width, op.out_features if op.kind == "embedding" else max(op.in_features, op.out_features))
    graph.memo[key] = 4 * tokens * width * act_element_bytes + logits
    return graph.memo[key]
