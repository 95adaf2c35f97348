"""The Plan: the one artifact between compiler, simulator and runtime (JSON, versioned).

Schema `chipfuse.plan`, version 2 (documented field by field in docs/plan-schema.md). The plan is
fully resolved: every stage records the formats its die holds (after any precision fallback), so
the simulator and the workers read them here and never re-derive them. A stage is a unit of work
on one die for one of the plan's `models`: `kind: "layers"` (a block range, the only kind this
chipfuse predicts and runs) or `kind: "shard"` (a part of every layer of a block range, with the
collective it needs; validated, not yet executable).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import ChipfuseError, SpecError, format_validation_error, validation_lines
from ..hw.spec import numeric_annotation
from ..io import read_text_bounded, write_text_atomic
from ..quant.formats import KV_PRECISIONS, Recipe, get_format, kv_precision

SCHEMA: Literal["chipfuse.plan"] = "chipfuse.plan"
SCHEMA_VERSION: Literal[2] = 2
MAX_PLAN_FILE_BYTES = 16 << 20  # 16 MiB: a plan is tens of KiB
MAX_JSON_DEPTH = 32  # a plan nests about 6 deep
MAX_BYTES = 1 << 53  # byte counts: 8 PiB, far beyond any die, still exact as a float
MAX_TOKENS = 10_000_000  # context, prompt and batch bounds (the compiler allows far less)
MAX_MODELS = 64  # models sharing one system's dies
MAX_WIDTH = 1 << 20  # heads, KV heads and MLP columns a shard may name (ModelConfig bounds are far lower)
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
__all__ = ["KV_PRECISIONS", "Plan", "ModelEntry", "ModelRef", "Stage", "Shard", "WorkloadSpec", "Prediction",
           "StagePrediction", "plan_problems", "structure_problems", "unsupported_problem"]


class _M(BaseModel):
    """Base: unknown fields are errors, numbers are finite, and true or "12" is not a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_number(cls, v: object, info: ValidationInfo) -> object:
        name = info.field_name
        assert name is not None  # a field validator always runs for a named field
        if isinstance(v, (bool, str)) and numeric_annotation(cls.model_fields[name].annotation):
            raise ValueError(f"expected a number, got {json.dumps(v)}")
        return v


def _recipe(default: str, head: str | None, blocks: list[tuple[int, str]]) -> Recipe:
    """A Recipe from format names (the head None: int8 for int4 layers, else the layers' format)."""
    base = Recipe.of(default, head)
    return Recipe(base.default, base.head, tuple((b, get_format(f).name) for b, f in blocks))


class ModelEntry(_M):
    """One model of the plan, and the weight formats it was requested in (before any die's fallback)."""

    id: str = Field(pattern=MODEL_ID, description="what stages[].model names; the compiler writes m0, m1, ...")
    name: str
    source: str = Field(description="catalogue entry, config.json or GGUF path it was read from")
    config: dict = Field(description="the normalised ModelConfig, enough to rebuild the IR")
    precision: str = Field(description="requested weight format of the layers")
    head_precision: str | None = Field(None, description="requested format of the embedding and LM head "
                                                          "(null: int8 for int4 layers, else the layers' format)")
    block_formats: list[tuple[int, str]] = Field(
        default_factory=list, description="mixed precision: requested [block, format] overrides of `precision`")
    op_formats: list[tuple[str, str]] = Field(
        default_factory=list, description="a llama.cpp mix: [op, GGUF type] overrides per tensor (quant/gguf_mix.py)")
    mix: str | None = Field(None, description="the llama.cpp mix requested (q4_k_m, ...), if one was")
    quantized_weights: str | None = Field(
        None, description="checkpoint of INT4/INT8 codes from a calibration method (chipfuse quantize --save), "
                          "made for this model's requested recipe; the workers load their layers' codes from it "
                          "instead of rounding to nearest")

    def recipe(self) -> Recipe:
        """The weight formats this model was requested in (a record of the request; stages hold the decision)."""
        r = _recipe(self.precision, self.head_precision, self.block_formats)
        if self.op_formats or self.mix:
            r = Recipe(r.default, r.head, r.blocks, tuple((o, get_format(f).name) for o, f in self.op_formats),
                       self.mix or "")
        return r


ModelRef = ModelEntry  # the version-1 name


class WorkloadSpec(_M):
    context: int = Field(gt=0, le=MAX_TOKENS, description="tokens each sequence may hold (prompt + generated)")
    batch: int = Field(gt=0, le=MAX_TOKENS, description="concurrent sequences")
    prompt_tokens: int = Field(gt=0, le=MAX_TOKENS)
    kv_precision: str = Field("fp16", description=f"KV-cache element format: {', '.join(KV_PRECISIONS)}")
    output_tokens: int | None = Field(
        None, gt=0, le=MAX_TOKENS, description="tokens generated per request: decode is predicted at the mean "
                                               "position, prompt + output / 2 (null: at the full context, the worst "
                                               "case)")

    @property
    def decode_context(self) -> int:
        """Tokens a predicted decode step attends to: the mean position over the generated tokens, or the context."""
        if self.output_tokens is None:
            return self.context
        return max(1, self.prompt_tokens + self.output_tokens // 2)

    @field_validator("kv_precision")
    @classmethod
    def _kv_supported(cls, v: str) -> str:
        """Only a KV precision the runtime holds, by its canonical name (float16 becomes fp16)."""
        try:
            return kv_precision(v)
        except SpecError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _prompt_fits(self) -> WorkloadSpec:
        if self.prompt_tokens > self.context:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} exceeds context {self.context}; "
                             f"the prompt must fit the context")
        if self.output_tokens is not None and self.prompt_tokens + self.output_tokens > self.context:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} + output_tokens {self.output_tokens} exceed context "
                             f"{self.context}; the whole conversation must fit the context")
        return self


Span = tuple[Annotated[StrictInt, Field(ge=0, le=MAX_WIDTH)], Annotated[StrictInt, Field(ge=0, le=MAX_WIDTH)]]


class Shard(_M):
    """Which part of every layer of its block range a `kind: "shard"` stage holds (predicted; not run yet).

    Spans are [first, count], so uneven splits are written as they are (SmolLM2's 9 query heads in
    3 KV groups over two dies: kv_heads [0, 2] + [2, 1], heads [0, 6] + [6, 3]); a count may be 0
    (3 KV groups over 4 dies leave one die with MLP columns only)."""

    group: list[str] = Field(min_length=1, max_length=1024, description="the dies sharing the block range, in shard order")
    index: int = Field(ge=0, le=1024, description="this stage's place in `group`")
    heads: Span = Field(description="[first, count] query heads; whole KV groups, so it matches kv_heads")
    kv_heads: Span = Field(description="[first, count] KV heads (and their cache)")
    mlp_columns: Span = Field(description="[first, count] columns of the MLP's intermediate dimension")
    vocab: Span | None = Field(None, description="[first, count] rows of the LM head (vocabulary entries), for a "
                                                 "group holding the head; the embedding is held whole by every die")
    collective: Literal["all-reduce"] = Field(
        "all-reduce", description="summing the partial outputs of attention and MLP over `group`")


class SplitOption(_M):
    """One way of splitting the model the compiler weighed: its grouping of the dies and predicted speed."""

    mode: Literal["pipeline", "tensor", "hybrid"]
    groups: list[list[str]] = Field(description="pipeline positions in order, each one die or a tensor group")
    decode_tokens_per_s: float | None = Field(None, ge=0, description="aggregate over the batch; null: does not fit")
    decode_tokens_per_s_per_request: float | None = Field(None, ge=0)
    problem: str | None = Field(None, description="why it was ruled out")


class SplitDecision(_M):
    """How the compiler chose the split: what it was asked for, what it weighed, and why the winner won."""

    requested: Literal["auto", "pipeline", "tensor", "hybrid"]
    objective: Literal["throughput", "latency"]
    chosen: Literal["pipeline", "tensor", "hybrid"]
    reason: str
    options: list[SplitOption] = Field(max_length=100_000)


class Stage(_M):
    index: int = Field(ge=0, le=1 << 16)
    die: str
    model: str = Field(description="id of the model in `models` this stage runs")
    kind: Literal["layers", "shard"]
    blocks: tuple[int, int] = Field(description="[start, end) block indices; block 0 is the embedding")
    layers: tuple[int, int] | None = Field(description="[first, last] transformer layers, inclusive; null if none")
    has_embedding: bool
    has_lm_head: bool
    format: str = Field(description="weight format this die holds the stage's layers in (after any precision fallback)")
    block_formats: list[tuple[int, str]] = Field(
        default_factory=list, description="[block, format]: this stage's layer blocks held in another format than "
                                          "`format` (after fallback), in block order")
    head_format: str | None = Field(None, description="format of the embedding / LM head table, if this stage holds one")
    op_formats: list[tuple[str, str]] = Field(
        default_factory=list, description="[op, format]: this stage's tensors held in another type than its block's "
                                          "(a llama.cpp mix, after fallback)")
    weight_bytes: int = Field(ge=0, le=MAX_BYTES)
    kv_bytes: int = Field(ge=0, le=MAX_BYTES, description="KV cache at the workload's context x batch")
    workspace_bytes: int = Field(ge=0, le=MAX_BYTES)
    memory_bytes: int = Field(ge=0, le=MAX_BYTES, description="the die's usable memory")
    route_in: list[str] = Field(min_length=1, max_length=1024,
                                description="nodes the stage input travels through, sender first")
    shard: Shard | None = Field(None, description="the part of each layer held, for kind shard; null for layers")

    @property
    def used_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.workspace_bytes

    def recipe(self) -> Recipe:
        """The formats this stage's die holds (head = `format` where the stage holds no embedding or head)."""
        fmt = get_format(self.format)
        head = get_format(self.head_format) if self.head_format else fmt
        return Recipe(fmt, head, tuple((b, get_format(f).name) for b, f in self.block_formats),
                      tuple((o, get_format(f).name) for o, f in self.op_formats))


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


class EnergyPrediction(_M):
    """Energy and power decoding at the predicted rate (sim/energy.py)."""

    j_per_token: float = Field(ge=0, description="every joule per generated token, static power's share included")
    compute_j_per_token: float = Field(ge=0)
    dram_j_per_token: float = Field(ge=0)
    link_j_per_token: float = Field(ge=0)
    static_j_per_token: float = Field(ge=0)
    power_w: float = Field(ge=0, description="average power decoding at the predicted rate")
    peak_power_w: float = Field(ge=0, description="every die computing and reading at its peak at once")
    fanless_w: float = Field(gt=0, description="the system's limit without a fan")
    fanless: bool = Field(description="average power within fanless_w")
    assumed: list[str] = Field(default_factory=list, description="figures taken from chipfuse's assumed defaults")


class SharedDramEffect(_M):
    """What the host's other DRAM masters cost dies that share its DRAM (sim/predict.py)."""

    display: str = Field(description="the system's display, as described (width x height at refresh)")
    display_gb_per_s: float = Field(ge=0, description="its scan-out traffic")
    other_gb_per_s: float = Field(ge=0, description="camera, ISP, GPU, ... as described")
    decode_tokens_per_s_alone: float = Field(gt=0, description="decode rate if the dies had the DRAM to themselves")
    decode_tokens_per_s_4k60: float = Field(ge=0, description="decode rate with a 3840 x 2160 x 4 B display at 60 Hz "
                                                              "instead (the other masters as described)")


class Prediction(_M):
    ttft_s: float = Field(gt=0)
    decode_tokens_per_s: float = Field(gt=0, description="aggregate over the batch")
    decode_tokens_per_s_per_request: float = Field(gt=0)
    decode_step_s: float = Field(gt=0, description="time for every sequence of the batch to gain one token")
    micro_batches: int = Field(ge=1)
    bytes_read_per_token: float = Field(ge=0, description="DRAM bytes read per generated token at batch 1")
    stages: list[StagePrediction]
    notes: list[str] = []
    energy: EnergyPrediction | None = Field(None, description="energy per token and power; null in plans made "
                                                              "before chipfuse predicted them")
    shared_dram: SharedDramEffect | None = Field(None, description="for dies sharing the host's DRAM: what the "
                                                                   "display and the other masters cost; else null")


class Plan(_M):
    schema_: Literal["chipfuse.plan"] = Field(SCHEMA, alias="schema")
    schema_version: Literal[2] = SCHEMA_VERSION
    created_by: str
    models: list[ModelEntry] = Field(min_length=1, max_length=MAX_MODELS,
                                     description="the models whose stages the plan places; one for a single model")
    system: dict = Field(description="the full system description the plan was made for")
    workload: WorkloadSpec = Field(description="what every model of the plan is sized and predicted for")
    route: list[str] = Field(description="host, the dies in stage order, host")
    stages: list[Stage] = Field(max_length=1024)
    fits: bool
    warnings: list[str] = []
    split: SplitDecision | None = Field(None, description="the split options the compiler weighed (null: a "
                                                          "pipeline planned without a search)")
    prediction: Prediction | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        """Everything checkable from the plan alone: embedded system and models, formats, stage tiling."""
        problems = plan_problems(self)
        if problems:
            raise ValueError("\n" + "\n".join(problems))
        return self

    @property
    def model(self) -> ModelEntry:
        """The plan's model, for the single-model plans this chipfuse runs."""
        if len(self.models) != 1:
            raise ChipfuseError(f"this plan holds {len(self.models)} models ({', '.join(m.id for m in self.models)}); "
                                f"pick one with plan.model_by_id(id)")
        return self.models[0]

    @property
    def precision(self) -> str:
        """The single model's requested layer format."""
        return self.model.precision

    @property
    def precision_label(self) -> str:
        """What the user asked for, in words: the llama.cpp mix's name, else the layer format."""
        return self.model.mix or self.model.precision

    @property
    def head_precision(self) -> str | None:
        """The single model's requested embedding / LM-head format."""
        return self.model.head_precision

    @property
    def block_formats(self) -> list[tuple[int, str]]:
        """The single model's requested [block, format] overrides."""
        return self.model.block_formats

    @property
    def quantized_weights(self) -> str | None:
        """The single model's checkpoint of quantized codes, if any."""
        return self.model.quantized_weights

    def model_by_id(self, model_id: str) -> ModelEntry:
        """The entry of `models` with this id."""
        for m in self.models:
            if m.id == model_id:
                return m
        raise ChipfuseError(f"no model {model_id!r} in this plan; it has {', '.join(m.id for m in self.models)}")

    def recipe(self) -> Recipe:
        """The weight formats the single model was requested in (before any die's fallback); not for predicting."""
        return self.model.recipe()

    def stage_recipe(self, stage_index: int) -> Recipe:
        """The formats stage `stage_index`'s die holds, as the compiler resolved them: what to load and cost."""
        return self.stages[stage_index].recipe()

    def unsupported(self) -> str | None:
        """Why this chipfuse cannot run the plan (several models), or None."""
        return unsupported_problem(self)

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
            raise ChipfuseError(f"{p}: a plan file is a JSON object with schema, models, system, workload and "
                                f"stages, not a {_json_kind(data)} (write one with `chipfuse plan --json`)")
        if data.get("schema") != SCHEMA:
            raise ChipfuseError(f"{p}: not a chipfuse plan (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        version_problem = _version_problem(data.get("schema_version"))
        if version_problem:
            raise ChipfuseError(f"{p}: {version_problem}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ChipfuseError(format_validation_error(str(p), err, "plan", suggest=_suggest_plan_field)) from None


def _version_problem(version: object) -> str | None:
    """Why a plan's schema_version cannot be read, in one line, or None if it is the current one."""
    if version == SCHEMA_VERSION and not isinstance(version, bool):
        return None
    if version == 1 and not isinstance(version, bool):
        return (f"schema_version: 1 is an older plan format; version {SCHEMA_VERSION} records each stage's resolved "
                f"formats and its model, so re-make the plan with `chipfuse plan ... --json`")
    return (f"schema_version: {json.dumps(version)[:40]} is not supported by this chipfuse "
            f"(reads version {SCHEMA_VERSION})")


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
    for model in (Plan, ModelEntry, WorkloadSpec, Shard, Stage, StagePrediction, Prediction):
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


def check_model_config(config: dict, prefix: str = "models[0].config"):
    """(ModelConfig, problems): the embedded config validated and within plausible sizes."""
    from ..frontends.config import ModelConfig

    try:
        cfg = ModelConfig.model_validate(config)
    except ValidationError as err:
        return None, validation_lines(err, prefix=prefix)
    return cfg, []  # ModelConfig holds the size limits (frontends.config.LIMITS)


def model_configs(plan: Plan) -> tuple[dict, list[str]]:
    """({model id: ModelConfig}, problems) for every model of the plan whose config is valid."""
    configs, out = {}, []
    for i, m in enumerate(plan.models):
        cfg, bad = check_model_config(m.config, f"models[{i}].config")
        out += bad
        if cfg is not None:
            configs[m.id] = cfg
    return configs, out


def _check_system(system: dict):
    """(System, problems): the embedded system description validated like a system file."""
    from ..hw.spec import System

    try:
        return System.model_validate(system), []
    except ValidationError as err:
        return None, validation_lines(err, prefix="system")
    except ChipfuseError as err:
        return None, [f"system: {err}"]


def _held_formats(where: str, st: Stage):
    """(field path, format name) of every format a stage holds."""
    yield f"{where}.format", st.format
    if st.head_format is not None:
        yield f"{where}.head_format", st.head_format
    for k, (_, f) in enumerate(st.block_formats):
        yield f"{where}.block_formats[{k}]", f
    for k, (_, f) in enumerate(st.op_formats):
        yield f"{where}.op_formats[{k}]", f


def _requested_formats(i: int, m: ModelEntry):
    """(field path, format name) of every format a model was requested in."""
    yield f"models[{i}].precision", m.precision
    if m.head_precision is not None:
        yield f"models[{i}].head_precision", m.head_precision
    for k, (_, f) in enumerate(m.block_formats):
        yield f"models[{i}].block_formats[{k}]", f
    for k, (_, f) in enumerate(m.op_formats):
        yield f"models[{i}].op_formats[{k}]", f


def _format_problems(plan: Plan) -> list[str]:
    """Every format name in the plan must be one chipfuse knows (the KV precision is its field's own check)."""
    named = [*(x for i, m in enumerate(plan.models) for x in _requested_formats(i, m)),
             *(x for i, st in enumerate(plan.stages) for x in _held_formats(f"stages[{i}]", st))]
    out = []
    for path, name in named:
        try:
            get_format(name)
        except ChipfuseError as err:
            out.append(f"{path}: {err}")
    return out


def _model_id_problems(plan: Plan) -> list[str]:
    """Each model has its own id."""
    out, seen = [], set()
    for i, m in enumerate(plan.models):
        if m.id in seen:
            out.append(f"models[{i}].id: {m.id!r} is used twice; give each model its own id")
        seen.add(m.id)
    return out


def _stage_model_problems(plan: Plan) -> list[str]:
    """Every stage names one of the plan's models."""
    ids = {m.id for m in plan.models}
    return [f"stages[{i}].model: unknown model {st.model!r}; the plan's models are {', '.join(sorted(ids))}"
            for i, st in enumerate(plan.stages) if st.model not in ids]


def plan_problems(plan: Plan) -> list[str]:
    """Every inconsistency checkable from the plan alone, one 'field: problem; fix' line each."""
    out: list[str] = []
    _nonfinite(plan.system, "system", out)
    for i, m in enumerate(plan.models):
        _nonfinite(m.config, f"models[{i}].config", out)
    if out:
        return out
    configs, bad = model_configs(plan)
    system, bad_sys = _check_system(plan.system)
    dup = _model_id_problems(plan)
    out += bad + bad_sys + _format_problems(plan) + dup
    if len(configs) != len(plan.models) or system is None or dup:
        return out
    return out + structure_problems(plan, configs, system)


def unsupported_problem(plan: Plan) -> str | None:
    """Why this chipfuse cannot predict or run a valid plan, in one line, or None if it can."""
    if len(plan.models) > 1:
        return (f"plans with several models are not supported by this chipfuse yet: models holds {len(plan.models)} "
                f"({', '.join(m.id for m in plan.models)}); predict and run one model per plan")
    return None


def structure_problems(plan: Plan, configs: dict, system, same_system: bool = True) -> list[str]:
    """Each model's stages tile its blocks in order on distinct known dies; workload, route and bytes agree.

    `configs` maps model id to ModelConfig. `same_system` False skips what only holds on the system the
    plan was made for (memory_bytes, route_in's nodes, the formats each die holds): for predicting a plan
    on another system (calibration, a probed host)."""
    out = _workload_problems(plan, configs) + _stage_model_problems(plan)
    if not plan.stages:
        return out + ["stages: a plan needs at least one stage; make it with `chipfuse plan`"]
    out += [f"stages[{i}].index: is {st.index}; stages are numbered 0, 1, ... in order, so {i}"
            for i, st in enumerate(plan.stages) if st.index != i]
    for m in plan.models:
        if m.id in configs:
            mine = [(i, st) for i, st in enumerate(plan.stages) if st.model == m.id]
            out += _model_stage_problems(m, mine, configs[m.id].num_layers + 2, system, same_system)
    out += shard_width_problems(plan, configs)
    if same_system:
        out += _memory_problems(plan, system)
    want = ["host", *(st.die for st in plan.stages), "host"]
    if plan.route != want:
        out.append(f"route: {plan.route} does not match the stages; expected {want}")
    if plan.prediction is not None and [sp.die for sp in plan.prediction.stages] != want[1:-1]:
        out.append("prediction.stages: do not match the plan's stages; remove the prediction or re-run `chipfuse plan`")
    return out


def _workload_problems(plan: Plan, configs: dict) -> list[str]:
    """The context fits every model, and requested block overrides name layer blocks."""
    out = []
    wl = plan.workload
    for i, m in enumerate(plan.models):
        cfg = configs[m.id]
        if wl.context > cfg.max_position:
            out.append(f"workload.context: {wl.context} exceeds the model's max_position {cfg.max_position} "
                       f"(model {m.id}); use a context of at most {cfg.max_position}")
        out += [f"models[{i}].block_formats[{k}]: block {b} is not a layer block (1..{cfg.num_layers})"
                for k, (b, _) in enumerate(m.block_formats) if not 1 <= b <= cfg.num_layers]
    return out


def _positions(stages: list[tuple[int, Stage]]) -> list[list[tuple[int, Stage]]]:
    """A model's stages as pipeline positions: a layers stage alone, consecutive shards of one group together."""
    out: list[list[tuple[int, Stage]]] = []
    for i, st in stages:
        last = out[-1][-1][1] if out else None
        if (last is not None and st.kind == last.kind == "shard" and st.shard and last.shard
                and st.shard.group == last.shard.group):
            out[-1].append((i, st))
        else:
            out.append([(i, st)])
    return out


def stage_positions(stages: list[Stage]) -> list[list[tuple[int, Stage]]]:
    """The plan's stages as pipeline positions (index, stage): a layers stage alone, a tensor group's shards together."""
    return _positions(list(enumerate(stages)))


def _sender(position: list[tuple[int, Stage]]) -> str:
    """The node a position's output leaves from: its die, or its shard group's first die."""
    st = position[0][1]
    return st.shard.group[0] if st.kind == "shard" and st.shard else st.die


def _model_stage_problems(m: ModelEntry, stages: list[tuple[int, Stage]], n_blocks: int, system,
                          same_system: bool) -> list[str]:
    """One model's stages: dies used once, positions tiling its blocks in order, each stage sound."""
    if not stages:
        return [f"stages: no stage runs model {m.id}; every model needs stages covering its blocks"]
    seen: set[str] = set()
    out, start, prev = [], 0, "host"
    dies = system.die_names
    nodes = {"host", *dies, *system.switches}
    for position in _positions(stages):
        s, e = position[0][1].blocks
        for i, st in position:
            where = f"stages[{i}]"
            out += _die_problems(where, st, dies, seen, m.id) + _kind_problems(where, st, position[0][1])
            seen.add(st.die)
            out += _stage_format_problems(where, st, n_blocks, system if same_system else None)
            if same_system:
                out += _route_problems(where, st, prev, nodes)
        i0 = position[0][0]
        if s != start or not s < e <= n_blocks:
            out.append(f"stages[{i0}].blocks: [{s}, {e}] should start at {start} (where model {m.id}'s previous "
                       f"stage ends) and end after that, at most at {n_blocks}; the stages' [start, end) ranges "
                       f"tile blocks 0..{n_blocks} in order")
        else:
            out += [x for i, st in position for x in _block_flag_problems(f"stages[{i}]", st, n_blocks)]
        out += _shard_group_problems(position)
        start = max(start, e)
        prev = _sender(position)
    if start != n_blocks:
        out.append(f"stages: cover blocks 0..{start} of model {m.id}, but it has {n_blocks} blocks (embedding, "
                   f"{n_blocks - 2} layers, head); the last stage must end at {n_blocks}")
    return out


def _die_problems(where: str, st: Stage, dies: list[str], seen: set[str], model_id: str) -> list[str]:
    """The die is in the system and holds no other stage of the same model."""
    if st.die not in dies:
        return [f"{where}.die: unknown die {st.die!r}; the plan's system has {', '.join(dies)}"]
    if st.die in seen:
        return [f"{where}.die: {st.die} holds two stages of model {model_id}; a model's pipeline uses each die "
                f"once (stages of different models may share a die)"]
    return []


def _kind_problems(where: str, st: Stage, first: Stage) -> list[str]:
    """A layers stage has no shard; a shard stage has one, naming its die, with its group's block range."""
    if st.kind == "layers":
        return [] if st.shard is None else [f'{where}.shard: a "layers" stage holds whole layers; set shard to '
                                            f'null or kind to "shard"']
    if st.shard is None:
        return [f'{where}.shard: a "shard" stage needs its shard (group, index, heads, kv_heads, mlp_columns, '
                f'collective)']
    sh = st.shard
    out = []
    if sh.index >= len(sh.group) or sh.group[sh.index] != st.die:
        out.append(f"{where}.shard.index: {sh.index} should be the place of {st.die} in group {sh.group}")
    if len(set(sh.group)) != len(sh.group):
        out.append(f"{where}.shard.group: {sh.group} names a die twice")
    if st.blocks != first.blocks:
        out.append(f"{where}.blocks: {list(st.blocks)} differs from its shard group's {list(first.blocks)}; the "
                   f"dies of a group share one block range")
    return out


def _shard_group_problems(position: list[tuple[int, Stage]]) -> list[str]:
    """A shard group's stages are its dies in order, and their spans tile heads, KV heads and MLP columns."""
    first = position[0][1]
    if first.kind != "shard" or first.shard is None:
        return []
    where = f"stages[{position[0][0]}]"
    group = first.shard.group
    if [st.die for _, st in position] != group:
        return [f"{where}.shard.group: {group} should list the dies of stages {[i for i, _ in position]} in order "
                f"({[st.die for _, st in position]})"]
    out = []
    for name in ("kv_heads", "heads", "mlp_columns", "vocab"):
        spans = [getattr(st.shard, name) for _, st in position]
        if name == "vocab" and all(x is None for x in spans):
            continue
        if any(x is None for x in spans):
            out.append(f"{where}.shard.vocab: every die of a group gives its vocab span, or none does")
            continue
        if any(a[0] + a[1] != b[0] for a, b in zip(spans, spans[1:])) or spans[0][0] != 0:
            out.append(f"{where}.shard.{name}: the group's spans {[list(x) for x in spans]} should tile from 0 "
                       f"without gaps or overlap, in group order")
    return out


def shard_width_problems(plan: Plan, configs: dict) -> list[str]:
    """Shard spans end within the model's heads, KV heads and MLP columns, query heads in whole KV groups."""
    out = []
    for i, st in enumerate(plan.stages):
        cfg = configs.get(st.model)
        if st.shard is None or cfg is None:
            continue
        sh = st.shard
        widths = {"heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads, "mlp_columns": cfg.intermediate_size,
                  "vocab": cfg.vocab_size}
        for name, width in widths.items():
            if getattr(sh, name) is None:
                continue
            first, count = getattr(sh, name)
            if first + count > width:
                out.append(f"stages[{i}].shard.{name}: [{first}, {count}] ends at {first + count}, beyond the "
                           f"model's {width}")
            elif sh.index == len(sh.group) - 1 and first + count != width:
                out.append(f"stages[{i}].shard.{name}: the group's last span [{first}, {count}] ends at "
                           f"{first + count}; the group's spans must cover all {width}")
        g = cfg.num_heads // cfg.num_kv_heads
        want = [sh.kv_heads[0] * g, sh.kv_heads[1] * g]
        if list(sh.heads) != want:
            out.append(f"stages[{i}].shard.heads: {list(sh.heads)} should be {want}, the query heads of kv_heads "
                       f"{list(sh.kv_heads)} ({g} per KV head)")
    return out


def _stage_format_problems(where: str, st: Stage, n_blocks: int, system) -> list[str]:
    """The stage's overrides name its own layer blocks once each, in order; with `system`, its die holds each format."""
    s, e = st.blocks
    lo, hi = max(s, 1), min(e, n_blocks - 1)
    blocks = [b for b, _ in st.block_formats]
    out = [f"{where}.block_formats[{k}]: block {b} is not a layer block of this stage ({lo}..{hi - 1})"
            for k, b in enumerate(blocks) if not lo <= b < hi]
    if blocks != sorted(set(blocks)):
        out.append(f"{where}.block_formats: blocks {blocks} should each appear once, in increasing order")
    holds_head = st.has_embedding or st.has_lm_head
    if (st.head_format is None) == holds_head:
        out.append(f"{where}.head_format: should be {'a format' if holds_head else 'null'}, as the stage "
                   f"{'holds' if holds_head else 'holds neither'} the embedding or the LM head")
    return out + (_die_format_problems(where, st, system) if system is not None else [])


def _die_format_problems(where: str, st: Stage, system) -> list[str]:
    """Every format the stage holds is one its die computes in (tops) or expands (weight_only)."""
    if st.die not in system.die_names:
        return []
    dt = system.die_type(st.die)
    out = []
    for path, name in _held_formats(where, st):
        try:
            f = get_format(name)
        except ChipfuseError:
            continue  # reported by _format_problems
        if f.precision not in dt.tops and f.precision not in dt.weight_only:
            out.append(f"{path}: {f.name} is {f.precision}, which {st.die} does not hold: {st.die} supports "
                       f"{', '.join(dt.tops)} (tops) and expands {', '.join(dt.weight_only) or 'none'} "
                       f"(weight_only); re-run `chipfuse plan`, which falls back to a format the die has")
    return out


def _route_problems(where: str, st: Stage, prev: str, nodes: set[str]) -> list[str]:
    """route_in names known nodes and runs from the previous position's sender (or host) to this die."""
    unknown = [n for n in st.route_in if n not in nodes]
    if unknown:
        return [f"{where}.route_in: unknown node(s) {', '.join(map(repr, unknown))}; nodes are {', '.join(sorted(nodes))}"]
    if st.route_in[0] != prev or st.route_in[-1] != st.die:
        return [f"{where}.route_in: must run from {prev} to {st.die}, got {' -> '.join(st.route_in)}"]
    return []


def _memory_problems(plan: Plan, system) -> list[str]:
    """memory_bytes is the die's memory in the plan's system, and the stages on each die fit in it together."""
    used: dict[str, list[int]] = {}
    out = []
    for i, st in enumerate(plan.stages):
        if st.die not in system.die_names:
            continue
        has = int(system.die_memory_bytes(st.die))
        if st.memory_bytes != has:
            out.append(f"stages[{i}].memory_bytes: {st.memory_bytes:,} differs from {st.die}'s memory in the plan's "
                       f"system ({has:,} bytes); re-run `chipfuse plan`")
        used.setdefault(st.die, []).append(i)
    for die, idx in used.items():
        total, has = sum(plan.stages[i].used_bytes for i in idx), int(system.die_memory_bytes(die))
        if total > has:
            where = f"stages[{idx[0]}]" if len(idx) == 1 else "stages[" + ", ".join(map(str, idx)) + "]"
            out.append(f"{where}: weights, KV cache and workspace take {total:,} bytes but {die} has {has:,}; "
                       f"re-run `chipfuse plan`")
    return out


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
