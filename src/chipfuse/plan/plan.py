"""The Plan: the one artifact between compiler, simulator and runtime (JSON, versioned).

Schema `chipfuse.plan`, version 1 (documented field by field in docs/plan-schema.md). A
stage is a unit of work on one die. Version 1 writes `kind: "pipeline"` stages (a range of
blocks); the `shard` field is reserved for tensor splits (a shard of every layer with a
collective), so readers must check `kind` before assuming a layer range.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import ChipfuseError, format_validation_error, validation_lines
from ..hw.spec import numeric_annotation
from ..io import read_text_bounded, write_text_atomic

SCHEMA = "chipfuse.plan"
SCHEMA_VERSION = 1
MAX_PLAN_FILE_BYTES = 16 << 20  # 16 MiB: a plan is tens of KiB
MAX_JSON_DEPTH = 32  # a plan nests about 6 deep
MAX_BYTES = 1 << 53  # byte counts: 8 PiB, far beyond any die, still exact as a float
MAX_TOKENS = 10_000_000  # context, prompt and batch bounds (the compiler allows far less)
KV_PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
# Plausible upper bounds of a model config's sizes: keep the rebuilt IR small and its sums exact.
class _M(BaseModel):
    """Base: unknown fields are errors, numbers are finite, and true or "12" is not a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_number(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, (bool, str)) and numeric_annotation(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {json.dumps(v)}")
        return v


class ModelRef(_M):
    name: str
    source: str = Field(description="catalogue entry, config.json or GGUF path it was read from")
    config: dict = Field(description="the normalised ModelConfig, enough to rebuild the IR")


class WorkloadSpec(_M):
    context: int = Field(gt=0, le=MAX_TOKENS, description="tokens each sequence may hold (prompt + generated)")
    batch: int = Field(gt=0, le=MAX_TOKENS, description="concurrent sequences")
    prompt_tokens: int = Field(gt=0, le=MAX_TOKENS)
    kv_precision: str = "fp16"

    @model_validator(mode="after")
    def _prompt_fits(self) -> WorkloadSpec:
        if self.prompt_tokens > self.context:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} exceeds context {self.context}; "
                             f"the prompt must fit the context")
        return self


class Shard(_M):
    """Reserved for tensor splits (schema version 2): which part of each layer this stage holds."""

    axis: Literal["heads", "mlp_columns"]
    index: int = Field(ge=0, le=1024)
    of: int = Field(ge=1, le=1024)


class Stage(_M):
    index: int = Field(ge=0, le=1 << 16)
    die: str
    kind: Literal["pipeline"] = "pipeline"
    blocks: tuple[int, int] = Field(description="[start, end) block indices; block 0 is the embedding")
    layers: tuple[int, int] | None = Field(description="[first, last] transformer layers, inclusive; null if none")
    has_embedding: bool
    has_lm_head: bool
    format: str = Field(description="weight format of the layers on this die (after any precision fallback)")
    head_format: str | None = Field(None, description="format of the embedding / LM head table, if this die holds one")
    weight_bytes: int = Field(ge=0, le=MAX_BYTES)
    kv_bytes: int = Field(ge=0, le=MAX_BYTES, description="KV cache at the workload's context x batch")
    workspace_bytes: int = Field(ge=0, le=MAX_BYTES)
    memory_bytes: int = Field(ge=0, le=MAX_BYTES, description="the die's usable memory")
    route_in: list[str] = Field(min_length=1, max_length=1024,
                                description="nodes the stage input travels through, sender first")
    shard: Shard | None = None

    @property
    def used_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.workspace_bytes


class StagePrediction(_M):
    die: str
    decode_s: float = Field(ge=0, description="one decode step of one micro-batch on this die, links excluded")
    prefill_s: float = Field(ge=0)
    link_out_s: float = Field(ge=0, description="decode: sending this stage's output on")
    bound: Literal["compute", "memory", "link"]
    compute_utilisation: float = Field(ge=0, description="share of the decode step spent computing at peak x efficiency")
    bandwidth_needed_gb_per_s: float | None = Field(
        ge=0, description="bandwidth at which memory time would equal compute time (null if the stage computes nothing)")
    bandwidth_has_gb_per_s: float = Field(ge=0)
    read_bytes_per_step: float = Field(ge=0)
    reason: str


class Prediction(_M):
    ttft_s: float = Field(gt=0)
    decode_tokens_per_s: float = Field(gt=0, description="aggregate over the batch")
    decode_tokens_per_s_per_request: float = Field(gt=0)
    decode_step_s: float = Field(gt=0, description="time for every sequence of the batch to gain one token")
    micro_batches: int = Field(ge=1)
    bytes_read_per_token: float = Field(ge=0, description="DRAM bytes read per generated token at batch 1")
    stages: list[StagePrediction]
    notes: list[str] = []


class Plan(_M):
    schema_: Literal["chipfuse.plan"] = Field(SCHEMA, alias="schema")
    schema_version: Literal[1] = SCHEMA_VERSION
    created_by: str
    model: ModelRef
    system: dict = Field(description="the full system description the plan was made for")
    precision: str = Field(description="requested weight format of the layers")
    head_precision: str | None = Field(None, description="requested format of the embedding and LM head "
                                                          "(null: int8 for int4 layers, else the layers' format)")
    block_formats: list[tuple[int, str]] = Field(
        default_factory=list, description="mixed precision: [block, format] overrides of `precision`")
    quantized_weights: str | None = Field(
        None, description="checkpoint of INT4/INT8 codes from a calibration method (chipfuse quantize --save), "
                          "made for this plan's recipe; the workers load their layers' codes from it instead of "
                          "rounding to nearest")
    workload: WorkloadSpec
    route: list[str] = Field(description="host, the dies in stage order, host")
    stages: list[Stage] = Field(max_length=1024)
    fits: bool
    warnings: list[str] = []
    prediction: Prediction | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        """Everything checkable from the plan alone: embedded system and model, formats, stage tiling."""
        problems = plan_problems(self)
        if problems:
            raise ValueError("\n" + "\n".join(problems))
        return self

    def recipe(self):
        """The weight formats the plan asks for (before any die's fallback)."""
        from ..quant.formats import Recipe, get_format

        base = Recipe.of(self.precision, self.head_precision)
        return Recipe(base.default, base.head, tuple((b, get_format(f).name) for b, f in self.block_formats))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically (a crash leaves the old file, never half a plan)."""
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and fully validate a plan file; every problem is a ChipfuseError naming the file and field."""
        p = Path(path)
        data = parse_plan_json(read_text_bounded(p, "plan file", MAX_PLAN_FILE_BYTES), str(p))
        if not isinstance(data, dict):
            raise ChipfuseError(f"{p}: a plan file is a JSON object with schema, model, system, workload and "
                                f"stages, not a {_json_kind(data)} (write one with `chipfuse plan --json`)")
        if data.get("schema") != SCHEMA:
            raise ChipfuseError(f"{p}: not a chipfuse plan (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION or isinstance(data.get("schema_version"), bool):
            raise ChipfuseError(f"{p}: plan schema version {data.get('schema_version')} is not supported "
                                f"by this chipfuse (reads version {SCHEMA_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ChipfuseError(format_validation_error(str(p), err, "plan", suggest=_suggest_plan_field)) from None


def _json_kind(data: object) -> str:
    """The JSON name of a value's type, for messages."""
    if data is None:
        return "null"
    return {bool: "boolean", list: "list", str: "string", int: "number", float: "number"}.get(type(data), "value")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (plans hold finite numbers only)")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is too large for a number (plans hold finite numbers only)")
    return x


def json_depth(text: str) -> int:
    """How deeply brackets nest in JSON text, strings ignored; cheap, so checked before parsing."""
    depth = deepest = 0
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', "", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_plan_json(text: str, source: str) -> object:
    """Plan JSON text as Python data; too-deep nesting, Infinity/NaN and syntax errors are ChipfuseErrors."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ChipfuseError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep; a plan nests about 6 "
                            f"(is this a plan file?)")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as err:
        raise ChipfuseError(f"{source}: line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}") from None
    except (ValueError, RecursionError) as err:
        raise ChipfuseError(f"{source}:{_where_constant(text)} not a valid plan: {str(err)[:200]}") from None


def _where_constant(text: str) -> str:
    """' line L, column C:' of the first Infinity/NaN token outside strings, or '' if there is none."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: " " * len(m.group()), text)
    m = re.search(r"-?\b(?:Infinity|NaN)\b", stripped)
    if not m:
        return ""
    line = text.count("\n", 0, m.start()) + 1
    return f" line {line}, column {m.start() - (text.rfind(chr(10), 0, m.start()) + 1) + 1}:"


def _plan_fields() -> list[str]:
    names: set[str] = set()
    for model in (Plan, ModelRef, WorkloadSpec, Shard, Stage, StagePrediction, Prediction):
        names.update(model.model_fields)
    return sorted(names | {"schema"})


def _suggest_plan_field(field: str) -> str | None:
    """The known plan field closest to a misspelt one, if any is close."""
    import difflib

    close = difflib.get_close_matches(field, _plan_fields(), n=1, cutoff=0.6)
    return close[0] if close else None


def _nonfinite(x: object, path: str, out: list[str]) -> None:
    """Add a line for each inf or NaN inside plain JSON data (system, model.config): JSON cannot hold them."""
    if isinstance(x, float) and not math.isfinite(x):
        out.append(f"{path}: {x} is not a finite number; plans hold finite numbers only")
    elif isinstance(x, dict):
        for k, v in x.items():
            _nonfinite(v, f"{path}.{k}", out)
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            _nonfinite(v, f"{path}[{i}]", out)


def check_model_config(config: dict, prefix: str = "model.config"):
    """(ModelConfig, problems): the embedded config validated and within plausible sizes."""
    from ..frontends.config import ModelConfig

    try:
        cfg = ModelConfig.model_validate(config)
    except ValidationError as err:
        return None, validation_lines(err, prefix=prefix)
    return cfg, []  # ModelConfig holds the size limits (frontends.config.LIMITS)


def _check_system(system: dict):
    """(System, problems): the embedded system description validated like a system file."""
    from ..hw.spec import System

    try:
        return System.model_validate(system), []
    except ValidationError as err:
        return None, validation_lines(err, prefix="system")
    except ChipfuseError as err:
        return None, [f"system: {err}"]


def _format_problems(plan: Plan) -> list[str]:
    """Every format name in the plan must be one chipfuse knows; the KV cache a precision it stores."""
    from ..quant.formats import get_format

    named = [("precision", plan.precision), ("head_precision", plan.head_precision),
             *((f"block_formats[{i}]", f) for i, (_, f) in enumerate(plan.block_formats)),
             *((f"stages[{i}].format", st.format) for i, st in enumerate(plan.stages)),
             *((f"stages[{i}].head_format", st.head_format) for i, st in enumerate(plan.stages))]
    out = []
    for path, name in named:
        if name is None:
            continue
        try:
            get_format(name)
        except ChipfuseError as err:
            out.append(f"{path}: {err}")
    try:
        kv = get_format(plan.workload.kv_precision).precision
    except ChipfuseError:
        kv = None
    if kv not in KV_PRECISIONS:
        out.append(f"workload.kv_precision: {plan.workload.kv_precision!r} is not a KV-cache format; "
                   f"accepted: {', '.join(KV_PRECISIONS)}")
    return out


def plan_problems(plan: Plan) -> list[str]:
    """Every inconsistency checkable from the plan alone, one 'field: problem; fix' line each."""
    out: list[str] = []
    _nonfinite(plan.system, "system", out)
    _nonfinite(plan.model.config, "model.config", out)
    if out:
        return out
    cfg, bad = check_model_config(plan.model.config)
    system, bad_sys = _check_system(plan.system)
    out += bad + bad_sys + _format_problems(plan)
    if cfg is None or system is None:
        return out
    return out + structure_problems(plan, cfg.num_layers, cfg.max_position, system)


def structure_problems(plan: Plan, num_layers: int, max_position: int, system, same_system: bool = True) -> list[str]:
    """Stages tile the blocks in order on distinct known dies; workload, route and bytes agree.

    `same_system` False skips what only holds on the system the plan was made for (memory_bytes,
    route_in's nodes): for predicting a plan on another system (calibration, a probed host)."""
    out = []
    wl = plan.workload
    if wl.context > max_position:
        out.append(f"workload.context: {wl.context} exceeds the model's max_position {max_position}; "
                   f"use a context of at most {max_position}")
    n_blocks = num_layers + 2
    out += [f"block_formats[{i}]: block {b} is not a layer block (1..{num_layers})"
            for i, (b, _) in enumerate(plan.block_formats) if not 1 <= b <= num_layers]
    if not plan.stages:
        return out + ["stages: a plan needs at least one stage; make it with `chipfuse plan`"]
    out += _stage_problems(plan, n_blocks, system, same_system)
    want = ["host", *(st.die for st in plan.stages), "host"]
    if plan.route != want:
        out.append(f"route: {plan.route} does not match the stages; expected {want}")
    if plan.prediction is not None and [sp.die for sp in plan.prediction.stages] != want[1:-1]:
        out.append("prediction.stages: do not match the plan's stages; remove the prediction or re-run `chipfuse plan`")
    return out


def _stage_problems(plan: Plan, n_blocks: int, system, same_system: bool) -> list[str]:
    """Each stage: its index, die, block range, layers, embedding/head flags, route and memory."""
    out, start, seen, prev = [], 0, set(), "host"
    dies = system.die_names
    nodes = {"host", *dies, *system.switches}
    for i, st in enumerate(plan.stages):
        where = f"stages[{i}]"
        s, e = st.blocks
        if st.index != i:
            out.append(f"{where}.index: is {st.index}; stages are numbered 0, 1, ... in order, so {i}")
        if st.die not in dies:
            out.append(f"{where}.die: unknown die {st.die!r}; the plan's system has {', '.join(dies)}")
        elif st.die in seen:
            out.append(f"{where}.die: {st.die} holds two stages; a pipeline uses each die once")
        seen.add(st.die)
        if s != start or not s < e <= n_blocks:
            out.append(f"{where}.blocks: [{s}, {e}] should start at {start} (where the previous stage ends) and end "
                       f"after that, at most at {n_blocks}; the stages' [start, end) ranges tile blocks 0..{n_blocks} "
                       f"in order")
        else:
            out += _block_flag_problems(where, st, n_blocks)
        start = max(start, e)
        if same_system:
            out += _route_problems(where, st, prev, nodes) + _memory_problems(where, st, system)
        prev = st.die
    if plan.stages and start != n_blocks:
        out.append(f"stages: cover blocks 0..{start}, but the model has {n_blocks} blocks (embedding, "
                   f"{n_blocks - 2} layers, head); the last stage must end at {n_blocks}")
    return out


def _route_problems(where: str, st: Stage, prev: str, nodes: set[str]) -> list[str]:
    """route_in names known nodes and runs from the previous stage's die (or host) to this one."""
    unknown = [n for n in st.route_in if n not in nodes]
    if unknown:
        return [f"{where}.route_in: unknown node(s) {', '.join(map(repr, unknown))}; nodes are {', '.join(sorted(nodes))}"]
    if st.route_in[0] != prev or st.route_in[-1] != st.die:
        return [f"{where}.route_in: must run from {prev} to {st.die}, got {' -> '.join(st.route_in)}"]
    return []


def _memory_problems(where: str, st: Stage, system) -> list[str]:
    """memory_bytes is the die's memory in the plan's system, and the stage's bytes fit in it."""
    if st.die not in system.die_names:
        return []
    has = int(system.die_memory_bytes(st.die))
    if st.memory_bytes != has:
        return [(f"{where}.memory_bytes: {st.memory_bytes:,} differs from {st.die}'s memory in the plan's system "
                 f"({has:,} bytes); re-run `chipfuse plan`")]
    if st.used_bytes > has:
        return [(f"{where}: weights, KV cache and workspace take {st.used_bytes:,} bytes but {st.die} has {has:,}; "
                 f"re-run `chipfuse plan`")]
    return []


def _block_flag_problems(where: str, st: Stage, n_blocks: int) -> list[str]:
    """layers, has_embedding and has_lm_head must say what the block range says."""
    s, e = st.blocks
    first, last = max(s, 1) - 1, min(e, n_blocks - 1) - 2
    layers = (first, last) if first <= last else None
    out = []
    if st.layers != layers:
        out.append(f"{where}.layers: {list(st.layers) if st.layers else None} does not match blocks [{s}, {e}]; "
                   f"it should be {list(layers) if layers else None}")
    if st.has_embedding != (s == 0):
        out.append(f"{where}.has_embedding: should be {str(s == 0).lower()} for blocks [{s}, {e}] (block 0 is the embedding)")
    if st.has_lm_head != (e == n_blocks):
        out.append(f"{where}.has_lm_head: should be {str(e == n_blocks).lower()} for blocks [{s}, {e}] "
                   f"(block {n_blocks - 1} is the head)")
    return out
