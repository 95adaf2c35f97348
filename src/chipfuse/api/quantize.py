"""Accuracy per format, GPTQ codes, and mixed precision within a byte budget: the work behind `chipfuse quantize`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChipfuseError
from .core import check_rate
from .progress import Progress, status_of
from .results import FormatAccuracy, LayerSensitivity, MixedReport, QuantizeReport

DEFAULT_FORMATS = ("fp32", "bf16", "fp16", "fp8-e4m3", "int8", "int4-g128", "int4-g32")
DEFAULT_CANDIDATES = ("int8", "int4-g64", "int4-g128")
METHODS = ("rtn", "gptq")


@dataclass
class _Loaded:
    """A model ready to score: config, tokenizer, FP32 weights, evaluation windows and their scorer."""

    cfg: object
    tok: object
    weights: dict
    wins: list
    scorer: object
    window: int


def _formats(names) -> list:
    from ..errors import SpecError
    from ..quant.formats import RUNNABLE, get_format

    out = [get_format(n.strip()) for n in names if n.strip()]
    bad = [f.name for f in out if not f.runnable]
    if bad:
        raise SpecError(f"--formats {', '.join(bad)}: llama.cpp's GGUF types are for planning only; chipfuse "
                        f"quantizes to {', '.join(RUNNABLE)}")
    return out


def _load(model: str | Path | None, window: int, windows: int | None, prog: Progress, extra_steps: int,
          steps_per_layer) -> _Loaded:
    """Read the model and its FP32 reference; start the progress count (`steps_per_layer(cfg)` more steps follow)."""
    import torch

    from ..quant import accuracy as acc
    from ..runtime.device import resolve_model
    from ..runtime.tokenizer import load_tokenizer
    from ..runtime.weights import open_weights, wanted_names

    if not (isinstance(window, int) and 16 <= window <= 8192):
        raise ChipfuseError(f"--window {window!r}: give 16..8192 tokens per evaluation window")
    if windows is not None and not (isinstance(windows, int) and windows >= 1):
        raise ChipfuseError(f"--windows {windows!r}: give at least 1 evaluation window")
    torch.set_num_threads(os.cpu_count() or 1)
    path, cfg = resolve_model(None if model in (None, "smollm2") else model)
    tok = load_tokenizer(path)
    wins = acc.windows(tok, acc.shipped_text("evaluation"), window, limit=windows)
    if not wins:
        raise ChipfuseError(f"--window {window}: the shipped evaluation text is shorter than one window; use a smaller one")
    prog.start(2 + extra_steps + steps_per_layer(cfg), "loading FP32 weights")
    weights = open_weights(path, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
    prog.advance(1, "FP32 reference")
    scorer = acc.Scorer(cfg, weights, wins)
    prog.advance()
    return _Loaded(cfg, tok, weights, wins, scorer, window)


def _gptq_codes(m: _Loaded, fmts: list, prog: Progress) -> dict:
    """GPTQ codes per format (one calibration pass shared by all), advancing one step per layer."""
    from ..quant import accuracy as acc
    from ..quant.gptq import collect_hessians, gptq_weights

    if not fmts:
        return {}
    prog.describe("calibration activations (GPTQ)")
    hess = collect_hessians(m.cfg, m.weights, acc.windows(m.tok, acc.shipped_text("calibration"), m.window))
    prog.advance()
    codes = {}
    for f in fmts:
        prog.describe(f"GPTQ {f.name}")
        codes[f.name] = gptq_weights(m.cfg, m.weights, hess, f, progress=lambda: prog.advance())
    return codes


def _save_codes(path: Path, codes: dict, recipe, cfg) -> None:
    from ..quant.checkpoint import save_quantized
    from ..quant.mixed import by_recipe

    save_quantized(path, by_recipe(codes, recipe, cfg.num_layers), recipe,
                   {"layers": cfg.num_layers, "method": "gptq", "model": cfg.name})


def quantize_report(model: str | Path | None = "smollm2", formats=DEFAULT_FORMATS, *, method: str = "rtn",
                    window: int = 512, windows: int | None = None, sensitivity: str | None = None,
                    save: str | Path | None = None, progress: Progress | None = None) -> QuantizeReport:
    """Each format's cost in accuracy (perplexity, KL against FP32, top-1) and bytes; with method "gptq" the int4
    and int8 rows are also measured with GPTQ codes (and `save` writes the first such format's codes).
    `sensitivity` adds a per-layer KL table for that format (one layer quantized at a time)."""
    from ..io import check_writable
    from ..quant import accuracy as acc
    from ..quant.formats import Recipe, get_format
    from ..quant.gptq import dequantized, has_gptq

    _check_method(method, save)
    fmts = _formats(formats)
    if not fmts:
        raise ChipfuseError("--formats: give at least one format, e.g. int8,int4-g128")
    sens_fmt = get_format(sensitivity) if sensitivity else None
    gptq_fmts = [f for f in fmts if method == "gptq" and has_gptq(f)]
    if save:
        if not gptq_fmts:
            raise ChipfuseError("--save writes GPTQ codes, and none of the formats asked for is int4 or int8")
        check_writable(save)
    prog = status_of(progress)
    m = _load(model, window, windows, prog, len(fmts) + (1 if gptq_fmts else 0) + len(gptq_fmts),
              lambda cfg: len(gptq_fmts) * cfg.num_layers + (cfg.num_layers if sens_fmt else 0))
    codes = _gptq_codes(m, gptq_fmts, prog)
    rows: list[FormatAccuracy] = []
    for f in fmts:
        r = Recipe.of(f)
        prog.describe(f"{f.name} (rtn)")
        nbytes = acc.weight_bytes(m.cfg, r)
        bpw = 8 * nbytes / acc.n_params(m.cfg)
        rows.append(FormatAccuracy(f.name, r.name, "rtn", nbytes, bpw,
                                   **m.scorer.score(acc.quantized_weights(m.weights, m.cfg, r))))
        prog.advance()
        if f.name in codes:
            prog.describe(f"{f.name} (gptq)")
            deq = dequantized(codes[f.name], m.weights)
            rows.append(FormatAccuracy(f.name, r.name, "gptq", nbytes, bpw,
                                       **m.scorer.score(acc.quantized_weights(m.weights, m.cfg, r, replace=deq))))
            prog.advance()
    sens = []
    if sens_fmt:
        r = Recipe.of(sens_fmt)
        for i in range(m.cfg.num_layers):
            prog.describe(f"sensitivity: layer {i} at {sens_fmt.name}")
            sens.append(LayerSensitivity(i, **m.scorer.score(acc.quantized_weights(m.weights, m.cfg, r, layers={i}),
                                                             windows_used=2)))
            prog.advance()
    saved_recipe = None
    if save:
        saved_recipe = Recipe.of(gptq_fmts[0])
        _save_codes(Path(save), codes, saved_recipe, m.cfg)
    return QuantizeReport(m.cfg.name, len(m.wins), window, tuple(rows), tuple(sens),
                          sens_fmt.name if sens_fmt else None, Path(save) if save else None,
                          saved_recipe.name if saved_recipe else None)


def _check_method(method: str, save) -> None:
    if method not in METHODS:
        raise ChipfuseError(f"--method {method!r}: accepted {', '.join(METHODS)}")
    if save and method != "gptq":
        raise ChipfuseError("--save writes GPTQ codes: add --method gptq (and an int4 or int8 format, or --budget-bytes)")


def mixed_precision(model: str | Path | None = "smollm2", *, budget_bytes: float | None = None,
                    system: str | Path | None = None, target_tokens_per_s: float | None = None,
                    candidates=DEFAULT_CANDIDATES, method: str = "rtn", window: int = 512,
                    windows: int | None = None, save: str | Path | None = None,
                    progress: Progress | None = None) -> MixedReport:
    """One format per layer with the least total KL (per-layer sensitivities, an exact knapsack) within a byte
    budget: `budget_bytes`, or what `system` streams at `target_tokens_per_s` (batch-1 decode). With method
    "gptq" the candidates are GPTQ codes and `save` writes the mixed checkpoint for `run --quantized`."""
    from ..io import check_writable
    from ..quant import accuracy as acc
    from ..quant.gptq import dequantized, has_gptq
    from ..quant.mixed import budget_for_rate, search

    _check_method(method, save)
    if (system is None) != (target_tokens_per_s is None):
        raise ChipfuseError("--system and --target-tokens-per-s go together (or give --budget-bytes)")
    if (budget_bytes is None) == (system is None):
        raise ChipfuseError("give either --budget-bytes or --system with --target-tokens-per-s, not both")
    if budget_bytes is not None and not (math.isfinite(budget_bytes) and 0 < budget_bytes <= 1e15):
        raise ChipfuseError(f"--budget-bytes {budget_bytes:g}: give a positive number of bytes (at most 1e15)")
    if target_tokens_per_s is not None:
        check_rate(target_tokens_per_s)
    cands = _formats(candidates)
    if not cands:
        raise ChipfuseError("--candidates: give at least one format a layer may take")
    gptq_fmts = [f for f in cands if method == "gptq" and has_gptq(f)]
    if save:
        if not gptq_fmts:
            raise ChipfuseError("--save writes GPTQ codes, and none of the candidates is int4 or int8")
        check_writable(save)
    target_sys = how = None
    if system is not None:
        from ..hw.load import load_system

        target_sys = load_system(system)
    prog = status_of(progress)
    m = _load(model, window, windows, prog, (1 if gptq_fmts else 0) + 1,
              lambda cfg: (len(gptq_fmts) + len(cands)) * cfg.num_layers)
    if target_sys is not None:
        budget_bytes, how = budget_for_rate(m.cfg, target_sys, cands, target_tokens_per_s,
                                            min(2048, m.cfg.max_position))
    codes = _gptq_codes(m, gptq_fmts, prog)
    deq = {name: dequantized(c, m.weights) for name, c in codes.items()}
    select = acc.Scorer(m.cfg, m.weights, acc.windows(m.tok, acc.shipped_text("calibration"), window, limit=2))
    res = search(m.cfg, m.weights, m.scorer, cands, budget_bytes, lambda d: prog.advance(1, d), replace=deq,
                 select=select)
    if save:
        _save_codes(Path(save), codes, res["recipe"], m.cfg)
    predicted = None
    if target_sys is not None:
        from ..compile.compiler import compile_plan

        p = compile_plan(m.cfg, target_sys, res["recipe"], context=min(2048, m.cfg.max_position), prompt_tokens=512)
        predicted = p.prediction.decode_tokens_per_s
    j = res["json"]
    return MixedReport(m.cfg.name, method, res["recipe"], tuple(res["per_layer"]), res["bytes"], budget_bytes,
                       res["estimate_kl"], dict(res["measured"]), tuple(tuple(r) for r in j["sensitivity_kl"]),
                       tuple(j["candidates"]), how, target_sys.name if target_sys else None, target_tokens_per_s,
                       predicted, Path(save) if save else None)
