"""Workload files: the models a system must run at once, each with its demand.

    name: hospital-records
    models:
      - name: det                 # a name of your own, used by fed_by and in the report
        onnx: ocr-det             # a built-in vision model (ocr-det, ocr-cls, ocr-rec) or an .onnx path
        precision: int8
        rate: 0.5                 # items per second: frames here, generated tokens for an LLM
        latency_ms: 2000          # optional: one item, start to end, on an idle system
      - name: rec
        onnx: ocr-rec
        fed_by: {model: det, per_item: 12}   # 12 text lines per page: its rate follows det's
      - name: chat
        llm: smollm2              # a catalogue name, a config.json or a GGUF
        precision: int4
        rate: 20                  # tokens per second
        prompt_tokens: 300
        output_tokens: 60
        priority: 2               # spare capacity goes to higher priorities first

Every field is checked and a mistake is named with its path (models[2].rate ...).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SpecError, format_validation_error
from ..io import read_text_bounded

MAX_WORKLOAD_BYTES = 1 << 20
MAX_MODELS = 64
NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
CV_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
LLM_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(v: float, what: str) -> float:
    try:
        ok = not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float is no real rate either
        ok = False
    if not ok:
        raise ValueError(f"{what} must be a finite number")
    return v


class Feed(_Strict):
    model: str = Field(description="the model whose output this one reads")
    per_item: float = Field(ge=1e-6, le=1e6, description="items of this model per item of the feeding one")

    @field_validator("per_item", mode="before")
    @classmethod
    def _num(cls, v):
        return _finite(v, "per_item") if isinstance(v, (int, float)) else v


class ModelDemand(_Strict):
    name: str = Field(pattern=NAME)
    onnx: str | None = Field(None, description="a built-in vision model or an .onnx path")
    llm: str | None = Field(None, description="a catalogue name, a config.json or a GGUF")
    frame: tuple[int, ...] | None = Field(None, description="a vision model's input shape (default: its own)")
    precision: str | None = Field(None, description="vision: fp32 fp16 bf16 int8 (default fp16); LLM: also int4")
    rate: float | None = Field(None, ge=1e-6, le=1e7, description="items per second: frames, or generated tokens "
                                                                  "(1e-6 .. 1e7)")
    fed_by: Feed | None = None
    latency_ms: float | None = Field(None, gt=0, le=1e7)
    priority: float = Field(1.0, gt=0, le=1e6)
    prompt_tokens: int = Field(256, ge=1, le=1 << 20, description="LLM: tokens of a request's prompt")
    output_tokens: int = Field(128, ge=1, le=1 << 20, description="LLM: tokens generated per request")
    batch: int = Field(4, ge=1, le=1024, description="LLM: sequences decoded together on a die")

    @field_validator("rate", "latency_ms", "priority", mode="before")
    @classmethod
    def _num(cls, v, info):
        return _finite(v, info.field_name) if isinstance(v, (int, float)) else v

    @field_validator("frame")
    @classmethod
    def _frame(cls, v):
        if v is not None and (len(v) != 4 or any(d < 1 or d > 8192 for d in v)):
            raise ValueError("a frame is [batch, channels, height, width], each 1 .. 8192")
        return v

    @model_validator(mode="after")
    def _one_of_each(self):
        if (self.onnx is None) == (self.llm is None):
            raise ValueError(f"model {self.name}: give exactly one of `onnx` (a vision model) or `llm`")
        if (self.rate is None) == (self.fed_by is None):
            raise ValueError(f"model {self.name}: give exactly one of `rate` (items per second) or `fed_by`")
        allowed = LLM_PRECISIONS if self.llm else CV_PRECISIONS
        if self.precision is not None and self.precision not in allowed:
            raise ValueError(f"model {self.name}: precision {self.precision!r} is not one of {', '.join(allowed)}")
        if self.llm and self.frame is not None:
            raise ValueError(f"model {self.name}: `frame` is for vision models")
        return self

    @property
    def kind(self) -> Literal["cv", "llm"]:
        return "llm" if self.llm else "cv"

    @property
    def unit(self) -> str:
        return "tokens" if self.llm else "frames"

    @property
    def weight_precision(self) -> str:
        return self.precision or ("int4" if self.llm else "fp16")


class Workload(_Strict):
    name: str = Field("workload", pattern=NAME)
    models: list[ModelDemand] = Field(min_length=1, max_length=MAX_MODELS)

    @model_validator(mode="after")
    def _names_and_feeds(self):
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique: {', '.join(dup)} repeated")
        for m in self.models:
            if m.fed_by and m.fed_by.model not in names:
                close = difflib.get_close_matches(m.fed_by.model, names, n=1)
                raise ValueError(f"model {m.name}: fed_by names {m.fed_by.model!r}, which is not a model here"
                                 + (f" (did you mean {close[0]!r}?)" if close else ""))
            if m.fed_by and m.fed_by.model == m.name:
                raise ValueError(f"model {m.name} cannot feed itself")
        for m in self.models:  # a chain of feeds ends at a model with a rate
            seen, cur = [m.name], m
            while cur.fed_by:
                cur = next(x for x in self.models if x.name == cur.fed_by.model)
                if cur.name in seen:
                    raise ValueError(f"models feed each other in a loop: {' <- '.join(seen + [cur.name])}")
                seen.append(cur.name)
        for m in self.models:
            d = self.demand(m.name)
            if not 1e-6 <= d <= 1e7:
                raise ValueError(f"model {m.name}: its feeds ask {d:.3g} items per second; keep each model's "
                                 "demand within 1e-6 .. 1e7 (lower a rate or a per_item)")
        return self

    def demand(self, name: str) -> float:
        """Items per second asked of model `name`: its rate, or its feeder's demand times per_item."""
        m = next(x for x in self.models if x.name == name)
        return m.rate if m.rate is not None else self.demand(m.fed_by.model) * m.fed_by.per_item  # type: ignore[union-attr]


def parse_workload(data: object, source: str) -> Workload:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a workload file is a YAML mapping with `models:` (a list); see "
                        "docs/placement.md")
    try:
        return Workload.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, err, "workload")) from None


def load_workload(path: str | Path) -> Workload:
    from ..hw.load import parse_yaml

    text = read_text_bounded(path, "workload file", MAX_WORKLOAD_BYTES, error=SpecError)
    return parse_workload(parse_yaml(text, str(path)), str(path))


__all__ = ["Workload", "ModelDemand", "Feed", "load_workload", "parse_workload"]
