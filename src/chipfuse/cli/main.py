"""The `chipfuse` command line: a thin shell over `chipfuse.api` (parse options, call, render)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .. import __version__, api
from ..api.core import SAMPLE_QUESTION
from ..errors import ChipfuseError
from . import render
from .ui import Steps, console, err_console, status

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="chipfuse: plan, predict and run LLMs split over AI-chiplet NPU dies.")

SYSTEM_HELP = "preset name, system YAML path, or a five-line device file (docs/hardware.md)"
RUN_MODEL_HELP = "smollm2 (embedded default), a .gguf file or a HF folder"
RECIPE_HELP = "per-layer formats from `chipfuse quantize --recipe-out`"
TRACE_PLOT_HELP = "write a PNG of the decode step here: a row per die, link and all-reduce, spans coloured by kind"
QUANTIZED_HELP = "GPTQ codes from `chipfuse quantize --method gptq --save` (the plan takes their recipe)"


def _version(value: bool) -> None:
    if value:
        console.print(f"chipfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print chipfuse's version and exit")) -> None:
    """chipfuse: plan, predict and run LLMs split over AI-chiplet NPU dies."""


def _say_error(text: str) -> None:
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


def friendly(fn):
    """Print chipfuse errors as one clear message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
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


def _writable(*paths: Path | None) -> None:
    """Check output paths before long work starts, so a typo in a folder name loses nothing."""
    from ..io import check_writable

    for p in paths:
        if p is not None:
            check_writable(p)


def _write_json(path: Path, payload: dict) -> None:
    from ..io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    render.say(f"written to {path}")


def _note_alias(model: str) -> None:
    """Say when a catalogue alias stands for another entry (`llama3-8b` is `llama-3.1-8b`)."""
    target = api.alias_of(model)
    if target:
        err_console.print(f"note: {model} is an alias of the catalogue entry {target}", markup=False, highlight=False)


@app.command()
@friendly
def plan(
    model: str = typer.Option(..., "--model", "-m", help="catalogue name, config.json path or .gguf path"),
    system: str = typer.Option(..., "--system", "-s", help=SYSTEM_HELP),
    precision: Optional[str] = typer.Option(None, help="weight format: int4 (= int4-g32, the default), int4-g128-sym, "
                                                        "int8, fp8, fp16, bf16, fp32, ...; or a llama.cpp type or mix "
                                                        "to plan with its real bytes (q4_k_m, q5_k_m, q8_0, ...)"),
    context: int = typer.Option(4096, help="tokens per sequence (prompt + generated) the KV cache must hold"),
    batch: int = typer.Option(1, help="concurrent sequences (at least 1)"),
    prompt_tokens: int = typer.Option(512, help="prompt length in tokens for time to first token (1..context)"),
    output_tokens: Optional[int] = typer.Option(None, help="tokens generated per request: predict decode at the mean "
                                                          "position, prompt + output/2 (default: at the full context)"),
    kv_precision: str = typer.Option("fp16", help="KV-cache element format: fp32, fp16 or bf16"),
    dies: Optional[int] = typer.Option(None, help="use at most this many dies (1..the system's count)"),
    strict: bool = typer.Option(False, help="fail instead of falling back when a die lacks the precision"),
    target_tokens_per_s: Optional[float] = typer.Option(None, help="also say what bandwidth this decode rate needs"),
    recipe: Optional[Path] = typer.Option(None, help=RECIPE_HELP),
    quantized: Optional[Path] = typer.Option(None, help=QUANTIZED_HELP),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the plan and prediction here"),
    split: str = typer.Option("auto", help="auto (the fastest of the others), pipeline (layer ranges), tensor "
                                           "(every layer sharded over the dies) or hybrid (tensor groups in a pipeline)"),
    objective: str = typer.Option("throughput", help="what auto maximises: throughput (tokens/s over the batch) "
                                                     "or latency (tokens/s of one request); today's model ranks "
                                                     "splits alike by both (each sequence gains a token a step)"),
    trace: Optional[Path] = typer.Option(None, help="write the prefill and one decode step as a Chrome/Perfetto "
                                                    "trace (JSON) here, and show the step as text bars per die"),
    trace_plot: Optional[Path] = typer.Option(None, help=TRACE_PLOT_HELP),
    roofline_plot: Optional[Path] = typer.Option(None, help="write a PNG of each die's roofline with the plan's ops "
                                                            "on it (decode and prefill; up to 4 stages)"),
):
    """Split a model over a system's dies and predict its speed."""
    _writable(json_path, trace, trace_plot, roofline_plot)
    _note_alias(model)
    p = api.plan(model, system, precision, context=context, batch=batch, prompt_tokens=prompt_tokens,
                 output_tokens=output_tokens,
                 kv_precision=kv_precision, dies=dies, strict=strict, recipe=recipe, quantized=quantized,
                 split=split, objective=objective)
    need = api.required_bandwidth_bytes_per_s(p, target_tokens_per_s) if target_tokens_per_s is not None else None
    render.plan(p)
    if need is not None:
        render.say(f"{target_tokens_per_s:g} tokens/s reads {need / 1e9:.1f} GB/s at batch 1 "
                   f"({p.prediction.bytes_read_per_token / 1e9:.2f} GB per token x {target_tokens_per_s:g})")
    if trace or trace_plot:
        tr = api.trace(p, trace)
        render.gantt(tr)
        if trace_plot:
            render.say(f"picture of the decode step written to {api.plot_trace(tr, trace_plot)}")
    if roofline_plot:
        render.say(f"rooflines written to {api.plot_roofline(p, roofline_plot)}")
    if json_path:
        p.save(json_path)
        render.say(f"plan written to {json_path}")


@app.command()
@friendly
def explore(
    space: Path = typer.Option(..., "--space", help="design-space YAML: SoCs, die types, die counts, links, "
                                                    "memories, packaging, precisions (docs/explore.md)"),
    models: Optional[str] = typer.Option(None, "--models", "-m", help="models to plan for, comma-separated: "
                                                                       "catalogue names or config.json paths"),
    target: Optional[str] = typer.Option(None, help='what a design must reach, e.g. "decode>=10,power<=10" '
                                                    "(metrics: decode, ttft, power, peak, energy, cost)"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for points.csv, pareto.csv, the plots (PNG and "
                                                           "SVG) and the front's designs as system files"),
    workers: Optional[int] = typer.Option(None, help="processes on this machine (default: every core)"),
    ray: Optional[str] = typer.Option(None, help='fan the sweep out over a Ray cluster at this address ("local" '
                                                 "starts one here); needs the ray extra"),
    accuracy: Optional[Path] = typer.Option(None, help="a `chipfuse quantize --json` report: its KL per format "
                                                       "becomes a fourth objective for the model it measured"),
    compare: Optional[str] = typer.Option(None, help="show the fastest configuration meeting the target per value of "
                                                     "these options (soc, die_type, dies, link, memory, substrate, "
                                                     "precision, split, model; comma-separated)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the summary as JSON here"),
):
    """Which system should we build? Sweep a design space, keep what meets the target, show the Pareto fronts."""
    _writable(json_path)
    if workers is not None and not 1 <= workers <= 256:
        raise ChipfuseError(f"--workers {workers}: give 1 to 256 processes")
    names = [m.strip() for m in models.split(",") if m.strip()] if models else []
    with Steps() as prog:
        try:
            res = api.explore(space, names, target=target, out_dir=out, workers=workers, ray=ray, accuracy=accuracy,
                              progress=prog, compare=compare)
        except api.TargetError as err:
            res = err.result
            render.explore(res)
            if json_path:
                _write_json(json_path, res.to_json())
            raise
    render.explore(res)
    if json_path:
        _write_json(json_path, res.to_json())


@app.command()
@friendly
def place(
    workload: Path = typer.Option(..., "--workload", "-w", help="workload YAML: models and their demands "
                                                               "(docs/placement.md; examples/hospital.yaml)"),
    system: str = typer.Option(..., "--system", "-s", help=SYSTEM_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="write the placement (for `chipfuse run --workload`)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the whole report as JSON here"),
    plot: Optional[Path] = typer.Option(None, help="write a PNG of each die's time by model here"),
    time_limit: float = typer.Option(10.0, help="seconds the exact search may take before it reports its best "
                                                "and the bound"),
):
    """Place several models over the dies for the best throughput: which model where, replicas, splits."""
    _writable(out, json_path, plot)
    with err_console.status("weighing every way to run each model on each die (and what would help, if short)"):
        res = api.place(workload, system, time_limit_s=time_limit)
    render.placement(res)
    if out:
        res.placement.save(out)
        render.say(f"placement written to {out}")
    if json_path:
        _write_json(json_path, res.to_json())
    if plot:
        render.say(f"picture written to {api.plot_placement(res, plot)}")
    if not res.met:
        _say_error(res.shortfall)
        raise typer.Exit(3)


@app.command()
@friendly
def cost(
    system: str = typer.Option(..., "--system", "-s", help=SYSTEM_HELP),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the lines as JSON here"),
):
    """What a system costs to build (bill of materials, each line's source) and to develop (the talk's paths)."""
    _writable(json_path)
    bom, paths = api.cost(system)
    render.cost(bom, paths)
    if json_path:
        _write_json(json_path, {"system": bom.system, "bom_usd": bom.bom_usd,
                                "lines": [{"item": x.item, "usd": x.usd, "source": x.source} for x in bom.lines],
                                "development": [{"what": d.what, "usd": list(d.usd), "months": d.months,
                                                 "source": d.source} for d in paths]})


@app.command()
@friendly
def scale(
    model: str = typer.Option(..., "--model", "-m", help="catalogue name, config.json path or .gguf path"),
    system: str = typer.Option(..., "--system", "-s", help=SYSTEM_HELP),
    precision: Optional[str] = typer.Option(None, help="weight format (default int4)"),
    context: int = typer.Option(4096, help="tokens per sequence the KV cache must hold"),
    batch: int = typer.Option(1, help="concurrent sequences (at least 1)"),
    prompt_tokens: int = typer.Option(512, help="prompt length in tokens for time to first token"),
    kv_precision: str = typer.Option("fp16", help="KV-cache element format: fp32, fp16 or bf16"),
    objective: str = typer.Option("throughput", help="what each mode's plan maximises: throughput or latency"),
    modes: str = typer.Option("pipeline,tensor,hybrid", help="split modes to compare, comma-separated"),
    dies: Optional[int] = typer.Option(None, help="go up to this many dies (default: all of the system's)"),
    plot: Optional[Path] = typer.Option(None, help="write a PNG of tokens/s against dies here"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the table as JSON here"),
):
    """Will another die help? Predicted speed on 1..N dies for each split mode, with efficiency and bottleneck."""
    _writable(plot, json_path)
    _note_alias(model)
    with Steps() as prog:
        rep = api.scaling(model, system, precision, context=context, batch=batch, prompt_tokens=prompt_tokens,
                          kv_precision=kv_precision, objective=objective, modes=modes, dies=dies, progress=prog)
    render.scaling(rep)
    if plot:
        render.say(f"plot written to {api.plot_scaling(rep, plot)}")
    if json_path:
        _write_json(json_path, rep.to_json())


@app.command()
@friendly
def presets(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the preset systems and the catalogue models."""
    found = api.presets()
    if as_json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2) + "\n")
    else:
        render.presets(found.systems, found.models)


@app.command()
@friendly
def calibrate(
    markdown: Optional[Path] = typer.Option(None, help="write the calibration table (Markdown) to this file"),
    apply: bool = typer.Option(False, help="write the fitted factors into the real-device presets"),
):
    """Fit the performance model's efficiency factors to published measurements; report the error."""
    from ..io import replace_marked_block

    _writable(markdown)
    with status("fitting efficiency factors per device family..."):
        rep = api.calibrate(apply=apply)
    render.say(rep.markdown)
    if rep.updated_presets:
        render.say(f"updated presets: {', '.join(rep.updated_presets)}")
    if markdown:
        replace_marked_block(markdown, "calibration", rep.markdown)
        render.say(f"table written to {markdown}")


@app.command()
@friendly
def quantize(
    model: str = typer.Option("smollm2", "--model", "-m", help="smollm2, a .gguf file or a HF folder"),
    formats: str = typer.Option(",".join(api.quantize.DEFAULT_FORMATS), help="comma-separated formats"),
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
    candidates: str = typer.Option(",".join(api.quantize.DEFAULT_CANDIDATES), help="mixed precision: formats a layer may take"),
    recipe_out: Optional[Path] = typer.Option(None, help="mixed precision: write the recipe here (for plan/run --recipe)"),
    save: Optional[Path] = typer.Option(None, help="with --method gptq: write the codes of the first int4/int8 format, "
                                                   "or of the mixed recipe, here (for plan/run --quantized)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the table (or the mixed recipe's figures) "
                                                                  "as JSON here"),
):
    """Measure each format's cost in accuracy (perplexity, KL vs FP32, top-1) and bytes.

    With --budget-bytes (or --system and --target-tokens-per-s), choose one format per layer with the least KL
    that fits the budget."""
    _writable(json_path, recipe_out, save)
    window, windows = (256, 2) if quick else (window, windows)
    common = dict(method=method, window=window, windows=windows, save=save)
    with Steps() as prog:
        if budget_bytes is not None or system is not None or target_tokens_per_s is not None:
            rep = api.mixed_precision(model, budget_bytes=budget_bytes, system=system, progress=prog,
                                      target_tokens_per_s=target_tokens_per_s, candidates=candidates.split(","), **common)
        else:
            rep = api.quantize_report(model, formats.split(","), sensitivity=sensitivity, progress=prog, **common)
    if isinstance(rep, api.MixedReport):
        _mixed_outputs(rep, recipe_out)
    else:
        render.accuracy(rep)
    if json_path:
        _write_json(json_path, rep.to_json())


def _mixed_outputs(rep, recipe_out: Path | None) -> None:
    from ..quant.formats import save_recipe

    render.mixed(rep)
    if recipe_out:
        save_recipe(rep.recipe, recipe_out)
        render.say(f"recipe written to {recipe_out}: use it with `chipfuse plan --recipe` or `chipfuse run --recipe`")
        if rep.method == "gptq" and not rep.saved:
            render.say("note: the accuracy above is with GPTQ codes; `--recipe` alone rounds to nearest. "
                       "Add --save FILE and run with `--quantized FILE` to deploy what was measured.")


@app.command()
@friendly
def run(
    system: str = typer.Option(api.core.DEFAULT_SYSTEM, "--system", "-s", help=SYSTEM_HELP),
    model: str = typer.Option("smollm2", "--model", "-m", help=RUN_MODEL_HELP),
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
    recipe: Optional[Path] = typer.Option(None, help=RECIPE_HELP),
    quantized: Optional[Path] = typer.Option(None, help=QUANTIZED_HELP),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write plan, text and measured/predicted speed here"),
    split: str = typer.Option("pipeline", help="pipeline, tensor, hybrid or auto: how the dies share the model"),
    trace: Optional[Path] = typer.Option(None, help="record the run and write its prefill, median decode step and "
                                                    "whole run as a Chrome/Perfetto trace (JSON) here, with the tracks "
                                                    "of `chipfuse plan --trace`; show the step as text bars per die"),
    trace_plot: Optional[Path] = typer.Option(None, help=TRACE_PLOT_HELP + " (needs --trace)"),
    workload: Optional[Path] = typer.Option(None, "--workload", "-w", help="run several models placed over the dies "
                                            "(a workload YAML, placed on --system) and measure each one's rate"),
    placement: Optional[Path] = typer.Option(None, help="with --workload: a placement from `chipfuse place --out` "
                                                        "instead of placing now"),
    seconds: float = typer.Option(20.0, help="with --workload: how long the streams are offered"),
    load: float = typer.Option(1.0, help="with --workload: offer this multiple of each model's predicted rate"),
    threads: int = typer.Option(1, min=1, help="with --workload: threads each die's kernels use"),
    adapter: Optional[Path] = typer.Option(None, help="a LoRA folder (`chipfuse finetune --out`, or peft's) to serve "
                                                      "unmerged on the dies"),
):
    """Run a real model split over emulated dies: plan, stream the answer, measured beside predicted speed.
    With --workload: the placement of several models, each stream's measured rate beside the predicted."""
    import signal

    if workload is not None or placement is not None:
        _writable(json_path)
        with status("placing the models and starting the dies...") as st, Steps() as prog:
            res = api.run_workload(workload, system if workload is not None else None, placement=placement,
                                   seconds=seconds, load=load, threads=threads, progress=prog, on_status=st.update)
        render.workload_run(res)
        if json_path:
            _write_json(json_path, res.to_json())
        return
    if trace_plot and not trace:
        raise ChipfuseError("--trace-plot draws the recorded run: give --trace FILE.json too")
    _writable(json_path, trace, trace_plot)
    host = api.load_system(probe_file) if probe_file else None  # checked now, not after the answer
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))

    def started(dev) -> None:
        target = dev.plan.system["name"]
        render.plan(dev.plan, title=f"{dev.plan.model.name} on {target} ({len(dev.plan.stages)} dies): the plan, "
                                    f"predicted for {target}")
        render.memory(dev.memory_report())
        console.print(f"[bold]user:[/] {prompt}\n[bold]assistant:[/] ", end="")

    with status("compiling the plan and starting the dies...") as st:
        res = api.run(system, model, prompt, max_tokens=max_tokens, precision=precision, context=context,
                      temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, raw=raw, host=host, recipe=recipe,
                      quantized=quantized, on_status=st.update, on_device=started, split=split, trace=trace,
                      adapter=adapter,
                      on_text=lambda piece: console.print(piece, end="", markup=False, highlight=False))
    console.print()
    render.run_speed(res)
    if res.trace is not None:
        render.gantt(res.trace)
        if trace_plot and res.trace.decode_step_s > 0:
            render.say(f"picture of the decode step written to {api.plot_trace(res.trace, trace_plot)}")
    if json_path:
        _write_json(json_path, res.to_json())


@app.command()
@friendly
def finetune(
    data: Path = typer.Option(..., "--data", "-d", help="training data: chat JSONL ({\"messages\": [...]} per line; "
                                                      "loss on the assistant's turns) or plain text (.txt, or "
                                                      "{\"text\": ...} lines)"),
    system: str = typer.Option(api.core.DEFAULT_SYSTEM, "--system", "-s", help=SYSTEM_HELP),
    model: str = typer.Option("smollm2", "--model", "-m", help=RUN_MODEL_HELP),
    precision: Optional[str] = typer.Option(None, help="the frozen base's format on the dies (default int4)"),
    out: Path = typer.Option(Path("chipfuse-adapter"), "--out", "-o", help="folder for the adapters (peft's layout) "
                                                                          "and the checkpoint"),
    rank: int = typer.Option(8, help="LoRA rank r"),
    alpha: float = typer.Option(16.0, help="LoRA alpha (the adapters' output is scaled by alpha / r)"),
    dropout: float = typer.Option(0.05, help="dropout on the adapters' input while training"),
    targets: str = typer.Option(",".join(api.TARGETS), help="comma-separated projections to adapt"),
    steps: int = typer.Option(100, help="optimiser steps"),
    lr: float = typer.Option(2e-4, help="peak learning rate (AdamW; linear decay to zero at the last step)"),
    warmup: int = typer.Option(0, help="steps of linear warm-up"),
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per sequence at most (longer examples are cut)"),
    micro_batch: int = typer.Option(4, "--micro-batch", help="sequences per micro-batch"),
    micro_batches: int = typer.Option(4, "--micro-batches", help="micro-batches per step, pipelined over the dies"),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="keep only each layer's input and recompute "
                                                                     "the rest in the backward pass (less memory)"),
    val: Optional[Path] = typer.Option(None, help="validation data (default: --val-fraction of --data held out)"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="share of --data held out for validation"),
    eval_every: int = typer.Option(0, "--eval-every", help="validation loss every N steps (0: before and after only)"),
    save_every: int = typer.Option(0, "--save-every", help="checkpoint every N steps (0: at the end only)"),
    resume: bool = typer.Option(False, "--resume", help="go on from --out's checkpoint (same settings and data)"),
    seed: int = typer.Option(0, help="seed of the adapters' start, the data order and dropout"),
    dies: Optional[int] = typer.Option(None, help="use at most this many dies"),
    threads: Optional[int] = typer.Option(None, min=1, max=1024, help="threads each die's kernels use (default: "
                                                                      "this machine's cores shared among the dies)"),
    plan_only: bool = typer.Option(False, "--plan-only", help="show the memory plan and predicted step, train nothing"),
    merge: bool = typer.Option(False, "--merge", help="then fold the adapters into the base (OUT/merged, a model "
                                                      "folder re-quantized to the dies' format when it runs) and "
                                                      "measure the validation loss before and after the merge"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the run's figures as JSON here"),
):
    """Fine-tune LoRA adapters on the emulated dies: memory planned first, the base frozen at the dies' format."""
    _writable(json_path)
    targets_t = tuple(t.strip() for t in targets.split(",") if t.strip())
    spec = api.TrainSpec(api.LoraSpec(rank, alpha, dropout, targets_t), seq_len, micro_batch,
                                  micro_batches, checkpointing)
    fp = api.plan_finetune(system, model, precision, spec, dies=dies)
    render.train_plan(fp)
    if plan_only:
        return
    with status("starting the dies...") as st, Steps() as prog:
        res = api.finetune(
            data, system=system, model=model, precision=precision, out=out, rank=rank, alpha=alpha, dropout=dropout,
            targets=targets_t, steps=steps, lr=lr, warmup=warmup, seq_len=seq_len, micro_batch=micro_batch,
            micro_batches=micro_batches, checkpointing=checkpointing, val=val, val_fraction=val_fraction,
            eval_every=eval_every, save_every=save_every, resume=resume, seed=seed, dies=dies, threads=threads,
            progress=prog,
            on_status=st.update)
    render.finetune(res)
    payload = res.to_json()
    if merge:
        with Steps() as prog:
            m = api.merge_adapter(res.adapter_dir, res.adapter_dir / "merged", model=model, data=val or data,
                                  calibration=data, system=system, precision=precision, seq_len=seq_len,
                                  progress=prog)
        render.merged(m, "the validation file" if val else "the training data (give --val for held-out data)")
        payload["merge"] = m.to_json()
    if json_path:
        _write_json(json_path, payload)


@app.command()
@friendly
def merge(
    adapter: Path = typer.Argument(..., help="a LoRA folder (`chipfuse finetune --out`, or peft's)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the merged model"),
    model: str = typer.Option("smollm2", "--model", "-m", help="the base model the adapter was trained on"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="validation data: measure the loss of the base, "
                                                                   "the adapter unmerged and the merged model"),
    calibration: Optional[Path] = typer.Option(None, help="text the GPTQ codes of the merged layers are fitted on "
                                                          "(chat JSONL or text; default: --data)"),
    method: str = typer.Option("auto", help="gptq (codes fitted on the calibration text: keeps the fine-tuning at "
                                            "INT4), rtn (rounded when the dies load it), or auto (gptq where it can)"),
    system: str = typer.Option(api.core.DEFAULT_SYSTEM, "--system", "-s", help=SYSTEM_HELP),
    precision: Optional[str] = typer.Option(None, help="the dies' format the merged model is measured at"),
    seq_len: int = typer.Option(256, "--seq-len", help="tokens per validation sequence at most"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write the figures as JSON here"),
):
    """Fold a LoRA adapter into its base model: a model folder chipfuse runs (re-quantized to the dies' format),
    with the validation loss before and after the merge so nothing is lost silently."""
    _writable(json_path)
    with Steps() as prog:
        m = api.merge_adapter(adapter, out, model=model, data=data, calibration=calibration, method=method,
                              system=system, precision=precision, seq_len=seq_len, progress=prog)
    render.merged(m, str(data) if data else "")
    if json_path:
        _write_json(json_path, m.to_json())


@app.command()
@friendly
def chat(
    system: str = typer.Option(api.core.DEFAULT_SYSTEM, "--system", "-s", help=SYSTEM_HELP),
    model: str = typer.Option("smollm2", "--model", "-m", help=RUN_MODEL_HELP),
    precision: str = typer.Option("int4", help="weight format of the layers"),
    max_tokens: int = typer.Option(256, min=1, help="tokens to generate at most per answer"),
    temperature: float = typer.Option(0.0, min=0.0, max=100.0, help="sampling temperature; 0 = greedy"),
    adapter: Optional[Path] = typer.Option(None, help="a LoRA folder (`chipfuse finetune --out`, or peft's) to serve "
                                                      "unmerged on the dies"),
):
    """Talk to the model interactively (empty line or Ctrl-D to leave)."""
    with status("starting the dies..."):
        dev = api.open_device(system, model, precision, max_batch=1, adapter=adapter)
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


launcher_app = typer.Typer(no_args_is_help=True, help="A resident process that keeps torch and chipfuse loaded, so "
                                                      "every chipfuse command after it starts in a fraction of a "
                                                      "second.")
app.add_typer(launcher_app, name="launcher")


@launcher_app.command("start")
@friendly
def launcher_start(
    idle_minutes: float = typer.Option(30.0, help="leave after this many minutes without a command"),
):
    """Start the resident launcher in the background (if it is not up) and wait until it answers."""
    from . import resident

    with status("loading torch and chipfuse in the launcher..."):
        st, new = resident.start(idle_minutes)
    render.say(f"launcher {'started' if new else 'already running'}: pid {st.pid}, loaded in {st.preload_s:.1f} s, "
               f"socket {st.socket}; `chipfuse` commands now start from it (CHIPFUSE_RESIDENT=0 bypasses it); it "
               f"leaves after {idle_minutes:g} min idle or on `chipfuse launcher stop`")


@launcher_app.command("status")
@friendly
def launcher_status():
    """Say whether a launcher for this install is up (and list launchers left by other installs)."""
    from . import resident

    st = resident.status()
    if st is None:
        render.say("no launcher is up for this install: `chipfuse launcher start` starts one")
    else:
        render.say(f"launcher up: pid {st.pid}, {st.up_s:.0f} s, loaded in {st.preload_s:.1f} s, {st.requests} "
                   f"request(s) served, socket {st.socket}")
    for path in resident.stale():
        render.say(f"for another install (not used; it leaves when idle): {path}")


@launcher_app.command("stop")
@friendly
def launcher_stop():
    """Stop the launcher for this install (commands it is running get SIGTERM)."""
    from . import resident

    pid = resident.stop()
    render.say("no launcher was up" if pid is None else f"launcher (pid {pid}) stopped")


@app.command()
@friendly
def probe(
    dies: int = typer.Option(4, min=1, max=64, help="number of emulated dies to describe (1-64)"),
    out: Path = typer.Option(Path("this-host.yaml"), help="system file to write"),
    threads: Optional[int] = typer.Option(None, help="threads one die's kernels use (default: every core)"),
    train: bool = typer.Option(False, "--train", help="also measure a LoRA training step (for `chipfuse finetune`'s "
                                                      "prediction on this host)"),
    fit: bool = typer.Option(True, help="fit the die speed, hop latency, stage and host cost, all-reduce latency and "
                                        "the cores' time-share efficiency on runs of the embedded model on 1 die, a "
                                        "2-die pipeline and a 2-die tensor group (--no-fit: the micro-benchmarks "
                                        "alone)"),
):
    """Measure this machine (bandwidth, kernels, hops) and write it as a system of emulated dies."""
    from ..runtime.probe import save_system

    _writable(out)
    with status("probing") as st:
        rep = api.probe(dies, on_status=lambda m: st.update(f"measuring {m}"), threads=threads, train=train,
                        fit=fit)
    save_system(rep.system, out)
    render.probe(rep)
    render.say(f"written to {out}")


@app.command()
@friendly
def serve(
    system: str = typer.Option(api.core.DEFAULT_SYSTEM, "--system", "-s", help=SYSTEM_HELP),
    model: str = typer.Option("smollm2", "--model", "-m", help=RUN_MODEL_HELP),
    precision: Optional[str] = typer.Option(None, help="weight format of the layers (default int4)"),
    context: int = typer.Option(2048, min=2, max=1 << 20, help="tokens per sequence the KV cache holds"),
    slots: int = typer.Option(4, min=1, max=64, help="sequences decoded together (KV-cache slots; the plan's batch)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback unless you say otherwise)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    api_key: Optional[str] = typer.Option(None, envvar="CHIPFUSE_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1 (or CHIPFUSE_API_KEY)"),
    max_tokens: int = typer.Option(1024, min=1, help="generated tokens per request at most"),
    max_queue: int = typer.Option(32, min=0, max=100000, help="requests waiting for a slot before a 429"),
    max_body_bytes: int = typer.Option(1 << 20, min=1024, help="largest request body"),
    split: str = typer.Option("pipeline", help="pipeline, tensor, hybrid or auto: how the dies share the model"),
    prefill_chunk: int = typer.Option(128, min=1, help="prompt tokens sent at a time, running streams decoding "
                                                        "between the pieces"),
    adapter: Optional[Path] = typer.Option(None, help="a LoRA folder (`chipfuse finetune --out`, or peft's) to serve "
                                                      "unmerged on the dies"),
):
    """Serve the dies as one OpenAI-compatible model: /v1/chat/completions, /v1/completions, /health, /metrics."""
    import socket

    from .. import serve as server

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise ChipfuseError(f"--host {host} --port {port}: cannot listen there ({err.strerror}); choose another "
                            "port or stop what holds it") from None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who reaches this "
                          "machine can use the dies")
    limits = server.Limits(max_body_bytes=max_body_bytes, max_tokens=max_tokens, max_queue=max_queue)
    with status("compiling the plan and starting the dies...") as st:
        engine = server.build(system, model, precision, context=context, slots=slots, limits=limits, split=split,
                              prefill_chunk=prefill_chunk, on_event=lambda m: err_console.print(f"[dim]{m}[/]"),
                              adapter=adapter)
        st.update("dies ready")
    dev = engine.device
    render.say(f"serving {engine.model_name} on {dev.plan.system['name']} ({len(dev.plan.stages)} dies, "
               f"{dev.max_batch} slots, context {dev.context}) at http://{host}:{port}/v1 -- Ctrl-C stops")
    server.serve(engine, host, port, api_key)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
