"""What several runtime tests compare with: the single-process reference's greedy tokens."""

from __future__ import annotations

PROMPTS = ["The three primary colours are", "def fibonacci(n):"]


def reference_tokens(gguf, n_tokens: int, context: int, batch: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy continuations) of PROMPTS from the whole model in one process, in the formats a
    one-die plan holds at the runtime's default precision (int4 layers, int8 head)."""
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system
    from chipfuse.runtime.reference import greedy, reference_for_plan
    from chipfuse.runtime.tokenizer import load_tokenizer

    plan = compile_plan(load_model_config(gguf), load_system("talk-medium-d2d"), "int4", context=context,
                        batch=batch, prompt_tokens=min(64, context))
    model = reference_for_plan(gguf, plan)
    tok = load_tokenizer(gguf)
    ids = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    return ids, [greedy(model, i, n_tokens) for i in ids]


def kill_die_mid_answer(dev, rank_index: int, max_tokens: int) -> str:
    """SIGKILL one die after three tokens of a long answer; the Device must fail with a DeviceError within 30 s
    (a bound against hanging, not a speed goal), close, and leave no worker process. Returns the error text."""
    import os
    import signal
    import time

    import pytest

    from chipfuse.runtime.device import DeviceError

    procs = list(dev._procs)
    it = iter(dev.submit("Tell me a very long story about the sea.", max_tokens, stop_ids=set()))
    for _ in range(3):
        next(it)
    os.kill(procs[rank_index].pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(DeviceError) as e:
        for _ in it:
            pass
    assert time.monotonic() - t0 < 30
    dev.close()
    for p in procs:
        assert p.wait(timeout=10) is not None
    return str(e.value)
