"""`chipfuse serve`: the dies as one OpenAI-compatible server (FastAPI under uvicorn).

    chipfuse serve -s talk-4die-d2d --port 8000        # then any OpenAI client at http://127.0.0.1:8000/v1

`serve(...)` opens the device from a plan (the embedded SmolLM2 by default), builds the app
(serve.app) around an `Engine` (serve.engine: admission limits, metrics, restart after a die
fails) and runs it until SIGINT / SIGTERM, which drain running requests within a bound and stop
every die.
"""

from __future__ import annotations

from .engine import Engine, Limits


def build(system, model=None, precision: str | None = None, *, context: int = 2048, slots: int = 4,
          limits: Limits | None = None, split: str = "pipeline", prefill_chunk: int | None = 128,
          on_event=lambda message: None, adapter=None) -> Engine:
    """An Engine whose device is `open_device(system, model, precision, context, max_batch=slots)`; prompts go
    to the dies `prefill_chunk` tokens at a time so a long one does not stall the running streams; `adapter`: a LoRA
    folder served unmerged (checked now, before any die starts)."""
    from ..api.core import load_system, open_device
    from ..errors import ChipfuseError
    from ..runtime.device import resolve_model

    if not (isinstance(slots, int) and 1 <= slots <= 64):
        raise ChipfuseError(f"--slots {slots!r}: give 1..64 concurrent sequences (the KV-cache slots)")
    sysm = load_system(system) if isinstance(system, str) else system
    path, cfg = resolve_model(model)
    if adapter is not None:
        from ..runtime.adapters import read_adapter

        read_adapter(adapter, cfg)
    lim = limits or Limits()
    if lim.max_tokens >= context:
        lim = Limits(lim.max_body_bytes, context - 1, lim.max_prompt_tokens, lim.max_queue, lim.retry_after_s)

    def opener():
        return open_device(sysm, model, precision, context=context, max_batch=slots, split=split,
                           prefill_chunk=prefill_chunk, adapter=adapter)

    return Engine(opener, lim, cfg.name or path.stem, on_event)


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          drain_s: float = 10.0) -> None:
    """Run the server until interrupted; the engine (and its dies) is closed on the way out."""
    import uvicorn

    from .app import create_app

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGINT / SIGTERM: refuse new work, let running streams end
            engine.state = "draining"
            engine.metrics.up.set(0)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(create_app(engine, api_key), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=drain_s)
    try:
        _Server(config).run()
    finally:
        engine.close()


__all__ = ["build", "serve", "Engine", "Limits"]
