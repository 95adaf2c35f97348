"""The format registry: every fact about a numeric format that does not need torch, in one table.

A format states its bytes (`matrix_bytes`, read by the planner, the simulator and the packers, so a
plan's byte counts are the bytes the runtime holds), the die precision that runs it, its family, the
dtype its values are held in and the kind code the compiled decode path switches on. The family
names the torch-side entries: `quant.quantize.CODECS[family]` (quantize, dequantize, checkpoint
packing) and `runtime.kernels.KERNELS[family]` (the kernel). A new format of an existing family is
one row in `_build`; a new family adds one codec and one kernel under its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..errors import SpecError


@dataclass(frozen=True)
class Format:
    """A weight storage format.

    `group_size` None means per output channel (one scale per row); 0 means no scale at all.
    Scales and zero points are stored as fp16 (2 bytes) unless `scale_bytes` says otherwise.
    """

    name: str
    precision: str  # the die precision that executes it: int4, int8, fp8, fp16, bf16, fp32
    bits: int
    group_size: int | None = 0
    symmetric: bool = True
    scale_bytes: int = 2
    per_tensor_scale: bool = False
    dtype: str = ""  # torch dtype name of the held values ("" for formats only ever predicted, never run)
    kind: int = -1  # the compiled decode path's kernel kind (csrc/decode.cpp, enum Kind); -1: none
    block: tuple[int, int] | None = None  # GGUF-style: (weights, bytes) of one block along the input dimension

    @property
    def runnable(self) -> bool:
        """The runtime holds and executes it (else it is for planning and prediction only)."""
        return bool(self.dtype)

    @property
    def family(self) -> str:
        """Which codec and kernel hold it: float (fp32/fp16/bf16), fp8, int8 or int4."""
        return FAMILIES[self.precision]

    def matrix_bytes(self, rows: int, cols: int) -> int:
        """Bytes to store a [rows, cols] weight quantised along cols (the input dimension)."""
        if self.block is not None:
            weights, nbytes = self.block
            return rows * math.ceil(cols / weights) * nbytes
        data = math.ceil(rows * cols * self.bits / 8)
        if self.per_tensor_scale:
            return data + 4
        if self.group_size == 0:
            return data
        groups = rows * (1 if self.group_size is None else math.ceil(cols / self.group_size))
        per_group = self.scale_bytes * (1 if self.symmetric else 2)
        return data + groups * per_group

    def bits_per_weight(self, cols: int = 4096) -> float:
        """Storage bits per weight, scales included, for rows of `cols` inputs."""
        return 8 * self.matrix_bytes(1, cols) / cols


FAMILIES = {"fp32": "float", "fp16": "float", "bf16": "float", "fp8": "fp8", "int8": "int8", "int4": "int4"}
# csrc/decode.cpp's enum Kind: which of its kernels a held layer runs on
KIND_DENSE_F32, KIND_DENSE_HALF, KIND_INT8, KIND_INT4, KIND_FP8 = 0, 1, 2, 3, 4


def _build() -> dict[str, Format]:
    fmts = [
        Format("fp32", "fp32", 32, dtype="float32", kind=KIND_DENSE_F32),
        Format("fp16", "fp16", 16, dtype="float16", kind=KIND_DENSE_HALF),
        Format("bf16", "bf16", 16, dtype="bfloat16", kind=KIND_DENSE_HALF),
        Format("fp8-e4m3", "fp8", 8, per_tensor_scale=True, dtype="float8_e4m3fn", kind=KIND_FP8),
        Format("fp8-e5m2", "fp8", 8, per_tensor_scale=True, dtype="float8_e5m2", kind=KIND_FP8),
        Format("int8", "int8", 8, group_size=None, symmetric=True, dtype="int8", kind=KIND_INT8),
    ]
    for g in (32, 64, 128):  # codes 0..15, two per byte once packed
        fmts.append(Format(f"int4-g{g}", "int4", 4, group_size=g, symmetric=False, dtype="uint8", kind=KIND_INT4))
        fmts.append(Format(f"int4-g{g}-sym", "int4", 4, group_size=g, symmetric=True, dtype="uint8", kind=KIND_INT4))
    # llama.cpp's GGUF block types, for planning and prediction only (the runtime does not execute them): their
    # bytes are ggml's block layouts (ggml-common.h): e.g. Q4_K packs 256 weights in 144 bytes (4-bit codes, 6-bit
    # scales and mins per 32, an fp16 scale and min), 4.5 bits a weight; Q8_0 32 weights in 34 bytes
    for name, prec, bits, block in (("q4_0", "int4", 4, (32, 18)), ("q4_1", "int4", 4, (32, 20)),
                                    ("q5_0", "int4", 5, (32, 22)), ("q5_1", "int4", 5, (32, 24)),
                                    ("q8_0", "int8", 8, (32, 34)), ("q2_k", "int4", 2, (256, 84)),
                                    ("q3_k", "int4", 3, (256, 110)), ("q4_k", "int4", 4, (256, 144)),
                                    ("q5_k", "int4", 5, (256, 176)), ("q6_k", "int4", 6, (256, 210))):
        fmts.append(Format(name, prec, bits, block=block))
    return {f.name: f for f in fmts}


FORMATS: dict[str, Format] = _build()
RUNNABLE = [name for name, f in FORMATS.items() if f.runnable]
# Short names: int4 is the asymmetric group-32 grid (the grid of GGUF Q4_1), fp8 is E4M3.
ALIASES = {"int4": "int4-g32", "fp8": "fp8-e4m3", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# For a die lacking a precision: the nearest ones to try, in order.
FALLBACK = {
    "int4": ["int8", "fp8", "fp16", "bf16", "fp32"],
    "int8": ["fp8", "fp16", "bf16", "int4", "fp32"],
    "fp8": ["fp16", "bf16", "int8", "fp32", "int4"],
    "fp16": ["bf16", "fp32", "fp8", "int8", "int4"],
    "bf16": ["fp16", "fp32", "fp8", "int8", "int4"],
    "fp32": ["fp16", "bf16", "fp8", "int8", "int4"],
}
DEFAULT_FORMAT = {"int4": "int4-g32", "int8": "int8", "fp8": "fp8-e4m3", "fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
# Bytes per element of each die precision (activations, KV cache): its default format's bits / 8.
PRECISION_BYTES = {p: FORMATS[name].bits / 8 for p, name in DEFAULT_FORMAT.items()}


# The KV-cache precisions the runtime holds (in each one's registry dtype, runtime/stage.py);
# the compiler refuses any other, and a plan file naming another is invalid.
KV_PRECISIONS = ("fp32", "fp16", "bf16")


def kv_precision(name: object) -> str:
    """The canonical name of a KV-cache precision the runtime holds; a SpecError listing them otherwise."""
    try:
        canonical = get_format(name).name
    except SpecError:
        canonical = None
    if canonical not in KV_PRECISIONS:
        raise SpecError(f"KV precision {name!r} is not supported: the KV cache holds {', '.join(KV_PRECISIONS)}")
    return canonical


def get_format(name: object) -> Format:
    if not isinstance(name, str):
        raise SpecError(f"precision {name!r}: give a format name; accepted: {', '.join(list(FORMATS) + list(ALIASES))}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        raise SpecError(f"unknown precision {name!r}; accepted: {', '.join(list(FORMATS) + list(ALIASES))}")
    return FORMATS[key]


@dataclass(frozen=True)
class Recipe:
    """Which format each weight is held in: a default, the embedding/LM-head table, and per-block overrides.

    INT4 recipes keep the embedding and LM head at INT8 by default: the head's errors land
    directly on the logits (llama.cpp's 4-bit files keep them at 6-8 bits for the same reason).
    """

    default: Format
    head: Format
    blocks: tuple[tuple[int, str], ...] = ()  # (block index, format name) overrides
    ops: tuple[tuple[str, str], ...] = ()  # (op name, format name) overrides: a GGUF mix's per-tensor types
    label: str = ""  # the mix's name (q4_k_m), if it is one

    @staticmethod
    def of(fmt: Format | str | Recipe, head: Format | str | None = None) -> Recipe:
        """A recipe from a format (int4 gets an int8 head) or a recipe; `head`, if given, replaces the head."""
        if isinstance(fmt, Recipe):
            return fmt if head is None else Recipe(fmt.default, get_format(head) if isinstance(head, str) else head,
                                                   fmt.blocks)
        f = get_format(fmt) if isinstance(fmt, str) else fmt
        if head is None:
            h = FORMATS["int8"] if f.precision == "int4" else f
        else:
            h = get_format(head) if isinstance(head, str) else head
        return Recipe(f, h)

    def for_block(self, block: int) -> Format:
        for b, name in self.blocks:
            if b == block:
                return get_format(name)
        return self.default

    def for_op(self, op) -> Format:
        """The format of one IR op's weight."""
        if self.ops:
            got = _op_table(self.ops).get(op.name)
            if got is not None:
                return got
        if op.kind == "embedding" or (op.kind == "matmul" and op.last_token_only):
            return self.head
        return self.for_block(op.block)

    def formats(self) -> set[Format]:
        return {self.default, self.head, *(get_format(n) for _, n in self.blocks), *(get_format(n) for _, n in self.ops)}

    def map(self, fn) -> Recipe:
        """The same recipe with every format passed through `fn` (e.g. a die's fallback)."""
        return Recipe(fn(self.default), fn(self.head), tuple((b, fn(get_format(n)).name) for b, n in self.blocks),
                      tuple((o, fn(get_format(n)).name) for o, n in self.ops), self.label)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        extra = f"+head {self.head.name}" if self.head != self.default else ""
        mixed = f"+{len(self.blocks)} mixed" if self.blocks else ""
        return self.default.name + extra + mixed


@lru_cache(maxsize=256)
def _op_table(ops: tuple[tuple[str, str], ...]) -> dict[str, Format]:
    return {o: get_format(n) for o, n in ops}


def recipe_to_dict(recipe: Recipe) -> dict:
    """{"default": format, "head": format, "blocks": [[block, format], ...]}: the recipe file's JSON."""
    return {"default": recipe.default.name, "head": recipe.head.name, "blocks": [list(b) for b in recipe.blocks]}


MAX_BLOCK = 1_000_000  # far above any model's layer count; keeps a hostile recipe from meaning anything


def recipe_from_dict(d: dict) -> Recipe:
    """A recipe from its JSON mapping, every field checked (a SpecError names the one that is wrong)."""
    if not isinstance(d, dict) or not {"default", "head"} <= set(d):
        raise SpecError('a recipe is a mapping {"default": format, "head": format, "blocks": [[block, format], ...]}')
    extra = set(d) - {"default", "head", "blocks"}
    if extra:
        raise SpecError(f"unknown recipe field(s) {', '.join(sorted(map(str, extra)))}; accepted: default, head, blocks")
    blocks = d.get("blocks", [])
    if not isinstance(blocks, list):
        raise SpecError(f"recipe blocks: a list of [block, format] pairs, got {type(blocks).__name__}")
    out = []
    for i, pair in enumerate(blocks):
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int and 1 <= pair[0] <= MAX_BLOCK):
            raise SpecError(f"recipe blocks[{i}] = {pair!r}: give [block, format] with a layer block number >= 1")
        out.append((pair[0], get_format(pair[1]).name))
    if len({b for b, _ in out}) != len(out):
        raise SpecError("recipe blocks: a block is given twice")
    return Recipe(get_format(d["default"]), get_format(d["head"]), tuple(out))


def save_recipe(recipe: Recipe, path) -> None:
    import json

    from ..io import write_text_atomic

    write_text_atomic(path, json.dumps(recipe_to_dict(recipe), indent=2) + "\n")


def load_recipe(path) -> Recipe:
    import json

    from ..io import read_text_bounded

    text = read_text_bounded(path, "recipe file", 1 << 20)
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise SpecError(f"{path}: not a recipe file (not JSON: {str(err)[:120]}); expected "
                        '{"default": "int4-g64", "head": "int8", "blocks": [[1, "int8"], ...]}') from None
    try:
        return recipe_from_dict(data)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")
