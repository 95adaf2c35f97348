"""The HTTP face of the device: OpenAI routes, health, Prometheus metrics. FastAPI; runs under uvicorn.

Every error has OpenAI's shape and a status that says whose fault it is: 400 for a request that cannot
be served as written (the message names the field and the limit), 401 for a wrong key, 413 for a
body over the limit, 429 with Retry-After when the queue is full, 503 while the dies start or
recover. A generation whose client disconnects is cancelled: the scheduler retires it within a step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Busy, Engine, Unavailable
from .schema import ChatRequest, CompletionRequest, ErrorResponse, error_body

STATIC = Path(__file__).parent / "static"


def _refusals(*codes: int) -> dict:
    """OpenAPI entries for the refusals a route can give, all in OpenAI's error shape."""
    why = {400: "the request cannot be served as written", 401: "a missing or wrong API key",
           413: "the body is over --max-body-bytes", 429: "the queue is full (see Retry-After)",
           503: "the dies are starting or recovering (see Retry-After)"}
    return {c: {"model": ErrorResponse, "description": why[c]} for c in codes}


_GENERATE = {**_refusals(400, 401, 413, 429, 503),
             200: {"description": "the completion, or with `stream: true` its server-sent events",
                   "content": {"text/event-stream": {"schema": {  # each event: a chunk's JSON, or [DONE]
                       "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}}}}


class Refused(Exception):
    """A request that cannot be served as written: status and message (and the field, if one)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers)


def create_app(engine: Engine, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="chipfuse", description="the dies of a chiplet system as one OpenAI-compatible model")
    limits = engine.limits

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Body size and API key before any route; every response counted by route and status."""
        t0 = time.perf_counter()
        route = request.url.path if request.url.path in _ROUTES else "other"
        response = await _checked(request) or await call_next(request)
        engine.metrics.requests.labels(route, str(response.status_code)).inc()
        if route.startswith("/v1/") and request.method == "POST":
            engine.metrics.latency.observe(time.perf_counter() - t0)
        return response

    async def _checked(request: Request) -> JSONResponse | None:
        """The refusal for a body over the limit or a missing key, else None."""
        if request.method == "POST":
            declared = request.headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
                return _error(413, f"the body is {declared} bytes; the limit is --max-body-bytes "
                                   f"{limits.max_body_bytes}")
            if len(await request.body()) > limits.max_body_bytes:
                return _error(413, f"the body is over the limit of --max-body-bytes {limits.max_body_bytes}")
        if api_key and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            token = got[7:] if got.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                              "authentication_error")
        return None

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        where = ".".join(loc)
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', msg)}")
        if first.get("type") == "model_attributes_type":
            return _error(400, "the body must be a JSON object")
        return _error(400, f"{where or 'body'}: {msg.removeprefix('Value error, ')}", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        what = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed on "
                f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, what, headers=getattr(exc, "headers", None))

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return _error(exc.status, exc.message, exc.kind, exc.param)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return _error(429, str(exc), "rate_limit_error", headers={"Retry-After": str(limits.retry_after_s)})

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable):
        return _error(503, str(exc), "server_error", headers={"Retry-After": str(limits.retry_after_s)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: one line, never a traceback
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/v1/device", responses=_refusals(401, 503))
    async def device():
        return engine.device_view() if engine.state == "ok" else _error(503, f"the device is {engine.state}",
                                                                          "server_error")

    @app.get("/health", responses={503: {"description": "starting, recovering or stopping (same body)"}})
    async def health():
        st = engine.status()
        dev = engine.device
        st["slots_busy"] = len(dev.scheduler.active) if dev is not None else None
        return JSONResponse(st, status_code=200 if engine.state == "ok" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", responses=_refusals(401))
    async def models():
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "created": 0,
                                            "owned_by": "chipfuse"}]}

    @app.post("/v1/chat/completions", responses=_GENERATE)
    async def chat(body: ChatRequest, request: Request):
        dev = _device(engine)
        try:
            msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        except ValueError as e:
            raise Refused(400, f"messages: {e}", "messages") from None
        return await _serve(engine, request, body, dev.chat_ids(msgs), chat=True)

    @app.post("/v1/completions", responses=_GENERATE)
    async def completions(body: CompletionRequest, request: Request):
        dev = _device(engine)
        ids = dev.tokenizer.encode(body.prompt, add_special_tokens=False)
        return await _serve(engine, request, body, list(ids), chat=False)

    def openapi() -> dict:
        """FastAPI's schema without the 422s it documents for every body (this server answers them with 400), and
        with this server's --max-tokens as the bodies' maximum."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in doc["paths"].values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            schemas = doc.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for name in ("ChatRequest", "CompletionRequest"):
                for field in ("max_tokens", "max_completion_tokens"):
                    schemas[name]["properties"][field]["anyOf"][0]["maximum"] = limits.max_tokens
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/device", "/v1/chat/completions", "/v1/completions")


def _device(engine: Engine):
    if engine.state != "ok" or engine.device is None:
        raise Unavailable(f"the device is {engine.state}; retry shortly")
    return engine.device


def _budget(engine: Engine, body, n_prompt: int) -> int:
    """Tokens this request may generate, or a 400 naming the limit it breaks."""
    lim, ctx = engine.limits, engine.context
    if n_prompt == 0:
        raise Refused(400, "the prompt is empty: it encodes to no tokens (give it some text)", "prompt")
    if n_prompt > engine.max_prompt_tokens():
        raise Refused(400, f"the prompt is {n_prompt} tokens; the limit is {engine.max_prompt_tokens()} "
                           f"(the context holds {ctx})", "messages")
    for name in ("max_completion_tokens", "max_tokens"):  # both are checked, though the first one set is used
        asked = getattr(body, name)
        if asked is not None and asked > lim.max_tokens:
            raise Refused(400, f"{name} {asked} is over the server's limit of --max-tokens {lim.max_tokens}", name)
    asked = body.token_limit()
    if asked is not None and n_prompt + asked > ctx:
        raise Refused(400, f"the prompt ({n_prompt} tokens) + max_tokens ({asked}) exceed the context of {ctx} "
                           f"tokens; ask for at most {ctx - n_prompt}", "max_tokens")
    return asked if asked is not None else min(lim.max_tokens, ctx - n_prompt)


class _Stops:
    """Text released as it streams, held back only where it could be the start of a stop string."""

    def __init__(self, stops: list[str]):
        self.stops, self.hold = stops, max((len(s) for s in stops), default=1) - 1
        self.text, self.sent = "", 0

    def push(self, piece: str) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string ended the answer)."""
        self.text += piece
        found = [(i + len(s), i) for s, i in ((s, self.text.find(s, max(0, self.sent - self.hold))) for s in self.stops)
                 if i >= 0]
        if found:  # the stop string completed first ends the answer, whatever the pieces: a longer one that began
            end = min(found)[1]  # earlier but would end later was never generated (the answer stopped before)
            out, self.text = self.text[self.sent:end], self.text[:end]
            self.sent = end
            return out, True
        safe = len(self.text) - self.hold
        if safe > self.sent:
            out, self.sent = self.text[self.sent:safe], safe
            return out, False
        return "", False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


async def _serve(engine: Engine, request: Request, body, ids: list[int], chat: bool):
    limit = _budget(engine, body, len(ids))
    engine.admit()
    t0 = time.perf_counter()
    try:
        gen = engine.device.submit(ids, limit, temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    except Exception:
        engine.release()
        raise
    engine.metrics.prompt_tokens.inc(len(ids))
    name = body.model or engine.model_name
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    stops = _Stops(body.stop_strings())
    it = iter(gen)

    async def pieces():
        """(text, stopped) as the device produces them; cancels the generation if the caller goes away."""
        done, first, counted = False, True, 0
        try:
            while True:
                piece = await asyncio.to_thread(next, it, None)
                if piece is None:
                    done = True
                    tail = stops.flush()
                    if tail:
                        yield tail, False
                    return
                if first:
                    engine.metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                engine.tick(len(gen.tokens) - counted)
                counted = len(gen.tokens)
                out, stopped = stops.push(piece)
                if out or stopped:
                    yield out, stopped
                if stopped:
                    gen.cancel()
                    done = True
                    return
        finally:
            if not done:
                gen.cancel()  # the client left: the scheduler retires it at its next step, freeing the slot
            engine.metrics.generated_tokens.inc(len(gen.tokens))
            engine.release()

    def finish(stopped: bool) -> str:
        return "stop" if stopped or gen.finish_reason == "stop" else "length"

    def usage() -> dict:
        return {"prompt_tokens": len(ids), "completion_tokens": len(gen.tokens),
                "total_tokens": len(ids) + len(gen.tokens)}

    if body.stream:
        async def events():
            stopped = False
            try:
                if chat:
                    yield _sse(_chunk(rid, created, name, {"role": "assistant", "content": ""}, None, chat))
                async for text, hit in pieces():
                    stopped = stopped or hit
                    if text:
                        yield _sse(_chunk(rid, created, name, {"content": text} if chat else text, None, chat))
                yield _sse(_chunk(rid, created, name, {} if chat else "", finish(stopped), chat) | {"usage": usage()})
            except Exception as e:  # noqa: BLE001 - a die died mid-stream: say so in the stream, then end it
                yield _sse(error_body(f"generation failed: {e}", "server_error"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, stopped = "", False
    try:
        async for piece, hit in pieces():
            text += piece
            stopped = stopped or hit
    except Exception as e:  # noqa: BLE001 - the device failed this request
        raise Unavailable(f"generation failed: {e}") from None
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish(stopped),
                  "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish(stopped), "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice], "usage": usage()}


def _chunk(rid: str, created: int, model: str, delta, finish_reason: str | None, chat: bool) -> dict:
    if chat:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": delta, "finish_reason": finish_reason, "logprobs": None}]}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


__all__ = ["create_app", "Refused"]
