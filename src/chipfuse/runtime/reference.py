"""The single-process reference: the whole model in one StageModel, at a plan's precision.

Distributed runs are checked token for token against it; at FP32 it is checked against
`transformers` on the same file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..frontends.config import ModelConfig
from ..plan.plan import Plan
from ..quant.formats import get_format
from .stage import Segment, StageModel
from .weights import open_weights, wanted_names


def reference_model(path: str | Path, cfg: ModelConfig, layer_format: str, head_format: str | None = None,
                    context: int = 2048, kv_precision: str = "fp16", layer_formats: dict | None = None,
                    quantized: dict | None = None) -> StageModel:
    blocks = (0, cfg.num_layers + 2)
    w = open_weights(path, cfg).load(wanted_names(cfg, range(*blocks)))
    return StageModel(cfg, w, blocks, get_format(layer_format), context, kv_precision,
                      get_format(head_format) if head_format else None, layer_formats, quantized)


def reference_for_plan(path: str | Path, plan: Plan) -> StageModel:
    """The whole model in one process, each layer in the format its stage holds (the plan's resolved formats)."""
    st = plan.stages[0]
    head = st.head_format or plan.stages[-1].head_format
    layers = {}
    for i, stage in enumerate(plan.stages):
        recipe = plan.stage_recipe(i)
        layers.update({b - 1: recipe.for_block(b) for b in range(*stage.blocks) if 1 <= b <= plan.model.config["num_layers"]})
    quantized = None
    if plan.quantized_weights:
        from ..quant.checkpoint import load_quantized

        quantized = load_quantized(plan.quantized_weights)
    return reference_model(path, ModelConfig.model_validate(plan.model.config), st.format, head,
                           plan.workload.context, plan.workload.kv_precision, layer_formats=layers, quantized=quantized)


@torch.inference_mode()
def greedy(model: StageModel, prompt: list[int], max_tokens: int, stop: set[int] = frozenset()) -> list[int]:
    """Greedy tokens from the reference, one sequence in slot 0."""
    model.free(0)
    logits = model.forward(torch.tensor(prompt), [Segment(0, 0, len(prompt))])
    out, pos = [], len(prompt)
    for _ in range(max_tokens):
        tok = int(logits[0].argmax())
        out.append(tok)
        if tok in stop:
            break
        logits = model.forward(torch.tensor([tok]), [Segment(0, pos, 1)])
        pos += 1
    model.free(0)
    return out
