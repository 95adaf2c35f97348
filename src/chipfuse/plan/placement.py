"""The placement record: which model runs where, at what rate, for a workload on a system (versioned JSON).

`chipfuse place --out FILE` writes it; `chipfuse run --workload W` runs what it says (the runtime reads
the pieces and rates here and never re-derives them). Every decision is resolved: the model's file,
frame and precision, each deployment's dies and node ranges, the share of the stream it takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError, format_validation_error

PLACEMENT_SCHEMA = "chipfuse.placement"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Piece(_M):
    die: str
    start: int = Field(ge=0, description="first node (vision) of this piece")
    end: int = Field(ge=1, description="one past its last node")


class Deployment(_M):
    model: str
    kind: Literal["cv", "llm"]
    label: str
    dies: list[str] = Field(min_length=1)
    pieces: list[Piece] = Field(default_factory=list, description="vision: node ranges in order; LLM: empty")
    precision: str = Field(description="what the dies run (after any fallback)")
    format: str | None = Field(None, description="LLM: the weight format")
    rate: float = Field(ge=0, description="items per second this deployment takes (predicted)")


class ModelRecord(_M):
    name: str
    kind: Literal["cv", "llm"]
    source: str = Field(description="the ONNX file, or the LLM's catalogue name / GGUF")
    frame: list[int] | None = None
    unit: Literal["frames", "tokens"]
    demand: float = Field(gt=0)
    served: float = Field(ge=0, description="items per second predicted with this placement")
    fed_by: str | None = None
    per_item: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    batch: int | None = None


class Placement(_M):
    schema_: Literal["chipfuse.placement"] = Field("chipfuse.placement", alias="schema")
    version: Literal[1] = 1
    workload: str
    system: dict
    method: str = Field(description="milp (optimal), milp-time-limit or greedy: how it was found")
    lam: float = Field(ge=0, description="the share of every demand met at once")
    bound: float = Field(ge=0, description="no placement meets more than this share")
    models: list[ModelRecord]
    deployments: list[Deployment]

    def save(self, path: str | Path) -> None:
        from ..io import write_text_atomic

        write_text_atomic(path, json.dumps(self.model_dump(mode="json", by_alias=True), indent=1) + "\n")

    def deployments_of(self, model: str) -> list[Deployment]:
        return [d for d in self.deployments if d.model == model and d.rate > 0]


def load_placement(path: str | Path) -> Placement:
    from ..io import read_text_bounded

    text = read_text_bounded(path, "placement file", 16 << 20, error=SpecError)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SpecError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != PLACEMENT_SCHEMA:
        raise SpecError(f"{path}: not a placement (made by `chipfuse place --out`)")
    try:
        return Placement.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(str(path), err, "placement")) from None


__all__ = ["Placement", "Deployment", "ModelRecord", "Piece", "load_placement", "PLACEMENT_SCHEMA"]
