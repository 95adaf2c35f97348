"""The `chipfuse` command line: plan, presets, run, chat, probe, calibrate, quantize."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import __version__
from ..errors import ChipfuseError
from .ui import Steps, console, err_console, status

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="chipfuse: plan, predict and run LLMs split over AI-chiplet NPU dies.")


def _version(value: bool) -> None:
    if value:
        console.print(f"chipfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print chipfuse's version and exit")) -> None:
    """chipfuse: plan, predict and run LLMs split over AI-chiplet NPU dies."""


def _writable(*paths: Path | None) -> None:
    """Check output paths before long work starts, so a typo in a folder name loses nothing."""
    from ..io import check_writable

    for p in paths:
        if p is not None:
            check_writable(p)


def _note_alias(model: str) -> None:
    """Say when a catalogue alias stands for another entry (`llama3-8b` is `llama-3.1-8b`)."""
    from ..frontends import alias_of

    target = alias_of(model)
    if target:
        err_console.print(f"note: {model} is an alias of the catalogue entry {target}", markup=False, highlight=False)


def friendly(fn):
    """Print chipfuse errors as one clear message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ChipfuseError as err:
            _say_error(str(err))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _say_error("interrupted")
            raise typer.Exit(130) from None
        except OSError as err:  # disk full, permission denied, ...: name the file, never a traceback
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            _say_error(f"{where}{err.strerror or err}")
            raise typer.Exit(2) from None
        except Exception as err:  # a bug in chipfuse: one line, the traceback only when asked for
            if os.environ.get("CHIPFUSE_DEBUG"):
                raise
            _say_error(f"internal error ({type(err).__name__}: {err}); this is a bug in chipfuse. "
                       "Run again with CHIPFUSE_DEBUG=1 to see where, and please report it")
            raise typer.Exit(70) from None

    return wrapper


def _say_error(text: str) -> None:
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


def _gib(x: float) -> str:
    return f"{x / 1024**3:.2f}"


def full_route(plan) -> list[str]:
    """Every node a token passes, host to host, hops through the host or a switch included."""
    from ..hw.spec import HOST, System

    nodes: list[str] = []
    for st in plan.stages:
        path = st.route_in or [st.die]
        nodes += path if not nodes else path[1:]
    last = plan.stages[-1].die
    back = System.model_validate(plan.system).route_nodes(last, HOST, 4.0)
    return nodes + back[1:]


def print_plan(plan, title: str | None = None) -> None:
    """The plan as a table: one row per stage, with the predicted bottleneck in words (for the plan's system)."""
    from ..units import fmt_bytes, fmt_duration

    pred = plan.prediction
    target = plan.system["name"]
    t = Table(title=title or f"{plan.model.name} on {target} at {plan.precision}",
              caption=f"predicted for {target}; context {plan.workload.context} x batch {plan.workload.batch}, "
                      f"prompt {plan.workload.prompt_tokens} tokens, KV {plan.workload.kv_precision}")
    for col, just in (("stage", "right"), ("die", "left"), ("blocks", "left"), ("format", "left"),
                      ("weights GiB", "right"), ("KV GiB", "right"), ("used / has GiB", "right"),
                      ("decode ms", "right"), ("bound", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for st, sp in zip(plan.stages, pred.stages if pred else [None] * len(plan.stages)):
        parts = []
        if st.has_embedding:
            parts.append("embed")
        if st.layers:
            parts.append(f"L{st.layers[0]}-{st.layers[1]}")
        if st.has_lm_head:
            parts.append("head")
        t.add_row(str(st.index), st.die, " + ".join(parts), st.format, _gib(st.weight_bytes), _gib(st.kv_bytes),
                  f"{_gib(st.used_bytes)} / {_gib(st.memory_bytes)}",
                  f"{sp.decode_s * 1e3:.2f}" if sp else "-", sp.bound if sp else "-")
    console.print(t)
    if plan.block_formats:
        from collections import Counter

        counts = Counter(f for _, f in plan.block_formats)
        console.print("mixed precision: " + ", ".join(f"{n} layer(s) at {f}" for f, n in counts.most_common())
                      + f", the rest at {plan.precision}")
    route = full_route(plan)
    via = sorted({n for n in route[1:-1] if n not in {st.die for st in plan.stages}})
    console.print(f"route: {' -> '.join(route)}" + (f"  (passes through {', '.join(via)})" if via else ""))
    if pred:
        console.print(f"[bold]predicted on {target}:[/] fits   [bold]time to first token:[/] "
                      f"{fmt_duration(pred.ttft_s)} ({plan.workload.prompt_tokens}-token prompt)   "
                      f"[bold]decode:[/] {pred.decode_tokens_per_s:.1f} tokens/s"
                      + (f" ({pred.decode_tokens_per_s_per_request:.1f} per request)" if plan.workload.batch > 1 else "")
                      + f"   reads {fmt_bytes(pred.bytes_read_per_token)} per token")
        for sp in pred.stages:
            console.print(f"  - {sp.reason}", markup=False, highlight=False)
        for n in pred.notes:
            console.print(f"  [dim]{n}[/]")
    for w in plan.warnings:
        console.print("[yellow]warning:[/] ", end="")
        console.print(w, markup=False, highlight=False)


@app.command()
@friendly
def plan(
    model: str = typer.Option(..., "--model", "-m", help="catalogue name, config.json path or .gguf path"),
    system: str = typer.Option(..., "--system", "-s", help="preset name or system YAML path"),
    precision: Optional[str] = typer.Option(None, help="weight format: int4 (= int4-g32, the default), int4-g128-sym, "
                                                        "int8, fp8, fp16, bf16, fp32, ..."),
    context: int = typer.Option(4096, help="tokens per sequence (prompt + generated) the KV cache must hold"),
    batch: int = typer.Option(1, help="concurrent sequences (at least 1)"),
    prompt_tokens: int = typer.Option(512, help="prompt length in tokens for time to first token (1..context)"),
    kv_precision: str = typer.Option("fp16", help="KV-cache element format: fp32, fp16, bf16, fp8, int8"),
    dies: Optional[int] = typer.Option(None, help="use at most this many dies (1..the system's count)"),
    strict: bool = typer.Option(False, help="fail instead of falling back when a die lacks the precision"),
    target_tokens_per_s: Optional[float] = typer.Option(None, help="also say what bandwidth this decode rate needs"),
    recipe: Optional[Path] = typer.Option(None, help="per-layer formats from `chipfuse quantize --recipe-out`"),
    quantized: Optional[Path] = typer.Option(None, help="GPTQ codes from `chipfuse quantize --method gptq --save` "
                                                        "(the plan takes their recipe)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the plan and prediction here"),
):
    """Split a model over a system's dies and predict its speed."""
    from ..compile.compiler import compile_plan
    from ..frontends import load_model_config
    from ..hw.load import load_system
    from ..sim.perf import required_bandwidth_bytes_per_s

    _writable(json_path)
    _rate(target_tokens_per_s)
    sysm = load_system(system)
    _note_alias(model)
    cfg = load_model_config(model)
    from ..quant.formats import load_recipe

    p = compile_plan(cfg, sysm, load_recipe(recipe) if recipe else precision, context=context, batch=batch,
                     prompt_tokens=prompt_tokens,
                     kv_precision=kv_precision, max_dies=dies, strict=strict, model_source=str(model),
                     quantized_weights=str(quantized) if quantized else None)
    print_plan(p)
    if target_tokens_per_s is not None:
        need = required_bandwidth_bytes_per_s(p.prediction.bytes_read_per_token, target_tokens_per_s)
        console.print(f"{target_tokens_per_s:g} tokens/s reads {need / 1e9:.1f} GB/s at batch 1 "
                      f"({p.prediction.bytes_read_per_token / 1e9:.2f} GB per token x {target_tokens_per_s:g})")
    if json_path:
        p.save(json_path)
        console.print(f"plan written to {json_path}")


def _rate(tokens_per_s: float | None) -> None:
    if tokens_per_s is not None and not (math.isfinite(tokens_per_s) and 0 < tokens_per_s <= 1e6):
        raise ChipfuseError(f"--target-tokens-per-s {tokens_per_s:g}: give a rate above 0 and at most 1e6 tokens/s")


@app.command()
@friendly
def presets(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the preset systems and the catalogue models."""
    from ..frontends import catalogue, load_model_config
    from ..hw.load import load_system, preset_names
    from ..hw.spec import HOST

    systems = []
    for name in preset_names():
        s = load_system(name)
        links = sorted({lk.label() for lk in s.links})
        systems.append({
            "name": name, "description": s.description, "dies": len(s.dies),
            "die_types": sorted({d.type for d in s.dies}),
            "links": links,
            "die_memory_gib": [round(s.die_memory_bytes(d) / 1024**3, 2) for d in s.die_names],
            "die_bandwidth_gb_per_s": [round(s.die_bandwidth_bytes_per_s(d) / 1e9, 1) for d in s.die_names],
            "memory": sorted({"own" if s.die_type(d).memory.own else "shared" for d in s.die_names}),
            "host": s.host.name, "host_links": [lk.label() for lk in s.links if HOST in lk.between],
        })
    models = []
    for name, entry in sorted(catalogue().items()):
        c = load_model_config(name)
        models.append({"name": name, "display_name": entry.get("display_name", name), "layers": c.num_layers,
                       "hidden": c.hidden_size, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
                       "vocab": c.vocab_size, "tied": c.tied_embeddings, "source": entry.get("source", "")})
    if as_json:
        sys.stdout.write(json.dumps({"systems": systems, "models": models}, indent=2) + "\n")
        return
    t = Table(title="systems (use with --system)")
    for col in ("name", "dies", "links", "memory", "GiB per die", "GB/s per die"):
        t.add_column(col)
    for s in systems:
        t.add_row(s["name"], str(s["dies"]), ", ".join(s["links"]), "/".join(s["memory"]),
                  ", ".join(f"{x:g}" for x in s["die_memory_gib"]), ", ".join(f"{x:g}" for x in s["die_bandwidth_gb_per_s"]))
    console.print(t)
    t = Table(title="models (use with --model; or give a config.json or .gguf path)")
    for col in ("name", "layers", "hidden", "heads / kv", "vocab", "tied"):
        t.add_column(col)
    for m in models:
        t.add_row(m["name"], str(m["layers"]), str(m["hidden"]), f"{m['heads']} / {m['kv_heads']}", str(m["vocab"]),
                  "yes" if m["tied"] else "no")
    console.print(t)


@app.command()
@friendly
def calibrate(
    markdown: Optional[Path] = typer.Option(None, help="write the calibration table (Markdown) to this file"),
    apply: bool = typer.Option(False, help="write the fitted factors into the real-device presets"),
):
    """Fit the performance model's efficiency factors to published measurements; report the error."""
    from ..io import write_text_atomic
    from ..sim.calibrate import apply_to_presets, calibrate as run, load_measurements, markdown_report

    _writable(markdown)
    with status("fitting efficiency factors per device family..."):
        results, skipped = run()
    report = markdown_report(results, skipped, len(load_measurements()))
    console.print(report, markup=False, highlight=False)
    if apply:
        changed = apply_to_presets(results)
        console.print(f"updated presets: {', '.join(changed)}")
    if markdown:
        text = markdown.read_text() if markdown.exists() else ""
        start, end = "<!-- calibration:start -->", "<!-- calibration:end -->"
        block = f"{start}\n{report}\n{end}"
        if start in text and end in text:
            text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
        else:
            text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
        write_text_atomic(markdown, text)
        console.print(f"table written to {markdown}")


GRID_NOTE = ("Reference: the FP32 weights dequantized from the model file. SmolLM2's GGUF is Q4_1 (asymmetric INT4, "
             "groups of 32), so int4-g32 sits exactly on the file's own grid and shows almost no loss; compare "
             "methods at g64/g128 and symmetric INT4. The embedding and LM head are int8 whenever the layers are int4.")


@app.command()
@friendly
def quantize(
    model: str = typer.Option("smollm2", "--model", "-m", help="smollm2, a .gguf file or a HF folder"),
    formats: str = typer.Option("fp32,bf16,fp16,fp8-e4m3,int8,int4-g128,int4-g32", help="comma-separated formats"),
    method: str = typer.Option("rtn", help="rtn, or gptq (error compensation for int4 and int8; their rows also "
                                           "show RTN for contrast; with --budget-bytes, the layers' candidates)"),
    window: int = typer.Option(512, min=16, max=8192, help="tokens per evaluation window"),
    windows: Optional[int] = typer.Option(None, min=1, help="evaluate on at most this many windows (default: all "
                                                             "of the shipped evaluation text)"),
    quick: bool = typer.Option(False, "--quick", help="a fast look: 2 windows of 256 tokens (figures are noisier)"),
    sensitivity: Optional[str] = typer.Option(None, help="per-layer KL for this format (one layer quantized at a time)"),
    budget_bytes: Optional[float] = typer.Option(None, help="mixed precision: whole-model weight bytes to stay within"),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="mixed precision: with --target-tokens-per-s, "
                                                                      "the budget is what this system streams at that rate"),
    target_tokens_per_s: Optional[float] = typer.Option(None, help="mixed precision: batch-1 decode rate to meet on --system"),
    candidates: str = typer.Option("int8,int4-g64,int4-g128", help="mixed precision: formats a layer may take"),
    recipe_out: Optional[Path] = typer.Option(None, help="mixed precision: write the recipe here (for plan/run --recipe)"),
    save: Optional[Path] = typer.Option(None, help="with --method gptq: write the codes of the first int4/int8 format, "
                                                   "or of the mixed recipe, here (for plan/run --quantized)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the table (or the mixed recipe's figures) "
                                                                  "as JSON here"),
):
    """Measure each format's cost in accuracy (perplexity, KL vs FP32, top-1) and bytes.

    With --budget-bytes, choose one format per layer with the least KL that fits the budget."""
    import torch

    from ..quant import accuracy as acc
    from ..quant.formats import Recipe, get_format
    from ..quant.gptq import dequantized, has_gptq
    from ..runtime.device import resolve_model
    from ..runtime.tokenizer import load_tokenizer
    from ..runtime.weights import open_weights, wanted_names

    if method not in ("rtn", "gptq"):
        raise ChipfuseError(f"--method {method!r}: accepted rtn, gptq")
    if save and method != "gptq":
        raise ChipfuseError("--save writes GPTQ codes: add --method gptq (and an int4 or int8 format, or --budget-bytes)")
    if (system is None) != (target_tokens_per_s is None):
        raise ChipfuseError("--system and --target-tokens-per-s go together (or give --budget-bytes)")
    if system and budget_bytes:
        raise ChipfuseError("give either --budget-bytes or --system with --target-tokens-per-s, not both")
    if budget_bytes is not None and not (math.isfinite(budget_bytes) and 0 < budget_bytes <= 1e15):
        raise ChipfuseError(f"--budget-bytes {budget_bytes:g}: give a positive number of bytes (at most 1e15)")
    _rate(target_tokens_per_s)
    _writable(json_path, recipe_out, save)
    if quick:
        window, windows = 256, 2
    fmts = [get_format(f.strip()) for f in formats.split(",") if f.strip()]
    torch.set_num_threads(os.cpu_count() or 1)
    path, cfg = resolve_model(None if model == "smollm2" else model)
    tok = load_tokenizer(path)
    wins = acc.windows(tok, acc.shipped_text("evaluation"), window, limit=windows)
    if not wins:
        raise ChipfuseError(f"--window {window}: the shipped evaluation text is shorter than one window; use a smaller one")
    cands = [get_format(c.strip()) for c in candidates.split(",") if c.strip()] if (budget_bytes or system) else []
    target_sys = None
    if system:
        from ..hw.load import load_system
        from ..quant.mixed import budget_for_rate

        target_sys = load_system(system)
        budget_bytes, how = budget_for_rate(cfg, target_sys, cands, target_tokens_per_s, min(2048, cfg.max_position))
        console.print(how)
    if budget_bytes:
        fmts = []  # the mixed-precision search replaces the per-format table
    gptq_fmts = [f for f in (cands or fmts) if method == "gptq" and has_gptq(f)]
    if save and not gptq_fmts:
        raise ChipfuseError("--save writes GPTQ codes, and none of the formats asked for is int4 or int8")
    steps = 2 + len(fmts) + (1 if gptq_fmts else 0) + len(gptq_fmts) * (cfg.num_layers + (0 if cands else 1)) + \
        (cfg.num_layers if sensitivity else 0) + len(cands) * cfg.num_layers + (1 if budget_bytes else 0)
    rows, sens, codes = [], [], {}
    with Steps(steps, "loading FP32 weights") as prog:
        weights = open_weights(path, cfg).load(wanted_names(cfg, range(cfg.num_layers + 2)))
        prog.advance(1, "FP32 reference")
        scorer = acc.Scorer(cfg, weights, wins)
        prog.advance()
        if gptq_fmts:
            from ..quant.gptq import collect_hessians, gptq_weights

            prog.describe("calibration activations (GPTQ)")
            hess = collect_hessians(cfg, weights, acc.windows(tok, acc.shipped_text("calibration"), window))
            prog.advance()
            for f in gptq_fmts:
                prog.describe(f"GPTQ {f.name}")
                codes[f.name] = gptq_weights(cfg, weights, hess, f, progress=lambda: prog.advance())
        deq = {name: dequantized(c, weights) for name, c in codes.items()}
        for f in fmts:
            r = Recipe.of(f)
            prog.describe(f"{f.name} (rtn)")
            m = scorer.score(acc.quantized_weights(weights, cfg, r))
            rows.append(acc.FormatRow(f.name, r.name, "rtn", acc.weight_bytes(cfg, r),
                                      8 * acc.weight_bytes(cfg, r) / acc.n_params(cfg), **m))
            prog.advance()
            if f.name in codes:
                prog.describe(f"{f.name} (gptq)")
                m = scorer.score(acc.quantized_weights(weights, cfg, r, replace=deq[f.name]))
                rows.append(acc.FormatRow(f.name, r.name, "gptq", rows[-1].weight_bytes, rows[-1].bits_per_weight, **m))
                prog.advance()
        if sensitivity:
            r = Recipe.of(get_format(sensitivity))
            for i in range(cfg.num_layers):
                prog.describe(f"sensitivity: layer {i} at {sensitivity}")
                m = scorer.score(acc.quantized_weights(weights, cfg, r, layers={i}), windows_used=2)
                sens.append({"layer": i, **m})
                prog.advance()
        mixed = None
        if budget_bytes:
            from ..quant.mixed import search

            def step(desc: str) -> None:
                prog.advance(1, desc)

            select = acc.Scorer(cfg, weights, acc.windows(tok, acc.shipped_text("calibration"), window, limit=2))
            mixed = search(cfg, weights, scorer, cands, budget_bytes, step, replace=deq, select=select)
    saved = None
    if save:
        from ..quant.checkpoint import save_quantized
        from ..quant.mixed import by_recipe

        saved = mixed["recipe"] if mixed else Recipe.of(gptq_fmts[0])
        save_quantized(save, by_recipe(codes, saved, cfg.num_layers), saved,
                       {"layers": cfg.num_layers, "method": "gptq", "model": cfg.name})
    if saved:
        console.print(f"GPTQ codes for {saved.name} written to {save}: run them with "
                      f"`chipfuse run --quantized {save}`")
    if mixed:
        _print_mixed(mixed, cfg, recipe_out)
        if method == "gptq" and recipe_out and not save:
            console.print("note: the accuracy above is with GPTQ codes; `--recipe` alone rounds to nearest. "
                          "Add --save FILE and run with `--quantized FILE` to deploy what was measured.")
        if target_sys:
            from ..compile.compiler import compile_plan

            p = compile_plan(cfg, target_sys, mixed["recipe"], context=min(2048, cfg.max_position), prompt_tokens=512)
            console.print(f"predicted on {target_sys.name} with this recipe: "
                          f"{p.prediction.decode_tokens_per_s:.1f} tokens/s (target {target_tokens_per_s:g})")
        if json_path:
            acc.save_json(json_path, {"model": cfg.name, "note": GRID_NOTE, "mixed": mixed["json"]})
        return
    t = Table(title=f"accuracy of {cfg.name} per format ({len(wins)} windows x {window} tokens of evaluation text)",
              caption=GRID_NOTE)
    for col in ("format", "recipe", "method", "weight MiB", "bits/weight", "perplexity", "KL vs FP32", "top-1"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r.format, r.recipe, r.method, f"{r.weight_bytes / 2**20:.1f}", f"{r.bits_per_weight:.2f}",
                  f"{r.perplexity:.3f}", f"{r.kl:.5f}", f"{100 * r.top1:.1f}%")
    console.print(t)
    for f in (f for f in gptq_fmts if f in fmts):
        a = next(r for r in rows if r.format == f.name and r.method == "rtn")
        b = next(r for r in rows if r.format == f.name and r.method == "gptq")
        console.print(f"{f.name}: GPTQ lowers KL by {100 * (1 - b.kl / a.kl):.0f}% against round-to-nearest")
    if sens:
        st = Table(title=f"per-layer sensitivity at {sensitivity} (only that layer quantized; 2 windows)")
        for col in ("layer", "KL vs FP32", "perplexity"):
            st.add_column(col, justify="right")
        for e in sorted(sens, key=lambda e: -e["kl"]):
            st.add_row(str(e["layer"]), f"{e['kl']:.5f}", f"{e['perplexity']:.3f}")
        console.print(st)
    if json_path:
        acc.save_json(json_path, {"model": cfg.name, "note": GRID_NOTE, "windows": len(wins), "window_tokens": window,
                                  "rows": acc.to_dict(rows), "sensitivity": sens})
        console.print(f"written to {json_path}")


def _print_mixed(m: dict, cfg, recipe_out: Path | None) -> None:
    from collections import Counter

    from ..quant.formats import save_recipe

    counts = Counter(m["per_layer"])
    console.print(f"mixed precision for {cfg.name}: {m['bytes'] / 2**20:.1f} MiB of {m['budget'] / 2**20:.1f} MiB budget; "
                  + ", ".join(f"{n} layers at {f}" for f, n in counts.most_common()))
    console.print("per layer: " + " ".join(f"{i}:{f}" for i, f in enumerate(m["per_layer"])))
    mm = m["measured"]
    console.print(f"measured: perplexity {mm['perplexity']:.3f}, KL {mm['kl']:.5f}, top-1 {100 * mm['top1']:.1f}% "
                  f"(sum of per-layer KL estimates {m['estimate_kl']:.5f})")
    if recipe_out:
        save_recipe(m["recipe"], recipe_out)
        console.print(f"recipe written to {recipe_out}: use it with `chipfuse plan --recipe` or `chipfuse run --recipe`")


SAMPLE_QUESTION = "What is the capital of France?"


def _this_host(probe_file: Path | None):
    """This machine as a system of emulated dies: a `chipfuse probe` file if given (read and checked now,
    before any work), else None (measured after the run)."""
    if probe_file is None:
        return None
    from ..hw.load import load_system

    return load_system(probe_file)


def _predict_on_this_host(plan, prompt_tokens: int, host):
    """The performance model's figures for this run's plan on this machine (its dies mapped, in stage order,
    onto the plan's die names, whatever they are called)."""
    from ..hw.load import parse_system
    from ..runtime.probe import probe
    from ..sim.predict import predict

    dies = [st.die for st in plan.stages]
    if host is None:
        with status("measuring this host for the prediction (chipfuse probe)..."):
            host, _ = probe(dies)
    rename = dict(zip(host.die_names, dies))
    if any(k != v for k, v in rename.items()):
        host = parse_system(_renamed(host.model_dump(mode="json"), rename), "this host (probe, dies renamed)")
    wl = plan.workload.model_copy(update={"batch": 1, "prompt_tokens": max(1, prompt_tokens)})
    return predict(plan.model_copy(update={"workload": wl, "system": host.model_dump(mode="json")}), system=host)


def _renamed(data: dict, rename: dict[str, str]) -> dict:
    """A system mapping with its dies renamed (in the die list, the links and the packages)."""
    r = lambda n: rename.get(n, n)  # noqa: E731
    return {**data, "dies": [{**d, "name": r(d["name"])} for d in data["dies"]],
            "links": [{**lk, "between": [r(n) for n in lk["between"]]} for lk in data["links"]],
            "packages": [{**p, "dies": [r(n) for n in p["dies"]]} for p in data.get("packages", [])]}


@app.command()
@friendly
def run(
    system: str = typer.Option("talk-4die-d2d", "--system", "-s", help="preset name or system YAML path"),
    model: str = typer.Option("smollm2", "--model", "-m", help="smollm2 (embedded default), a .gguf file or a HF folder"),
    prompt: str = typer.Option(SAMPLE_QUESTION, help="the user message (sent through the chat template)"),
    max_tokens: int = typer.Option(64, min=1, help="tokens to generate at most"),
    precision: Optional[str] = typer.Option(None, help="weight format of the layers (default int4)"),
    context: int = typer.Option(2048, help="tokens per sequence the KV cache holds (prompt + generated)"),
    temperature: float = typer.Option(0.0, min=0.0, max=100.0, help="sampling temperature; 0 = greedy"),
    top_k: int = typer.Option(0, min=0, help="sample among the k most likely tokens only; 0 = no limit"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="sample within this probability mass (nucleus); 1 = no limit"),
    seed: Optional[int] = typer.Option(None, help="random seed for sampling (same seed, same answer)"),
    raw: bool = typer.Option(False, help="send the prompt as plain text, without the chat template"),
    probe_file: Optional[Path] = typer.Option(None, "--probe", help="system file from `chipfuse probe` (else measured now)"),
    recipe: Optional[Path] = typer.Option(None, help="per-layer formats from `chipfuse quantize --recipe-out`"),
    quantized: Optional[Path] = typer.Option(None, help="GPTQ codes from `chipfuse quantize --method gptq --save` "
                                                        "(the plan takes their recipe)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write plan, text and measured/predicted speed here"),
):
    """Run a real model split over emulated dies: plan, stream the answer, measured beside predicted speed."""
    import signal

    from ..hw.load import load_system
    from ..runtime.device import Device

    from ..quant.formats import load_recipe

    _writable(json_path)
    if max_tokens >= context:
        raise ChipfuseError(f"--max-tokens {max_tokens} leaves no room for the prompt in --context {context}")
    sysm = load_system(system)
    host = _this_host(probe_file)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with status("compiling the plan and starting the dies...") as st:
        dev = Device(sysm, model, load_recipe(recipe) if recipe else precision, context=context, max_batch=1,
                     quantized=quantized, on_status=lambda m: st.update(m))
    if host is not None and len(host.dies) != len(dev.plan.stages):
        dev.close()
        raise ChipfuseError(f"{probe_file} describes {len(host.dies)} emulated die(s), the plan uses "
                            f"{len(dev.plan.stages)}; re-run `chipfuse probe --dies {len(dev.plan.stages)} "
                            f"--out {probe_file}`")
    with dev:
        target = dev.plan.system["name"]
        print_plan(dev.plan, title=f"{dev.plan.model.name} on {target} ({len(dev.plan.stages)} dies): the plan, "
                                   f"predicted for {target}")
        mem = Table(title="memory held by each die (measured in its worker)")
        for col in ("die", "resident weights", "plan", "die DRAM", "load s"):
            mem.add_column(col, justify="right")
        for r in dev.memory_report():
            mem.add_row(r["die"], f"{r['resident_weight_bytes'] / 2**20:.1f} MiB", f"{r['plan_weight_bytes'] / 2**20:.1f} MiB",
                        f"{r['die_memory_bytes'] / 2**30:.1f} GiB", f"{r['load_s']:.1f}")
        console.print(mem)
        console.print(f"[bold]user:[/] {prompt}\n[bold]assistant:[/] ", end="")
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        gen = dev.submit(prompt, max_tokens, **kw) if raw else dev.chat([{"role": "user", "content": prompt}], max_tokens, **kw)
        for piece in gen:
            console.print(piece, end="", markup=False, highlight=False)
        console.print()
        prompt_tokens = len(gen.req.prompt)
    pred = _predict_on_this_host(dev.plan, prompt_tokens, host)
    t = Table(title=f"speed on THIS machine ({len(dev.plan.stages)} emulated dies): measured vs the performance "
                    "model for this host (same plan)")
    for col in ("", "measured here", "predicted here", "measured / predicted"):
        t.add_column(col, justify="right", overflow="fold")
    rows = [("time to first token (s)", gen.ttft_s, pred.ttft_s), ("decode tokens/s", gen.decode_tokens_per_s, pred.decode_tokens_per_s)]
    for name, m, p in rows:
        t.add_row(name, f"{m:.3f}" if m else "-", f"{p:.3f}", f"{m / p:.2f}" if m else "-")
    console.print(t)
    console.print(f"[dim]{len(gen.tokens)} tokens generated ({gen.finish_reason}), prompt {prompt_tokens} tokens[/]")
    if json_path:
        out = {"plan": dev.plan.model_dump(mode="json", by_alias=True), "prompt": prompt, "text": gen.text,
               "tokens": gen.tokens, "finish_reason": gen.finish_reason,
               "measured": {"ttft_s": gen.ttft_s, "decode_tokens_per_s": gen.decode_tokens_per_s},
               "predicted": {"ttft_s": pred.ttft_s, "decode_tokens_per_s": pred.decode_tokens_per_s},
               "memory": dev.memory_report()}
        from ..io import write_text_atomic

        write_text_atomic(json_path, json.dumps(out, indent=2) + "\n")
        console.print(f"written to {json_path}")


@app.command()
@friendly
def chat(
    system: str = typer.Option("talk-4die-d2d", "--system", "-s", help="preset name or system YAML path"),
    model: str = typer.Option("smollm2", "--model", "-m", help="smollm2 (embedded default), a .gguf file or a HF folder"),
    precision: str = typer.Option("int4", help="weight format of the layers"),
    max_tokens: int = typer.Option(256, min=1, help="tokens to generate at most per answer"),
    temperature: float = typer.Option(0.0, min=0.0, max=100.0, help="sampling temperature; 0 = greedy"),
):
    """Talk to the model interactively (empty line or Ctrl-D to leave)."""
    from ..runtime.device import Device

    with status("starting the dies..."):
        dev = Device(system, model, precision, max_batch=1)
    with dev:
        console.print(f"[dim]{dev.plan.model.name} on {len(dev.plan.stages)} dies of {dev.plan.system['name']}; "
                      f"empty line to quit[/]")
        history: list[dict] = []
        while True:
            try:
                line = console.input("[bold]you:[/] ")
            except (EOFError, KeyboardInterrupt):
                break
            if not line.strip():
                break
            history.append({"role": "user", "content": line})
            console.print("[bold]model:[/] ", end="")
            gen = dev.chat(history, max_tokens, temperature=temperature)
            for piece in gen:
                console.print(piece, end="", markup=False, highlight=False)
            console.print(f"  [dim]({gen.decode_tokens_per_s or 0:.1f} tokens/s)[/]")
            history.append({"role": "assistant", "content": gen.text})


@app.command()
def worker(
    rank: int = typer.Option(..., help="this die's rank (1..N; the host is 0)"),
    world: int = typer.Option(..., help="N + 1"),
    master: str = typer.Option(..., help="HOST:PORT of the host's rendezvous"),
    timeout: float = typer.Option(600.0, help="seconds to wait for peers"),
):
    """Serve one emulated die for a host elsewhere (multi-host runs)."""
    from ..runtime.worker import main as worker_main

    worker_main(["--rank", str(rank), "--world", str(world), "--master", master, "--timeout", str(timeout)])


@app.command()
@friendly
def probe(
    dies: int = typer.Option(4, min=1, max=64, help="number of emulated dies to describe (1-64)"),
    out: Path = typer.Option(Path("this-host.yaml"), help="system file to write"),
):
    """Measure this machine (bandwidth, kernels, hops) and write it as a system of emulated dies."""
    from ..runtime.probe import probe as run_probe, save_system

    _writable(out)
    with status("probing") as st:
        system, fig = run_probe([f"die{i}" for i in range(dies)], on_status=lambda m: st.update(f"measuring {m}"))
    save_system(system, out)
    console.print(f"streaming {fig['bandwidth_gb_per_s']:.1f} GB/s, int4 kernel {fig['int4_kernel_gb_per_s']:.1f} GB/s; "
                  f"TOPS {fig['tops']}; per-layer cost {fig['layer_overhead_s'] * 1e6:.0f} us; "
                  f"hop {fig['hop_latency_s'] * 1e6:.0f} us, {fig['hop_gb_per_s']:.2f} GB/s")
    console.print(f"written to {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
