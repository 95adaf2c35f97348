"""The OpenAI-compatible request bodies the server accepts, checked field by field, and its error shape.

Only what the server does is accepted: an unknown field is ignored (as OpenAI's clients send extra
ones), but a known field with a wrong type or value is a 400 that names it. `n` above 1, tools and
images are refused in words rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4


def _whole(v):
    """JSON has one number type: 2.0 is the integer 2 (JSON Schema says so too); 2.5, "2" and true are not."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _int(**bounds) -> Any:
    """A JSON integer with `bounds` (pydantic's ge/le...), an integral float accepted as one."""
    return Annotated[StrictInt, Field(**bounds), BeforeValidator(_whole)]


Number = Annotated[float, Field(strict=True)]  # 1 and 1.5, not true or "1"
# what the validators below check in our own words, stated in the OpenAPI schema for clients and fuzzers
_STOP_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1},
                          {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOPS},
                          {"type": "null"}]}
_CONTENT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "null"},
                             {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                                         "properties": {"type": {"enum": ["text"]},
                                                                        "text": {"type": "string"}}}}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: _int(ge=1) | None = None
    max_completion_tokens: _int(ge=1) | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=2.0, allow_inf_nan=False)] = 1.0
    top_p: Annotated[Number, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    seed: _int() | None = None
    stop: Annotated[str | list[str] | None, Field(json_schema_extra=_STOP_SCHEMA)] = None
    stream: StrictBool = False
    n: _int(json_schema_extra={"minimum": 1, "maximum": 1}) = 1
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n={v}: this server returns one choice per request; send n=1 (or several requests)")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings (got {len(stops)})")
        if any(not s for s in stops):
            raise ValueError("a stop string is empty")
        return v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v):
        return None if v is None else v % 2**63  # any integer seeds; the generator takes 0 .. 2**63 - 1

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Annotated[str, Field(json_schema_extra={"enum": list(ROLES)})]  # checked below, in our words
    content: Annotated[str | list[dict[str, Any]] | None, Field(json_schema_extra=_CONTENT_SCHEMA)] = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"role {v!r} is not one of {', '.join(ROLES)}")
        return v

    def text(self) -> str:
        """The content as text: a string, or the text parts of a list (images are refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part of type {part.get('type')!r}: this server reads text parts only")
            out.append(part["text"])
        return "".join(out)


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    tools: Annotated[list[Any] | None, Field(json_schema_extra={"maxItems": 0})] = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tools are not supported by this server")
        return v


class CompletionRequest(_Body):
    prompt: str = Field(min_length=1)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every refusal looks like (for the OpenAPI schema; the server writes it with `error_body`)."""

    error: ErrorDetail


ErrorKind = Literal["invalid_request_error", "rate_limit_error", "server_error", "authentication_error"]

__all__ = ["ChatRequest", "CompletionRequest", "Message", "error_body", "ErrorResponse", "ROLES", "MAX_STOPS"]
