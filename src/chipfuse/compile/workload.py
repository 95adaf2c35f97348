"""A workload on a system as a placement problem: every way to run each model, with its cost per item.

Vision models: whole on each die, and cut in two (the exact split, compile/cv.py) over every pair of
dies joined by a link. LLMs: whole on each die, decoding `batch` sequences together; a token costs
its share of a decode step plus its share of the request's prefill. Items cross links as the
deployment would send them: a frame (or a model's input) from the host, activations between
pieces, the outputs back; an LLM's token ids both ways. The host's own work (image decoding, the
OCR crops, sampling) is not charged to any die.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from ..errors import SpecError
from ..frontends.workload import ModelDemand, Workload
from ..hw.spec import HOST, System
from ..ir.cv import CVModel
from ..quant.formats import DEFAULT_FORMAT, Recipe, get_format
from ..sim.perf import die_rates, die_recipe, supported, transfer_s
from .cv import on_die, split_cv
from .place import Option, Problem

# vision models chipfuse knows by name (from the rapidocr-onnxruntime wheel, fetched on first use)
BUILTIN_CV = ("ocr-det", "ocr-cls", "ocr-rec")


@dataclass(frozen=True)
class LoadedModel:
    demand: ModelDemand
    cv: CVModel | None = None
    llm_config: object | None = None
    path: str = ""


def load_models(w: Workload) -> list[LoadedModel]:
    """Each model of the workload read from its file (vision) or configuration (LLM)."""
    from ..frontends import load_model_config
    from ..frontends.model_files import OCR_FRAMES, ocr_models
    from ..frontends.onnx_model import load_onnx

    out = []
    for m in w.models:
        if m.onnx is not None:
            if m.onnx in BUILTIN_CV:
                path, frame = ocr_models(quiet=True)[m.onnx], OCR_FRAMES[m.onnx]
            elif Path(m.onnx).suffix.lower() == ".onnx" or Path(m.onnx).exists():
                path, frame = Path(m.onnx), None
            else:
                raise SpecError(f"model {m.name}: onnx {m.onnx!r} is neither a built-in vision model "
                                f"({', '.join(BUILTIN_CV)}) nor an .onnx file")
            model = load_onnx(path, m.name, tuple(m.frame) if m.frame else frame)
            out.append(LoadedModel(m, cv=model, path=str(path)))
        else:
            spec = m.llm or ""
            if spec in ("smollm2", "default"):
                spec = "smollm2-135m"
            out.append(LoadedModel(m, llm_config=load_model_config(spec), path=m.llm or ""))
    return out


def _route_s(system: System, a: str, b: str, nbytes: float) -> dict[tuple[str, str], float]:
    """Seconds of each directed link a transfer of `nbytes` from a to b occupies (bandwidth only)."""
    if a == b or nbytes <= 0:
        return {}
    nodes = system.route_nodes(a, b, nbytes)
    out: dict[tuple[str, str], float] = {}
    for u, v in pairwise(nodes):
        link = system.graph.edges[u, v]["link"]
        out[(u, v)] = out.get((u, v), 0.0) + nbytes / link.bytes_per_s
    return out


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _route_j(system: System, a: str, b: str, nbytes: float) -> float:
    from ..sim.energy import route_j_per_byte

    return nbytes * route_j_per_byte(system, a, b, nbytes) if nbytes > 0 else 0.0


def _cv_energy(system: System, die: str, od, lo: int, hi: int) -> float:
    """Dynamic joules of nodes [lo, hi) of a vision model's frame on `die` (costed at od's precision)."""
    from ..sim.energy import ops_energy_j

    c = od.costs.costs
    act = supported(system, die, system.die_type(die).activation_precision)
    return ops_energy_j(system, die, float(c.weight_flop[lo:hi].sum()), float(c.act_flop[lo:hi].sum()),
                        float(c.read_bytes[lo:hi].sum()), od.precision, act, set())


def cv_options(k: int, lm: LoadedModel, system: System, precision: str) -> list[Option]:
    m = lm.cv
    assert m is not None
    opts = []
    n = len(m.nodes)
    for d in system.die_names:
        od = on_die(m, system, d, precision)
        live = od.costs.live_bytes
        weights = float(od.costs.costs.weight_bytes.sum())
        mem = weights + 2.0 * float(live.max())  # weights, and the widest activations twice (in and out)
        links = _merge(_route_s(system, HOST, d, float(live[0])), _route_s(system, d, HOST, float(live[-1])))
        lat = transfer_s(system, HOST, d, float(live[0])) + od.frame_s + transfer_s(system, d, HOST, float(live[-1]))
        joules = (_cv_energy(system, d, od, 0, n) + _route_j(system, HOST, d, float(live[0]))
                  + _route_j(system, d, HOST, float(live[-1])))
        opts.append(Option(k, (d,), {d: od.frame_s}, {d: mem}, links, lat, f"whole on {d} ({od.precision})",
                           {"kind": "cv", "precision": od.precision, "pieces": [[d, 0, len(m.nodes)]]}, joules))
    for a, b in itertools.permutations(system.die_names, 2):
        if not system.graph.has_edge(a, b):
            continue
        sp = split_cv(m, system, [a, b], precision)
        oa = on_die(m, system, a, precision)
        live = oa.costs.live_bytes
        wb = oa.costs.costs.weight_bytes
        cut = sp.pieces[0].end
        mems = {a: float(wb[:cut].sum()) + 2.0 * float(live[:cut + 1].max()),
               b: float(wb[cut:].sum()) + 2.0 * float(live[cut:].max())}
        links = _merge(_route_s(system, HOST, a, float(live[0])), _route_s(system, a, b, float(live[cut])),
                       _route_s(system, b, HOST, float(live[-1])))
        joules = (_cv_energy(system, a, oa, 0, cut) + _cv_energy(system, b, on_die(m, system, b, precision), cut, n)
                  + _route_j(system, HOST, a, float(live[0])) + _route_j(system, a, b, float(live[cut]))
                  + _route_j(system, b, HOST, float(live[-1])))
        opts.append(Option(k, (a, b), {a: sp.pieces[0].compute_s, b: sp.pieces[1].compute_s}, mems, links,
                           sp.latency_s, f"nodes 0-{cut - 1} on {a}, {cut}-{len(m.nodes) - 1} on {b} ({sp.precision})",
                           {"kind": "cv", "precision": sp.precision,
                            "pieces": [[a, 0, cut], [b, cut, len(m.nodes)]]}, joules))
    return opts


def llm_options(k: int, lm: LoadedModel, system: System, precision: str) -> list[Option]:
    from ..ir.graph import Workload as Step
    from ..ir.graph import block_weight_bytes, kv_cache_bytes, op_costs, workspace_bytes
    from ..ir.llm import build_llm_graph
    from ..sim.energy import ops_energy_j
    from ..sim.perf import stage_cost

    dm = lm.demand
    g = build_llm_graph(lm.llm_config)  # type: ignore[arg-type]
    blocks = range(g.n_blocks)
    context = dm.prompt_tokens + dm.output_tokens
    fmt = get_format(DEFAULT_FORMAT[precision])
    dec, pref = Step.decode(context, dm.batch), Step.prefill(dm.prompt_tokens, 1)
    opts = []
    for d in system.die_names:
        recipe = die_recipe(system, d, Recipe.of(fmt))
        r = die_rates(system, d, recipe.default)
        kv_el = r.act_element_bytes
        cd = op_costs(g, recipe, dec, kv_el, kv_el)  # once each: the time and the energy both read them
        cp = op_costs(g, recipe, pref, kv_el, kv_el)
        step = stage_cost(g, system, d, blocks, recipe, dec, kv_el, HOST, 8.0 * dm.batch, cd)
        pre = stage_cost(g, system, d, blocks, recipe, pref, kv_el, HOST, 8.0, cp)
        per_token = step.time_s / dm.batch + pre.time_s / dm.output_tokens
        mem = float(block_weight_bytes(g, recipe).sum() + kv_cache_bytes(g, kv_el, context, dm.batch).sum()
                    + workspace_bytes(g, blocks, min(dm.prompt_tokens, 512), dm.batch, kv_el))
        links = _merge(_route_s(system, HOST, d, 8.0 + 8.0 * dm.prompt_tokens / dm.output_tokens),
                       _route_s(system, d, HOST, 8.0))
        lat = pre.time_s + step.time_s  # the first token of a request on an idle die
        joules = sum(ops_energy_j(system, d, float(c.weight_flop.sum()), float(c.act_flop.sum()),
                                  float(c.read_bytes.sum()), r.weight_precision, r.act_precision, set()) / per
                     for c, per in ((cd, dm.batch), (cp, dm.output_tokens)))
        opts.append(Option(k, (d,), {d: per_token}, {d: mem}, links, lat,
                           f"whole on {d} ({recipe.default.name}, batch {dm.batch})",
                           {"kind": "llm", "precision": recipe.default.precision, "format": recipe.default.name},
                           joules))
    return opts


def options_for(k: int, lm: LoadedModel, system: System, precision: str | None = None) -> list[Option]:
    p = precision or lm.demand.weight_precision
    opts = llm_options(k, lm, system, p) if lm.llm_config is not None else cv_options(k, lm, system, p)
    bound = lm.demand.latency_ms
    return [o for o in opts if bound is None or o.latency_s * 1e3 <= bound]


def build_problem(w: Workload, system: System, models: list[LoadedModel] | None = None,
                  precision: dict[str, str] | None = None) -> tuple[Problem, list[LoadedModel]]:
    """The placement problem of workload `w` on `system` (`precision` overrides a model's, by name)."""
    models = models if models is not None else load_models(w)
    options: list[Option] = []
    for k, lm in enumerate(models):  # a way that cannot fit its dies' memory is never one
        options += [o for o in options_for(k, lm, system, (precision or {}).get(lm.demand.name))
                    if all(b <= system.die_memory_bytes(d) for d, b in o.mem_bytes.items())]
    p = Problem(tuple(m.name for m in w.models), tuple(w.demand(m.name) for m in w.models),
                tuple(m.priority for m in w.models), tuple(system.die_names),
                tuple(system.die_memory_bytes(d) for d in system.die_names), tuple(options),
                tuple(m.unit for m in w.models))
    return p, models


def lower_precision(lm: LoadedModel, system: System) -> str | None:
    """The next cheaper precision for a model (fewer bytes a weight) that a die of the system runs, if any."""
    order = ["fp32", "fp16", "bf16", "int8", "int4"] if lm.llm_config is not None else ["fp32", "fp16", "bf16",
                                                                                         "int8"]
    cur = lm.demand.weight_precision
    bits = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}
    for p in order[order.index(cur) + 1:]:
        if bits[p] < bits[cur] and any(supported(system, d, p) == p for d in system.die_names):
            return p
    return None


def with_extra_die(p: Problem, like: str) -> Problem:
    """The problem with one more die like `like` (or like the die it copies): the same memory and ways to run
    models whole on it, on links of its own."""
    base = like.rstrip("+")
    new = next(base + "+" * k for k in range(1, len(p.dies) + 2) if base + "+" * k not in p.dies)
    extra = [Option(o.model, (new,), {new: o.die_s[base]}, {new: o.mem_bytes[base]},
                    {tuple(new if n == base else n for n in lk): s for lk, s in o.link_s.items()},  # type: ignore[misc]
                    o.latency_s, o.label.replace(base, new), o.detail, o.energy_j)
             for o in p.options if o.dies == (base,)]
    mem = dict(zip(p.dies, p.memory_bytes))
    return Problem(p.models, p.demand, p.priority, (*p.dies, new), (*p.memory_bytes, mem[base]),
                   (*p.options, *extra), p.units)


__all__ = ["LoadedModel", "load_models", "build_problem", "options_for", "lower_precision", "with_extra_die",
           "BUILTIN_CV"]
