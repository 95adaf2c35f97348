"""Systems, models, plans, predictions, calibration, probing and one-prompt runs: the Python API behind the CLI."""

from __future__ import annotations

from pathlib import Path

from ..errors import ChipfuseError
from .results import CalibrationReport, PresetList, ProbeReport, RunResult, TraceResult

SAMPLE_QUESTION = "What is the capital of France?"
DEFAULT_SYSTEM = "talk-4die-d2d"


def load_system(name_or_path: str | Path):
    """A preset name or a system YAML file -> `hw.spec.System` (validated; errors name file and field)."""
    from ..hw.load import load_system as load

    return load(name_or_path)


def load_model(spec: str | Path):
    """A catalogue name, a config.json (or its folder) or a .gguf file -> `frontends.ModelConfig`."""
    from ..frontends import load_model_config

    return load_model_config(spec)


def alias_of(name: str) -> str | None:
    """The catalogue entry a name stands for, when it is an alias (`llama3-8b` -> `llama-3.1-8b`)."""
    from ..frontends import alias_of as of

    return of(str(name))


def plan(model, system, precision: str | None = None, *, context: int = 4096, batch: int = 1,
         prompt_tokens: int = 512, kv_precision: str = "fp16", dies: int | None = None, strict: bool = False,
         head_precision: str | None = None, recipe: str | Path | None = None, quantized: str | Path | None = None,
         split: str = "auto", objective: str = "throughput", output_tokens: int | None = None):
    """Split a model over a system's dies and predict its speed -> `plan.Plan`.

    `split` auto (the compiler picks the fastest of the others by `objective`, throughput or latency),
    pipeline (layer ranges), tensor (every layer sharded over a group) or hybrid (tensor groups in a
    pipeline); `plan.split` records the options weighed. `model` and `system` are names/paths or already
    loaded objects; `recipe` is a per-layer recipe file (from `mixed_precision`); `quantized` a GPTQ
    checkpoint whose recipe the plan takes. `output_tokens` predicts decode at the mean position of a request
    generating that many tokens after its prompt (None: at the full context, the worst case)."""
    from ..compile.compiler import compile_plan
    from ..frontends.config import ModelConfig
    from ..hw.spec import System
    sysm = system if isinstance(system, System) else load_system(system)
    cfg = model if isinstance(model, ModelConfig) else load_model(model)
    fmt = _formats_asked(precision, recipe)
    return compile_plan(cfg, sysm, fmt, head_precision=head_precision, context=context, batch=batch,
                        prompt_tokens=prompt_tokens, kv_precision=kv_precision, max_dies=dies, strict=strict,
                        model_source=str(model) if not isinstance(model, ModelConfig) else model.name,
                        quantized_weights=str(quantized) if quantized else None, split=split, objective=objective,
                        output_tokens=output_tokens)


def _formats_asked(precision: str | None, recipe: str | Path | None):
    """The weight formats a caller asked for: a precision name, or the recipe read from its file (not both)."""
    from ..quant.formats import load_recipe

    if recipe is not None and precision is not None:
        raise ChipfuseError("give --precision or --recipe, not both (the recipe holds the formats)")
    return load_recipe(recipe) if recipe is not None else precision


def load_plan(path: str | Path):
    """A plan JSON file -> `plan.Plan` (every field and the stages' consistency checked)."""
    from ..plan.plan import Plan

    return Plan.load(path)


def predict(plan, system=None):
    """The performance model's figures for a plan on its own system, or on `system` -> `plan.Prediction`."""
    from ..hw.spec import System
    from ..sim.predict import predict as run

    sysm = None if system is None else (system if isinstance(system, System) else load_system(system))
    return run(plan, system=sysm)


def required_bandwidth_bytes_per_s(plan, tokens_per_s: float) -> float:
    """DRAM bytes per second a batch-1 decode rate needs with this plan (each token reads the whole model)."""
    from ..sim.perf import required_bandwidth_bytes_per_s as need

    check_rate(tokens_per_s)
    return need(plan.prediction.bytes_read_per_token, tokens_per_s)


def check_rate(tokens_per_s: float) -> None:
    """A decode-rate target is finite, above 0 and at most 1e6 tokens/s (else one message naming the option)."""
    import math

    if not (math.isfinite(tokens_per_s) and 0 < tokens_per_s <= 1e6):
        raise ChipfuseError(f"--target-tokens-per-s {tokens_per_s:g}: give a rate above 0 and at most 1e6 tokens/s")


def calibrate(apply: bool = False) -> CalibrationReport:
    """Fit the performance model's efficiency factors per device family to published measurements and
    report the error; `apply` writes the fitted factors into the real-device presets."""
    from ..sim.calibrate import apply_to_presets, load_measurements, markdown_report
    from ..sim.calibrate import calibrate as run

    results, skipped = run()
    report = markdown_report(results, skipped, len(load_measurements()))
    changed = tuple(apply_to_presets(results)) if apply else ()
    return CalibrationReport(tuple(results), tuple(skipped), len(load_measurements()), report, changed)


def probe(dies: int = 4, on_status=lambda message: None, threads: int | None = None,
          train: bool = False, fit: bool = True) -> ProbeReport:
    """Measure this machine (bandwidth, kernels, hops) as a system of `dies` emulated dies named die0...;
    `threads`: the threads one die's kernels use (default every core, as `Device` gives each die); `train`: also
    a LoRA training step's rate, for `chipfuse finetune`'s prediction on this host. `fit`: then run the embedded
    model on one die, traced, and fit the die's speed, the hop latency and the host's per-token cost on that
    run (api.hostfit), so runs on more dies are predicted from what the runtime really does."""
    import os

    from ..runtime.probe import probe as run

    if not (isinstance(dies, int) and 1 <= dies <= 64):
        raise ChipfuseError(f"--dies {dies!r}: give 1..64 emulated dies")
    cores = os.cpu_count() or 1
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= cores):
        raise ChipfuseError(f"--threads {threads!r}: give 1..{cores} (this machine's cores)")
    system, fig = run([f"die{i}" for i in range(dies)], on_status=on_status, threads=threads, train=train)
    fitted = None
    if fit:
        from .hostfit import fit_on_run

        system, fitted = fit_on_run(system, threads, on_status)
    return ProbeReport(system, fig["bandwidth_gb_per_s"], fig["int4_kernel_gb_per_s"], fig["tops"],
                       fig["layer_overhead_s"], fig["hop_latency_s"], fig["hop_gb_per_s"], fitted)


def this_host_prediction(plan, prompt_tokens: int, host=None, on_status=lambda message: None):
    """The performance model's figures for `plan` on this machine: a probe's system (`host`, its dies mapped in
    stage order onto the plan's die names, whatever they are called) or one measured now."""
    from ..hw.load import parse_system
    from ..runtime.probe import probe as measure
    from ..sim.predict import predict as run

    dies = [st.die for st in plan.stages]
    if host is None:
        on_status("measuring this host for the prediction (chipfuse probe)...")
        host, _ = measure(dies)
    _check_probe(host, len(dies))
    rename = dict(zip(host.die_names, dies))
    if any(k != v for k, v in rename.items()):
        host = parse_system(_renamed(host.model_dump(mode="json"), rename), "this host (probe, dies renamed)")
    wl = plan.workload.model_copy(update={"batch": 1, "prompt_tokens": max(1, prompt_tokens)})
    return run(plan.model_copy(update={"workload": wl, "system": host.model_dump(mode="json")}), system=host)


def _check_probe(host, n_dies: int) -> None:
    if len(host.dies) != n_dies:
        raise ChipfuseError(f"the probe describes {len(host.dies)} emulated die(s), the plan uses {n_dies}; "
                            f"re-run `chipfuse probe --dies {n_dies}`")


def _renamed(data: dict, rename: dict[str, str]) -> dict:
    """A system mapping with its dies renamed (in the die list, the links and the packages)."""
    def r(n: str) -> str:
        return rename.get(n, n)

    return {**data, "dies": [{**d, "name": r(d["name"])} for d in data["dies"]],
            "links": [{**lk, "between": [r(n) for n in lk["between"]]} for lk in data["links"]],
            "packages": [{**p, "dies": [r(n) for n in p["dies"]]} for p in data.get("packages", [])]}


def open_device(system=DEFAULT_SYSTEM, model: str | Path | None = None, precision: str | None = None, *,
                context: int = 2048, max_batch: int = 4, recipe: str | Path | None = None,
                quantized: str | Path | None = None, head_precision: str | None = None, kv_precision: str = "fp16",
                dies: int | None = None, threads: int | None = None, spawn: bool = True, master: str | None = None,
                startup_timeout_s: float = 300.0, on_status=None, split: str = "pipeline",
                objective: str = "throughput", trace: bool = False, prefill_chunk: int | None = None,
                adapter: str | Path | None = None):
    """Compile a plan for a runnable model (the embedded SmolLM2 by default) on a system and start its dies
    -> `runtime.Device` (one device whatever the number of dies; use it as a context manager). `split` as in
    `plan`; pipeline unless asked, as `chipfuse run` always planned. `trace`: record the run for
    `device.recording()` (see `run(trace=...)`). `prefill_chunk`: send prompts in pieces of at most this many
    tokens, so a long prompt does not stall the running requests (the server's default: 128). `adapter`: a LoRA
    folder (`chipfuse finetune`'s output, peft's layout) the dies serve unmerged."""
    import time

    from ..compile.compiler import compile_plan
    from ..hw.spec import System
    from ..runtime.device import Device, resolve_model

    started_at = time.time()
    fmt = _formats_asked(precision, recipe)
    sysm = system if isinstance(system, System) else load_system(system)
    path, cfg = resolve_model(model)
    p = compile_plan(cfg, sysm, fmt, head_precision=head_precision, context=context, batch=max_batch,
                     prompt_tokens=min(512, context), kv_precision=kv_precision, max_dies=dies,
                     model_source=str(path), quantized_weights=str(quantized) if quantized else None,
                     split=split, objective=objective)
    return Device(p, path, threads=threads, spawn=spawn, master=master, startup_timeout_s=startup_timeout_s,
                  on_status=on_status, started_at=started_at, trace=trace, prefill_chunk=prefill_chunk,
                  adapter=adapter)


def run(system=DEFAULT_SYSTEM, model: str | Path | None = None, prompt: str = SAMPLE_QUESTION, *,
        max_tokens: int = 64, precision: str | None = None, context: int = 2048, temperature: float = 0.0,
        top_k: int = 0, top_p: float = 1.0, seed: int | None = None, raw: bool = False, host=None,
        recipe: str | Path | None = None, quantized: str | Path | None = None, on_status=lambda m: None,
        on_device=lambda device: None, on_text=lambda piece: None, split: str = "pipeline",
        trace: str | Path | None = None, adapter: str | Path | None = None) -> RunResult:
    """Answer one prompt on the dies: plan (batch 1), start the workers, stream the answer (`on_text` gets each
    piece), stop them, and set the measured speed beside the model's prediction for this host (`host`: a
    probe's system, else measured). `on_device(device)` is called once the dies are up; `split` as in `plan`.
    `trace`: write what the host and the dies did, when, to this file (Chrome / Perfetto JSON, the tracks of
    `chipfuse plan --trace`); the result's `trace` holds it. `adapter`: serve this LoRA folder unmerged (the
    prediction is the base model's: the adapters' few FLOP are not in it)."""
    if not (isinstance(max_tokens, int) and 1 <= max_tokens < context):
        raise ChipfuseError(f"--max-tokens {max_tokens!r}: give 1..{context - 1} (at least one token of the "
                            f"--context {context} is the prompt)")
    sysm = system if not isinstance(system, (str, Path)) else load_system(system)
    dev = open_device(sysm, model, precision, context=context, max_batch=1, recipe=recipe, quantized=quantized,
                      on_status=on_status, split=split, trace=trace is not None, adapter=adapter)
    if host is not None:
        try:
            _check_probe(host, len(dev.plan.stages))  # before the answer, not after it
        except ChipfuseError:
            dev.close()
            raise
    with dev:
        on_device(dev)
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        gen = dev.submit(prompt, max_tokens, **kw) if raw else dev.chat([{"role": "user", "content": prompt}],
                                                                         max_tokens, **kw)
        for piece in gen:
            on_text(piece)
        memory = tuple(dev.memory_report())
        recording = dev.recording() if trace is not None else None
        startup = {**dev.startup_report(), "resident": dev.executor.resident}
    n_prompt = len(gen.req.prompt)
    measured = _write_measured(dev.plan, recording, trace) if recording is not None else None
    if any(st.shard for st in dev.plan.stages):
        return RunResult(dev.plan, prompt, n_prompt, gen.text, tuple(gen.tokens), gen.finish_reason, gen.ttft_s,
                         gen.decode_tokens_per_s, None, None, memory, TENSOR_HERE, measured, startup)
    pred = this_host_prediction(dev.plan, n_prompt, host, on_status)
    return RunResult(dev.plan, prompt, n_prompt, gen.text, tuple(gen.tokens), gen.finish_reason, gen.ttft_s,
                     gen.decode_tokens_per_s, pred.ttft_s, pred.decode_tokens_per_s, memory, trace=measured,
                     startup=startup)


def _write_measured(plan, recording, path) -> TraceResult:
    """A run's recording as the measured trace, written to `path` (Chrome / Perfetto JSON)."""
    import json

    from ..io import write_text_atomic
    from ..sim.trace import bottleneck, to_chrome
    from .measured import measured_trace

    tr = measured_trace(plan, recording, plan.prediction)
    doc = to_chrome(tr)
    write_text_atomic(path, json.dumps(doc) + "\n")
    words = bottleneck(dict(tr.decode.shares)).words if tr.decode.length_s > 0 else "no decode step was recorded"
    return TraceResult(Path(path), tr.title, tr.prefill.length_s, tr.decode.length_s, tr.round_trip_s,
                       tr.micro_batches, len(doc["traceEvents"]), words, tr.decode.shares, tr.notes, tr)


# why `run` predicts no speed for a tensor split on this machine
TENSOR_HERE = ("no prediction for this host: `chipfuse probe` describes emulated dies that take turns on this "
               "machine's cores, while a tensor group's dies run at once on them, so the model's figure would not "
               "describe this run")


def presets() -> PresetList:
    """The preset systems and the catalogue models, each as a plain mapping of its main facts."""
    from ..frontends import catalogue, load_model_config
    from ..hw.load import preset_names
    from ..hw.spec import HOST

    systems = []
    for name in preset_names():
        s = load_system(name)
        systems.append({
            "name": name, "description": s.description, "dies": len(s.dies),
            "die_types": sorted({d.type for d in s.dies}), "links": sorted({lk.label() for lk in s.links}),
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
    return PresetList(tuple(systems), tuple(models))


def cost(system: str | Path):
    """The bill of materials of `system` (a preset or file), line by line with sources, and the talk's three
    development paths (hw/cost.py)."""
    from ..hw.cost import development_paths, system_cost

    return system_cost(load_system(system)), development_paths()
