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
