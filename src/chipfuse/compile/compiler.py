"""CalFusion, first version: split one LLM over the dies of a system as a pipeline.

compile_plan(model, system, precision, workload) -> Plan. The compiler decides; the
simulator (`sim.predict`) and the runtime obey the plan it writes.
"""

from __future__ import annotations

import math

import numpy as np

from .. import __version__
from ..errors import FitError, SpecError
from ..frontends.config import ModelConfig
from ..hw.spec import HOST, System
from ..ir.graph import Graph, Workload, block_weight_bytes, kv_cache_bytes, op_costs, tied_shared_bytes, workspace_bytes
from ..ir.llm import build_llm_graph
from ..plan.plan import ModelEntry, Plan, SplitDecision, SplitOption, Stage, WorkloadSpec
from ..quant.formats import FORMATS, PRECISION_BYTES, Format, Recipe, get_format
from ..quant.formats import kv_precision as kv_supported
from ..quant.gguf_mix import is_mix, mix_recipe
from ..sim.perf import (
    block_times,
    die_format,
    die_rates,
    die_recipe,
    host_in_bytes,
    out_bytes,
    transfer_s,
)
from ..units import GiB, fmt_bytes
from .order import die_order
from .pipeline import min_dies, min_max_memory, split_pipeline
from .split import OBJECTIVES, SPLITS, explain_choice, group_stages, search
from .tensor import mode_of

MODEL_ID = "m0"  # the id of a single-model plan's one model
SPLIT_SHAPES = {"tensor": "shards every layer over a group of dies",
                "hybrid": "puts a tensor group and at least one more position in a pipeline"}


def _kv_element_bytes(kv_precision: str) -> float:
    """Bytes of one KV-cache element at a precision the runtime holds."""
    return PRECISION_BYTES[get_format(kv_precision).precision]


def _kv_name(kv_precision: str) -> str:
    """The canonical KV precision, or a one-line SpecError naming the option and the supported ones."""
    try:
        return kv_supported(kv_precision)
    except SpecError as err:
        raise SpecError(f"--kv-precision: {err}") from None


def stage_op_overrides(f: Recipe, graph: Graph, s: int, e: int) -> list[tuple[str, str]]:
    """[op, format] of the recipe's per-tensor overrides (a llama.cpp mix) among the ops of blocks [s, e)."""
    if not f.ops:
        return []
    mine = {op.name for op in graph.ops if s <= op.block < e}
    return [(o, n) for o, n in f.ops if o in mine]


def _stage_overrides(f: Recipe, s: int, e: int, n_blocks: int) -> list[tuple[int, str]]:
    """[block, format] of the layer blocks in [s, e) that a die recipe holds in another format than its default."""
    layer_blocks = range(max(s, 1), min(e, n_blocks - 1))
    return [(b, f.for_block(b).name) for b in layer_blocks if f.for_block(b) != f.default]


class _Problem:
    """Per-block, per-die numbers the split needs, for one system, format and workload."""

    def __init__(self, graph: Graph, system: System, order: list[str], recipe: Recipe, wl: WorkloadSpec):
        self.graph, self.system, self.order, self.recipe, self.wl = graph, system, order, recipe, wl
        self.fmt = recipe.default
        kv_element_bytes = _kv_element_bytes(wl.kv_precision)
        k, mblocks = len(order), graph.n_blocks
        micro = min(wl.batch, k)
        self.seqs_per_micro = math.ceil(wl.batch / micro)
        step = Workload.decode(wl.decode_context, self.seqs_per_micro)
        self.time = np.zeros((mblocks, k))
        self.mem = np.zeros((mblocks, k))
        self.cap = np.zeros(k)
        self.formats: list[Recipe] = []
        kv = kv_cache_bytes(graph, kv_element_bytes, wl.context, wl.batch)
        for j, die in enumerate(order):
            f = die_recipe(system, die, recipe)
            r = die_rates(system, die, recipe.default)
            self.formats.append(f)
            self.time[:, j] = block_times(graph, op_costs(graph, f, step, r.act_element_bytes, kv_element_bytes), r)
            self.mem[:, j] = block_weight_bytes(graph, f) + kv
            ws = workspace_bytes(graph, range(1, mblocks - 1), wl.prompt_tokens, wl.batch, r.act_element_bytes)
            head_ws = workspace_bytes(graph, range(mblocks - 1, mblocks), wl.prompt_tokens, wl.batch, r.act_element_bytes)
            self.mem[-1, j] += head_ws
            self.cap[j] = system.die_memory_bytes(die) - ws
        if k == 1:  # embedding and a tied head share one table
            self.mem[-1, 0] -= tied_shared_bytes(graph, self.formats[0], range(mblocks))
        self.kv = kv
        self.kv_element_bytes = kv_element_bytes

    def extra(self) -> np.ndarray:
        """Link time each stage pays per decode step: out to the next stage (the first also in)."""
        order = self.order
        rates = [die_rates(self.system, d, self.fmt) for d in order]
        h = self.graph.hidden_features[1] * self.seqs_per_micro
        ext = np.zeros(len(order))
        for j, d in enumerate(order):
            nxt = order[j + 1] if j + 1 < len(order) else HOST
            nbytes = h * rates[j].act_element_bytes if nxt != HOST else out_bytes(self.graph, self.graph.n_blocks, self.seqs_per_micro, 4)
            ext[j] = transfer_s(self.system, d, nxt, nbytes)
        ext[0] += transfer_s(self.system, HOST, order[0], host_in_bytes(self.seqs_per_micro))
        return ext


def _fit_error(prob: _Problem, model: ModelConfig, system: System, wl: WorkloadSpec, n_dies: int) -> FitError:
    """Say which die overflows, by how much, and the smallest change that fits."""
    graph, k = prob.graph, len(prob.order)
    mem = prob.mem.max(axis=1)
    caps = prob.cap
    # The split that needs the least memory per die shows where it overflows.
    if graph.n_blocks < k:
        return FitError(f"{model.name} has {graph.n_blocks} blocks but {system.name} offers {k} dies; use --dies {graph.n_blocks}")
    need, bounds = min_max_memory(mem, k)
    over = [(float(mem[s:e].sum() - caps[j]), j, s, e) for j, (s, e) in enumerate(bounds)]
    worst, j, s, e = max(over)
    die = prob.order[j]
    ws = system.die_memory_bytes(die) - caps[j]
    w = float(block_weight_bytes(graph, prob.formats[j])[s:e].sum())
    kv = float(prob.kv[s:e].sum())
    lines = [
        f"{model.name} does not fit {system.name} at {prob.recipe.name} (context {wl.context} x batch {wl.batch}):",
        f"  {die} would need {fmt_bytes(worst + caps[j] + ws)} (weights {fmt_bytes(w)} + KV cache {fmt_bytes(kv)}"
        f" + workspace {fmt_bytes(mem[s:e].sum() - w - kv + ws)}) but has {fmt_bytes(system.die_memory_bytes(die))}:"
        f" over by {fmt_bytes(worst)} ({worst:,.0f} bytes).",
        "  Smallest changes that fit:",
    ]
    cap_die = max(caps)
    nd = min_dies(mem, cap_die)
    if nd is not None:
        lines.append(f"  - more dies: {nd} dies like {prob.order[int(np.argmax(caps))]} "
                     f"({fmt_bytes(system.die_memory_bytes(prob.order[int(np.argmax(caps))]))} each) hold it (this system has {n_dies})")
    per_die = need + (system.die_memory_bytes(die) - caps[j])
    std = next((g for g in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if g * GiB >= per_die), None)
    lines.append(f"  - more DRAM: each of the {k} dies needs {fmt_bytes(per_die)}"
                 + (f" (e.g. {std} GiB)" if std else ""))
    lower = _lower_precisions(prob.fmt)
    fits_lower = None
    for name in lower:
        p2 = _Problem(graph, system, prob.order, Recipe.of(FORMATS[name]), wl)
        if split_pipeline(p2.time, p2.extra(), p2.mem, p2.cap) is not None:
            fits_lower = name
            break
    lines.append(f"  - lower precision: {fits_lower} fits" if fits_lower
                 else "  - lower precision: none of " + ", ".join(lower) + " fits" if lower
                 else "  - lower precision: none below " + prob.fmt.name)
    if wl.context > 512 and float(prob.kv.sum()) > 0.1 * float(mem.sum()):
        lines.append(f"  - or a shorter --context (the KV cache is {fmt_bytes(prob.kv.sum())} at {wl.context})")
    return FitError("\n".join(lines))


def _lower_precisions(fmt: Format) -> list[str]:
    """Formats with fewer bits per weight than `fmt`, most accurate first."""
    bpw = fmt.bits_per_weight()
    cands = ["fp16", "fp8-e4m3", "int8", "int4-g32", "int4-g64", "int4-g128-sym"]
    return [c for c in cands if FORMATS[c].bits_per_weight() < bpw - 1e-9]


MAX_BATCH = 4096  # concurrent sequences; beyond this no edge system holds the KV cache


def _whole(value: object, option: str, lo: int, hi: int, unit: str) -> int:
    """An integer option within [lo, hi], or a SpecError naming the option, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{option} {value!r}: give a whole number of {unit} ({lo}..{hi:,})")
    if not lo <= value <= hi:
        raise SpecError(f"{option} {value}: must be between {lo} and {hi:,} {unit}")
    return value


def check_workload(model: ModelConfig, *, context: int, batch: int, prompt_tokens: int,
                   output_tokens: int | None = None) -> None:
    """The workload's numbers are whole, positive and consistent with each other and the model (context first:
    a bad context is named as such, not as a prompt problem)."""
    _whole(context, "--context", 1, model.max_position, f"tokens ({model.name}'s max_position_embeddings is "
                                                         f"{model.max_position})")
    _whole(batch, "--batch", 1, MAX_BATCH, "sequences")
    _whole(prompt_tokens, "--prompt-tokens", 1, context, "tokens (at most --context)")
    if output_tokens is not None:
        _whole(output_tokens, "--output-tokens", 1, context - prompt_tokens,
               f"tokens (the prompt's {prompt_tokens} and the output must fit --context {context})")


def compile_plan(model: ModelConfig, system: System, precision: str | Format | Recipe | None = "int4", *,
                 head_precision: str | None = None, context: int = 4096,
                 batch: int = 1, prompt_tokens: int = 512, kv_precision: str = "fp16",
                 max_dies: int | None = None, strict: bool = False, model_source: str = "",
                 graph: Graph | None = None, quantized_weights: str | None = None,
                 split: str = "pipeline", objective: str = "throughput", output_tokens: int | None = None) -> Plan:
    """Split `model` over `system`'s dies and predict its speed.

    `split` pipeline (layer ranges), tensor (every layer sharded over a group of dies), hybrid (tensor groups
    in a pipeline) or auto (the best of all, by `objective`: throughput or latency). `precision` None means
    int4, or with `quantized_weights` the recipe its codes were made for."""
    if split not in SPLITS:
        raise SpecError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if objective not in OBJECTIVES:
        raise SpecError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    from ..sim.predict import predict

    if quantized_weights:
        from ..quant.checkpoint import checkpoint_recipe, read_meta

        meta = read_meta(quantized_weights)
        held = checkpoint_recipe(quantized_weights, meta)
        recipe = held if precision is None else Recipe.of(precision, head_precision)
        layers = meta.get("layers")
        if recipe != held or layers != model.num_layers:
            raise SpecError(f"{quantized_weights} holds {held.name} codes for {layers} layers; the plan asks for "
                            f"{recipe.name} on {model.num_layers} layers (leave out --precision and --recipe to "
                            "take the checkpoint's own recipe)")
    elif is_mix(precision):
        if head_precision is not None:
            raise SpecError(f"--head-precision: a llama.cpp mix ({precision}) sets the head's type itself")
        graph = graph or build_llm_graph(model)
        recipe = mix_recipe(str(precision), graph)
    else:
        recipe = Recipe.of("int4" if precision is None else precision, head_precision)
    bad = [b for b, _ in recipe.blocks if not 1 <= b <= model.num_layers]
    if bad:
        raise SpecError(f"recipe overrides blocks {bad}: {model.name} has layer blocks 1..{model.num_layers}")
    fmt = recipe.default
    check_workload(model, context=context, batch=batch, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    wl = WorkloadSpec(context=context, batch=batch, prompt_tokens=prompt_tokens, kv_precision=_kv_name(kv_precision),
                      output_tokens=output_tokens)
    graph = graph or build_llm_graph(model)
    dies = system.die_names
    if max_dies is not None:
        _whole(max_dies, "--dies", 1, len(dies), f"dies ({system.name} has {len(dies)})")
    warnings: list[str] = []
    coded = {recipe.default, *(get_format(n) for _, n in recipe.blocks)} if quantized_weights else set()
    for d in dies:
        for want in sorted(recipe.formats(), key=lambda f: f.name):
            got = die_format(system, d, want)
            if got.name != want.name and quantized_weights and want in coded:
                raise SpecError(f"{d} has no {want.precision} support, so it cannot run the codes in {quantized_weights}")
            if got.name != want.name:
                msg = (f"{d} has no {want.precision} support (it supports {', '.join(system.die_type(d).tops)}); "
                       f"using {got.name} there for {want.name}")
                if strict:
                    raise SpecError(msg.replace("; using", "; --strict forbids falling back to"))
                warnings.append(msg)
    h_bytes = graph.hidden_features[1] * 2.0
    order = die_order(system, dies, h_bytes)
    usable = order[:max_dies or len(order)]  # a tensor group may have more dies than the model has blocks
    need = {"tensor": 2, "hybrid": 3}.get(split, 1)
    if len(usable) < need:
        raise SpecError(f"--split {split} needs at least {need} dies (a {split} split {SPLIT_SHAPES[split]}); "
                        f"{system.name} offers {len(usable)}" + (f" with --dies {max_dies}" if max_dies else "")
                        + "; use --split pipeline or auto")
    k = min(len(order), max_dies or len(order), graph.n_blocks)
    order = order[:k]
    decision = None
    if split == "pipeline" and objective == "throughput":
        stages = _pipeline_stages(graph, system, _Problem(graph, system, order, recipe, wl), model, order, wl, fmt)
    else:
        kvb = _kv_element_bytes(wl.kv_precision)
        best, bounds, cands = search(graph, system, usable, recipe, wl, kvb, split, objective)
        if best is None:
            if split in ("auto", "pipeline"):  # what the smallest fitting change would be, as for a pipeline
                raise _fit_error(_Problem(graph, system, order, recipe, wl), model, system, wl, len(dies))
            raise FitError(f"{model.name} does not fit {system.name} with a {split} split at {recipe.name}: "
                           + "; ".join(f"{c.label}: {c.problem}" for c in cands[:4]))
        stages = group_stages(graph, system, best, bounds, wl, kvb, MODEL_ID)
        decision = _decision(split, objective, best, cands)
        order = [st.die for st in stages]
        k = len(order)
    if len(dies) > k and max_dies is None:
        warnings.append(f"{model.name} has only {graph.n_blocks} blocks; {len(dies) - k} die(s) left idle"
                        if decision is None else f"{len(dies) - k} die(s) left idle: the {decision.chosen} split is "
                                                 f"fastest without them")
    tied = [st.die for st in stages if st.has_embedding or st.has_lm_head]
    if model.tied_embeddings and len(stages) > 1 and all(st.kind == "layers" for st in stages):
        warnings.append(f"tied embedding table is held twice: on {tied[0]} (embedding) and {tied[-1]} (LM head)")
    plan = Plan(
        created_by=f"chipfuse {__version__}",
        models=[ModelEntry(id=MODEL_ID, name=model.name, source=model_source or model.name,
                           config=model.model_dump(mode="json"), precision=fmt.name, head_precision=recipe.head.name,
                           block_formats=[(b, f) for b, f in recipe.blocks], op_formats=list(recipe.ops),
                           mix=recipe.label or None,
                           quantized_weights=str(quantized_weights) if quantized_weights else None)],
        system=system.model_dump(mode="json"),
        workload=wl,
        route=[HOST, *order, HOST],
        stages=stages,
        fits=True,
        warnings=warnings,
        split=decision,
    )
    plan.prediction = predict(plan, graph=graph, system=system)
    _check_figures(plan, system)
    return plan


def _decision(split: str, objective: str, best, cands: list) -> SplitDecision:
    """The record of the search: every option with its figures, and the winner in words."""
    options = [SplitOption(mode=c.mode, groups=[list(g) for g in c.groups], decode_tokens_per_s=c.decode_tokens_per_s,
                           decode_tokens_per_s_per_request=c.decode_tokens_per_s_per_request, problem=c.problem)
               for c in cands]
    mode = mode_of(best.groups)
    return SplitDecision(requested=split, objective=objective, chosen=mode, reason=explain_choice(best, cands, objective),
                         options=options)


def _pipeline_stages(graph: Graph, system: System, prob: _Problem, model: ModelConfig, order: list[str],
                     wl: WorkloadSpec, fmt: Format) -> list[Stage]:
    """The optimal pipeline's stages (the split that minimises the slowest stage, then the sum)."""
    prompt_tokens, batch = wl.prompt_tokens, wl.batch
    split = split_pipeline(prob.time, prob.extra(), prob.mem, prob.cap,
                           own=np.array([system.die_type(d).step_overhead_s for d in order]))
    if split is None:
        raise _fit_error(prob, model, system, wl, len(system.die_names))
    h_bytes = graph.hidden_features[1] * 2.0
    stages = []
    prev = HOST
    for j, (s, e) in enumerate(split.bounds):
        die = order[j]
        f = prob.formats[j]
        blocks = range(s, e)
        wb = float(block_weight_bytes(graph, f)[s:e].sum()) - tied_shared_bytes(graph, f, blocks)
        ab = die_rates(system, die, fmt).act_element_bytes
        layers = [blk.layer for blk in (graph.blocks[b] for b in blocks) if blk.layer is not None]
        route_in = system.route_nodes(prev, die, h_bytes)
        stages.append(Stage(
            index=j, die=die, model=MODEL_ID, kind="layers", blocks=(s, e),
            layers=(min(layers), max(layers)) if layers else None,
            has_embedding=s == 0, has_lm_head=e == graph.n_blocks, format=f.default.name,
            block_formats=_stage_overrides(f, s, e, graph.n_blocks),
            head_format=f.head.name if (s == 0 or e == graph.n_blocks) else None,
            op_formats=stage_op_overrides(f, graph, s, e),
            weight_bytes=int(wb), kv_bytes=int(prob.kv[s:e].sum()),
            workspace_bytes=int(workspace_bytes(graph, blocks, prompt_tokens, batch, ab)),
            memory_bytes=int(system.die_memory_bytes(die)), route_in=route_in))
        prev = die
    return stages


def _check_figures(plan: Plan, system: System) -> None:
    """Backstop: a prediction with a non-finite, negative or zero rate is refused, never printed as if valid."""
    pred = plan.prediction
    assert pred is not None  # compile_plan sets it just before this check
    figures = {"time to first token": pred.ttft_s, "decode tokens/s": pred.decode_tokens_per_s,
               **{f"{sp.die} decode step": sp.decode_s for sp in pred.stages},
               **{f"{sp.die} link time": sp.link_out_s for sp in pred.stages}}
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v >= 0)}
    if not bad and pred.decode_tokens_per_s > 0 and pred.ttft_s > 0:
        return
    shown = ", ".join(f"{k} = {v!r}" for k, v in (bad or figures).items())
    raise SpecError(f"{system.name}: the performance model gives no usable figures ({shown}); a rate, size or "
                    "latency in the system description is out of any real range: check its numbers")
