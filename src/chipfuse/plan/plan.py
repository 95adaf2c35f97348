"""The Plan: the one artifact between compiler, simulator and runtime (JSON, versioned).

Schema `chipfuse.plan`, version 1 (documented field by field in docs/plan-schema.md). A
stage is a unit of work on one die. Version 1 writes `kind: "pipeline"` stages (a range of
blocks); the `shard` field is reserved for tensor splits (a shard of every layer with a
collective), so readers must check `kind` before assuming a layer range.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ChipfuseError

SCHEMA = "chipfuse.plan"
SCHEMA_VERSION = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_M):
    name: str
    source: str = Field(description="catalogue entry, config.json or GGUF path it was read from")
    config: dict = Field(description="the normalised ModelConfig, enough to rebuild the IR")


class WorkloadSpec(_M):
    context: int = Field(gt=0, description="tokens each sequence may hold (prompt + generated)")
    batch: int = Field(gt=0, description="concurrent sequences")
    prompt_tokens: int = Field(gt=0)
    kv_precision: str = "fp16"


class Shard(_M):
    """Reserved for tensor splits (schema version 2): which part of each layer this stage holds."""

    axis: Literal["heads", "mlp_columns"]
    index: int
    of: int


class Stage(_M):
    index: int
    die: str
    kind: Literal["pipeline"] = "pipeline"
    blocks: tuple[int, int] = Field(description="[start, end) block indices; block 0 is the embedding")
    layers: tuple[int, int] | None = Field(description="[first, last] transformer layers, inclusive; null if none")
    has_embedding: bool
    has_lm_head: bool
    format: str = Field(description="weight format of the layers on this die (after any precision fallback)")
    head_format: str | None = Field(None, description="format of the embedding / LM head table, if this die holds one")
    weight_bytes: int
    kv_bytes: int = Field(description="KV cache at the workload's context x batch")
    workspace_bytes: int
    memory_bytes: int = Field(description="the die's usable memory")
    route_in: list[str] = Field(description="nodes the stage input travels through, sender first")
    shard: Shard | None = None

    @property
    def used_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.workspace_bytes


class StagePrediction(_M):
    die: str
    decode_s: float = Field(description="one decode step of one micro-batch on this die, links excluded")
    prefill_s: float
    link_out_s: float = Field(description="decode: sending this stage's output on")
    bound: Literal["compute", "memory", "link"]
    compute_utilisation: float = Field(description="share of the decode step spent computing at peak x efficiency")
    bandwidth_needed_gb_per_s: float | None = Field(
        description="bandwidth at which memory time would equal compute time (null if the stage computes nothing)")
    bandwidth_has_gb_per_s: float
    read_bytes_per_step: float
    reason: str


class Prediction(_M):
    ttft_s: float
    decode_tokens_per_s: float = Field(description="aggregate over the batch")
    decode_tokens_per_s_per_request: float
    decode_step_s: float = Field(description="time for every sequence of the batch to gain one token")
    micro_batches: int
    bytes_read_per_token: float = Field(description="DRAM bytes read per generated token at batch 1")
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
    stages: list[Stage]
    fits: bool
    warnings: list[str] = []
    prediction: Prediction | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def recipe(self):
        """The weight formats the plan asks for (before any die's fallback)."""
        from ..quant.formats import Recipe, get_format

        base = Recipe.of(self.precision, self.head_precision)
        return Recipe(base.default, base.head, tuple((b, get_format(f).name) for b, f in self.block_formats))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ChipfuseError(f"{p}: cannot read plan ({err})") from None
        if data.get("schema") != SCHEMA:
            raise ChipfuseError(f"{p}: not a chipfuse plan (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ChipfuseError(f"{p}: plan schema version {data.get('schema_version')} is not supported "
                                f"by this chipfuse (reads version {SCHEMA_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ChipfuseError(f"{p}: invalid plan: {err}") from None
