"""Mixed precision: one format per layer, the least total KL divergence within a byte budget.

Per-layer sensitivities (KL against FP32 with only that layer quantized) are treated as
additive; the choice is a multiple-choice knapsack solved exactly as a MILP (HiGHS through
`scipy.optimize.milp`). The measured KL of the resulting mixed model is reported beside the
estimate, since the additivity is an approximation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import ChipfuseError


def assign(kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float) -> list[int]:
    """Index of the chosen format for each layer. kl, nbytes: [layers, formats]."""
    n, m = kl.shape
    c = kl.ravel()
    rows = np.zeros((n, n * m))
    for i in range(n):
        rows[i, i * m:(i + 1) * m] = 1
    cons = [LinearConstraint(rows, 1, 1), LinearConstraint(nbytes.ravel()[None, :], -np.inf, budget_bytes)]
    res = milp(c, constraints=cons, integrality=np.ones(n * m), bounds=Bounds(0, 1))
    if res.status != 0 or res.x is None:
        smallest = float(nbytes.min(axis=1).sum())
        raise ChipfuseError(f"no per-layer assignment fits {budget_bytes:,.0f} bytes of layer weights; the smallest "
                            f"candidates need {smallest:,.0f} (add a smaller format or raise --budget-bytes)")
    x = res.x.reshape(n, m)
    return [int(np.argmax(x[i])) for i in range(n)]


def by_recipe(per_format: dict[str, dict], recipe, num_layers: int) -> dict:
    """From tensors made per format ({format name: {tensor name: value}}), each layer's in the format
    the recipe gives that layer (layers whose format has none are left out)."""
    return {k: v for i in range(num_layers) for k, v in per_format.get(recipe.for_block(i + 1).name, {}).items()
            if k.startswith(f"layers.{i}.")}


def budget_for_rate(cfg, system, cands: list, target_tokens_per_s: float, context: int = 2048) -> tuple[float, str]:
    """Whole-model weight bytes that `system` can stream at `target_tokens_per_s` (batch-1 decode),
    and a sentence saying how it was found.

    The planner's prediction for the smallest and the largest candidate, each on every layer, gives
    two (bytes, seconds per token) points; decode time is linear in the bytes read (the roofline is
    memory-bound there), so the budget lies on the line through them, capped at the largest."""
    from ..compile.compiler import compile_plan
    from . import accuracy as acc
    from .formats import Recipe

    head = Recipe.of(cands[-1]).head
    pts = []
    for f in cands:
        r = Recipe(f, head)
        p = compile_plan(cfg, system, r, context=context, prompt_tokens=min(512, context))
        pts.append((float(acc.weight_bytes(cfg, r)), 1.0 / p.prediction.decode_tokens_per_s, f.name))
    (b0, t0, n0), (b1, t1, n1) = min(pts), max(pts)  # the smallest and the largest candidate
    rate = f"{system.name} decodes {1 / t0:.1f} tokens/s with every layer at {n0}, {1 / t1:.1f} at {n1}"
    target_s = 1.0 / target_tokens_per_s
    if t0 > target_s:
        raise ChipfuseError(f"{target_tokens_per_s:g} tokens/s is out of reach: {rate} (predicted); lower the "
                            "target, add a smaller candidate format or choose a faster system")
    if t1 <= target_s or t1 == t0:
        return b1, f"{rate}: every candidate meets {target_tokens_per_s:g} tokens/s, so the budget is {n1}'s size"
    budget = b0 + (target_s - t0) * (b1 - b0) / (t1 - t0)
    return budget, f"{rate} (predicted); {target_tokens_per_s:g} tokens/s allows {budget / 2**20:.1f} MiB of weights"


def search(cfg, weights: dict, scorer, cands: list, budget_bytes: float, step=lambda desc: None,
           replace: dict[str, dict] | None = None, select=None) -> dict:
    """Measure each layer's KL at each candidate format (one layer quantized at a time) with the
    `select` scorer (2 of its windows; pass one over other text than the evaluation's, so the choice
    does not see the text it is judged on), choose per-layer formats by `assign`, and measure the
    mixed model with `scorer`. `step(description)` marks progress.
    `replace` maps a format name to weights a calibration method already quantized in it (GPTQ);
    formats not in it are rounded to nearest."""
    from ..ir.graph import block_weight_bytes, tied_shared_bytes
    from ..ir.llm import build_llm_graph
    from . import accuracy as acc
    from .formats import Recipe

    g = build_llm_graph(cfg)
    base = Recipe.of(cands[-1])
    kl = np.zeros((cfg.num_layers, len(cands)))
    nbytes = np.zeros_like(kl)
    for j, f in enumerate(cands):
        r = Recipe(f, base.head)
        per_block = block_weight_bytes(g, r)
        for i in range(cfg.num_layers):
            q = acc.quantized_weights(weights, cfg, r, layers={i}, replace=(replace or {}).get(f.name))
            kl[i, j] = (select or scorer).score(q, windows_used=2)["kl"]
            nbytes[i, j] = per_block[i + 1]
            step(f"sensitivity: layer {i} at {f.name}")
    total = block_weight_bytes(g, base)
    fixed = float(total.sum() - total[1:-1].sum() - tied_shared_bytes(g, base, range(g.n_blocks)))
    choice = assign(kl, nbytes, budget_bytes - fixed)
    recipe = Recipe(base.default, base.head, tuple((i + 1, cands[c].name) for i, c in enumerate(choice)
                                                    if cands[c] != base.default))
    measured = scorer.score(acc.quantized_weights(weights, cfg, recipe,
                                                  replace=by_recipe(replace or {}, recipe, cfg.num_layers)))
    step("measured the mixed model")
    used = fixed + sum(nbytes[i, c] for i, c in enumerate(choice))
    per_layer = [cands[c].name for c in choice]
    estimate = float(sum(kl[i, c] for i, c in enumerate(choice)))
    return {"recipe": recipe, "per_layer": per_layer, "bytes": used, "budget": budget_bytes,
            "estimate_kl": estimate, "measured": measured,
            "json": {"per_layer": per_layer, "bytes": used, "budget_bytes": budget_bytes,
                     "estimated_kl_sum": estimate, **measured,
                     "sensitivity_kl": kl.tolist(), "candidates": [c.name for c in cands]}}
