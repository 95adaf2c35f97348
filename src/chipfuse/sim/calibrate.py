"""Calibrate the performance model against published measurements of real devices.

Data: `sim/data/measurements.yaml` (device preset, model, format, engine, measured prefill rate or time to first
token, decode tokens/s, source and quote). For each device family (hw/families.py) we fit four factors of the spec
— DRAM efficiency, compute efficiency in decode and in prefill, a fixed cost per block — by least squares on the
log of predicted over measured time, on that family's points only, each computed on the engine's precision path
(`compute_format`). The fit evaluates the same roofline as `sim.perf` (single-die systems), so the fitted numbers
can be written into the presets and used as they are. A family the file does not hold borrows the typical family
of its class (`borrowed`); leaving each device and each family out scores how far that borrowing can be trusted.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import MISSING, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import least_squares

from ..frontends import load_model_config, resolve_name
from ..hw.dram import die_read_bytes_per_s
from ..hw.families import CLASSES, FAMILIES, class_of, factors_path, family_of  # noqa: F401  (family_of: part of this module's API)
from ..hw.load import load_system, preset_names
from ..hw.quick import is_quick
from ..hw.spec import HOST, System
from ..ir.graph import Workload, op_costs
from ..ir.llm import build_llm_graph
from ..quant.formats import Format, Recipe
from .perf import die_rates, host_in_bytes, op_times, out_bytes, roofline_s, transfer_s


@dataclass(frozen=True)
class Measurement:
    device: str
    model: str
    quant: str
    bits_per_weight: float
    engine: str
    backend: str
    prompt_tokens: int | None
    prefill_tokens_per_s: float | None
    decode_tokens: int | None
    decode_tokens_per_s: float | None
    source: str
    notes: str = ""
    ttft_ms: float | None = None  # time to first token, where a source gives it instead of a prefill rate
    threads: int | None = None  # CPU threads the engine ran on, where the source says
    quote: str = ""  # the source's exact words the figures were read from


@lru_cache(maxsize=1)
def load_measurements() -> tuple[Measurement, ...]:
    text = (resources.files("chipfuse") / "sim" / "data" / "measurements.yaml").read_text()
    out = []
    for r in yaml.safe_load(text):
        out.append(Measurement(**{k: r.get(k) for k, f in Measurement.__dataclass_fields__.items()
                                  if k in r or f.default is MISSING}))
    return tuple(out)


def record_format(m: Measurement) -> Format:
    """A format with the record's bits per weight, executed at the nearest die precision."""
    q = m.quant.lower()
    if q in ("f16", "fp16") or m.bits_per_weight >= 15.5 and "bf" not in q:
        p = "fp16" if m.bits_per_weight < 17 else "fp32"
    elif "bf16" in q:
        p = "bf16"
    elif m.bits_per_weight <= 6.5:
        p = "int4"
    else:
        p = "int8"
    return Format(m.quant, p, m.bits_per_weight, group_size=0)  # type: ignore[arg-type]


GGML_ENGINES = ("llama.cpp", "ollama", "llamafile")


def compute_format(m: Measurement, fmt: Format, kind: str = "decode") -> Format:
    """The precision an engine computes a quantised record in (its precision path):
    - a build named wXaY (RKLLM and other NPU toolkits) multiplies in its activations' precision: a8 -> int8, a16 -> fp16;
    - ggml engines on a CPU multiply quantised weights with int8-quantised activations (Q8 dot products), and so
      does their GPU decode (integer dot-product mat-vec kernels); their GPU prefill runs the batch through
      floating-point matrix units (dequantise, then fp16 multiply), so it is priced at the fp16 peak;
    - other engines (MLC, TensorRT-LLM) expand 4-bit weights to fp16."""
    if fmt.precision not in ("int4", "int8"):
        return fmt
    q = m.quant.lower()
    if re.match(r"^w\d+a\d+", q):
        p = "int8" if re.match(r"^w\d+a(4|8)", q) else "fp16"
    elif m.engine in GGML_ENGINES:
        p = "fp16" if kind == "prefill" and m.backend not in ("CPU",) and class_of(family_of(m.device)) == "GPU" else "int8"
    else:
        p = "fp16"
    return Format(fmt.name, p, fmt.bits, group_size=0)  # type: ignore[arg-type]


def core_share(m: Measurement, system: System) -> float:
    """The share of a CPU's peak a record ran on: its threads over the cores the preset's peak adds up (at most 1;
    SMT threads beyond the cores add no peak). 1 for other engines, or when the source does not say."""
    if m.backend != "CPU" or not m.threads or class_of(family_of(m.device)) != "CPU":
        return 1.0
    return min(m.threads, system.host.cpu.cores) / system.host.cpu.cores


@dataclass
class Point:
    """One measurement with the model's work split into parts at unit efficiencies."""

    m: Measurement
    kind: str  # decode | prefill
    tokens: int  # tokens the measured time covers
    measured_s: float  # seconds per token (decode) or for the whole prompt (prefill)
    comp1: np.ndarray = field(repr=False)  # per-op compute seconds at compute efficiency 1
    read_bytes: np.ndarray = field(repr=False)  # per-op DRAM bytes
    peak_bytes_per_s: float = 0.0  # the DRAM's peak
    other_bytes_per_s: float = 0.0  # taken by other masters (display) before the die
    share: float = 1.0  # the die's share of what is left
    cap_bytes_per_s: float = float("inf")  # an off-chip link in the way
    blocks: int = 0
    fixed_s: float = 0.0  # links and host overhead (not fitted)

    def predict_s(self, mem_eff: float, comp_eff: float, overhead_s: float, prefill_eff: float | None = None) -> float:
        """Predicted seconds at these factors; a prefill point computes at `prefill_eff` when one is given."""
        bw = die_read_bytes_per_s(self.peak_bytes_per_s, mem_eff, self.other_bytes_per_s, self.share, self.cap_bytes_per_s)
        eff = prefill_eff if self.kind == "prefill" and prefill_eff else comp_eff
        return float(roofline_s(self.comp1 / eff, self.read_bytes, max(bw, 1.0)).sum()) + \
            self.blocks * overhead_s + self.fixed_s


def _unit_system(system: System) -> System:
    """The same system with every efficiency set to 1 and no per-block overhead."""
    data = system.model_dump(mode="json")
    data["host"]["dram"]["efficiency"] = 1.0
    for dt in data["die_types"].values():
        dt["compute_efficiency"] = 1.0
        dt["op_overhead_s"] = 0.0
        if dt["memory"].get("own"):
            dt["memory"]["own"]["efficiency"] = 1.0
    return System.model_validate(data)


def with_efficiency(system: System, mem_eff: float, comp_eff: float, overhead_s: float) -> System:
    data = system.model_dump(mode="json")
    for dt in data["die_types"].values():
        dt["compute_efficiency"] = round(comp_eff, 4)
        dt["op_overhead_s"] = overhead_s
        if dt["memory"].get("own"):
            dt["memory"]["own"]["efficiency"] = round(mem_eff, 4)
        else:
            data["host"]["dram"]["efficiency"] = round(mem_eff, 4)
    return System.model_validate(data)


def build_points(records: tuple[Measurement, ...] | None = None) -> tuple[list[Point], list[str]]:
    """Points for every usable record; reasons for the records skipped."""
    records = records or load_measurements()
    presets = set(preset_names())
    points, skipped = [], []
    systems: dict[str, System] = {}
    for m in records:
        name = resolve_name(m.model)
        if m.device not in presets:
            skipped.append(f"{m.device} / {m.model}: no preset for the device")
            continue
        if name is None:
            skipped.append(f"{m.device} / {m.model}: model not in the catalogue")
            continue
        if m.device not in systems:
            systems[m.device] = load_system(m.device)
        system = systems[m.device]
        if len(system.dies) != 1:
            skipped.append(f"{m.device}: calibration covers single-engine devices")
            continue
        if m.backend == "CPU" and class_of(family_of(m.device)) == "GPU":
            skipped.append(f"{m.device} / {m.model} ({m.engine}, CPU backend): the preset models the GPU")
            continue
        unit = _unit_system(system)
        die = system.die_names[0]
        graph = build_llm_graph(load_model_config(name))
        fmt = record_format(m)
        kv_element_bytes = 2.0
        runs = []
        if m.decode_tokens_per_s:
            n = m.decode_tokens or 128
            w = Workload.decode(max(n // 2, 1))  # mean context over the generated tokens
            fixed = (transfer_s(unit, HOST, die, host_in_bytes(1)) + transfer_s(unit, die, HOST, out_bytes(graph, graph.n_blocks, 1, 4))
                     + unit.host.overhead_per_token_s)
            runs.append(("decode", 1, 1.0 / m.decode_tokens_per_s, w, fixed))
        if m.prompt_tokens and (m.prefill_tokens_per_s or m.ttft_ms):
            p = m.prompt_tokens
            fixed = transfer_s(unit, HOST, die, host_in_bytes(p)) + transfer_s(unit, die, HOST, out_bytes(graph, graph.n_blocks, 1, 4))
            # a prefill rate covers the prompt; a time to first token is the prompt's prefill and the first token out
            t = p / m.prefill_tokens_per_s if m.prefill_tokens_per_s else m.ttft_ms / 1e3  # type: ignore[operator]
            runs.append(("prefill", p, t, Workload.prefill(p), fixed))
        mem = system.die_type(die).memory
        if mem.own:
            peak, other, share, cap = mem.own.peak_bytes_per_s, 0.0, 1.0, float("inf")
        else:
            assert mem.shared is not None  # DieMemory holds exactly one of own, shared
            peak, other, share = system.host.dram.peak_bytes_per_s, system.host.traffic.bytes_per_s, mem.shared.bandwidth_share
            cap = system.shared_link_cap_bytes_per_s(die)
        cores_used = core_share(m, system)
        for kind, tokens, t, w, fixed in runs:
            r = die_rates(unit, die, compute_format(m, fmt, kind))
            c = op_costs(graph, Recipe(fmt, fmt), w, r.act_element_bytes, kv_element_bytes)  # the record's bits for every weight
            comp, _ = op_times(c, r)
            comp = comp / cores_used
            points.append(Point(m, kind, tokens, t, comp, c.read_bytes, peak, other, share, cap, graph.n_blocks, fixed))
    return points, skipped


Factors = tuple[float, float, float, float | None]  # DRAM eff., compute eff., s per block, prefill compute eff.
# where each fit starts its decode compute efficiency: from 0.4 alone the Arm SBC family stopped at 0.99 (every
# decode point memory-bound; half the sum of squared log errors 0.294); from 0.1 it finds 0.13 (0.216), as the other
# CPU families have
FIT_STARTS = (0.4, 0.1)


def fit(points: list[Point]) -> Factors:
    """(DRAM efficiency, compute efficiency, seconds per block, prefill compute efficiency) minimising squared log
    error; the prefill efficiency is fitted on its own where there are prefill points (an engine's prompt path
    batches tokens into large matmuls its decode path never runs), else None (the decode one applies)."""
    prefill = any(p.kind == "prefill" for p in points)

    def resid(x):
        me, ce, oh = x[0], x[1], x[2] * 1e-6
        pe = x[3] if prefill else None
        return [math.log(p.predict_s(me, ce, oh, pe) / p.measured_s) for p in points]

    lo, hi = [0.05, 0.005, 0.0], [1.0, 1.0, 2000.0]
    if prefill:
        lo, hi = lo + [0.005], hi + [1.0]
    res = None
    for ce in FIT_STARTS:  # the decode compute efficiency is often weakly determined: the better of two optima
        x0 = [0.6, ce, 5.0] + ([0.4] if prefill else [])
        got = least_squares(resid, x0=x0, bounds=(lo, hi))
        if res is None or got.cost < res.cost * (1 - 1e-9):
            res = got
    assert res is not None
    return float(res.x[0]), float(res.x[1]), float(res.x[2] * 1e-6), (float(res.x[3]) if prefill else None)


def unconstrained(points: list[Point], x: Factors) -> frozenset[int]:
    """Which of the factors `x` the points do not constrain: moving it by 10% moves no prediction by 0.1% (a
    compute efficiency where every point is memory-bound says only that it is high enough; the fit leaves it
    wherever the optimiser stopped, so it is no evidence of what another family's would be)."""
    base = np.array([p.predict_s(*x) for p in points])
    free = set()
    for i, v in enumerate(x):
        if v is None:
            free.add(i)
            continue
        y = list(x)
        y[i] = max(v * 1.1, 1e-6) if i == 2 else v * 1.1 if v * 1.1 <= 1.0 else v * 0.9  # efficiencies stay <= 1
        moved = np.array([p.predict_s(*y) for p in points])  # type: ignore[arg-type]
        if np.max(np.abs(np.log(moved / base))) < 1e-3:
            free.add(i)
    return frozenset(free)


def typical(fits: list[Factors], free: list[frozenset[int]] | None = None) -> Factors:
    """The factors of a typical family among `fits`, each family one vote (a family with many records does not
    outweigh the others): arithmetic mean of the DRAM efficiencies (within 0.05-1), geometric mean of the compute
    efficiencies and of the per-block costs (each spreads over decades: 44 us to 2 ms per block; one family's cost at
    its bound would otherwise set the mean). A family votes on a factor only where its points constrain it
    (`free[i]`: the factors fits[i]'s points leave free, `unconstrained`); a factor no family constrains takes
    every family's value. No family with a prefill efficiency: None."""
    def geo(v: list[float]) -> float:
        return math.exp(statistics.fmean(math.log(max(x, 1e-6)) for x in v))  # a cost fitted at 0: 1 us

    free = free or [frozenset()] * len(fits)
    out: list[float | None] = []
    for i, mean in enumerate((statistics.fmean, geo, geo, geo)):
        have = [(f[i], i in fr) for f, fr in zip(fits, free) if f[i] is not None]
        votes = [v for v, is_free in have if not is_free] or [v for v, _ in have]
        out.append(mean(votes) if votes else None)  # type: ignore[operator]
    return out[0], out[1], out[2], out[3]  # type: ignore[return-value]


def borrowed(fits: dict[str, Factors], family: str, free: dict[str, frozenset[int]] | None = None) -> Factors:
    """What a family the data file does not hold borrows: the typical family of its class (the other families of
    the class that were fitted), else of every fitted family; a prefill efficiency, when the class has none, from
    every family that has one. `free`: per family, the factors its points leave free (`unconstrained`)."""
    free = free or {}
    others = {f: x for f, x in fits.items() if f != family}
    same = [f for f in others if class_of(f) == class_of(family)] or list(others)
    x = typical([others[f] for f in same], [free.get(f, frozenset()) for f in same])
    if x[3] is None:
        x = (*x[:3], typical(list(others.values()), [free.get(f, frozenset()) for f in others])[3])
    return x


def family_fits(points: list[Point]) -> dict[str, Factors]:
    """Each family's own fit on its points."""
    return {f: fit(pts) for f, pts in _by_family(points).items()}


def family_free(points: list[Point], fits: dict[str, Factors]) -> dict[str, frozenset[int]]:
    """Each family's factors its own points leave free (`unconstrained`)."""
    return {f: unconstrained(pts, fits[f]) for f, pts in _by_family(points).items()}


def _by_family(points: list[Point]) -> dict[str, list[Point]]:
    fams: dict[str, list[Point]] = {}
    for p in points:
        fams.setdefault(family_of(p.m.device), []).append(p)
    return fams


@dataclass
class FamilyResult:
    family: str
    devices: list[str]
    n_decode: int
    n_prefill: int
    mem_eff: float
    comp_eff: float
    overhead_s: float
    prefill_eff: float | None  # None: no prefill points, the decode compute efficiency applies
    errors: dict[str, list[float]]  # kind -> signed relative errors, in-sample
    loo_errors: dict[str, list[float]]  # kind -> signed relative errors, leave-one-out
    default_errors: dict[str, list[float]]  # with the spec's default factors (0.75, 0.5, 2 us)
    lodo_errors: dict[str, list[float]] = field(default_factory=dict)  # each device predicted by a fit without it
    lofo_errors: dict[str, list[float]] = field(default_factory=dict)  # the family predicted by the other families' fit
    free: frozenset[int] = frozenset()  # factors its points leave free (unconstrained): no vote in a typical family


def _err(p: Point, x: tuple) -> float:
    return p.measured_s / p.predict_s(*x) - 1.0  # relative error of predicted tokens/s


def calibrate(points: list[Point] | None = None) -> tuple[list[FamilyResult], list[str]]:
    """Each family's fitted factors and its errors: in-sample, leave-one-out (a point), leave-one-device-out (a
    device predicted by its family's fit without it, or as a new family when it is the family's only one) and
    leave-one-family-out (the family predicted by the typical family of its class, `borrowed`): the last two say
    how far to trust a prediction for a device, or a kind of device, the data file does not hold."""
    skipped: list[str] = []
    if points is None:
        points, skipped = build_points()
    results = []
    fits = family_fits(points)
    free = family_free(points, fits)
    by_family = _by_family(points)
    for fam in FAMILIES:
        pts = by_family.get(fam, [])
        if not pts:
            continue
        x = fits[fam]  # the family's own fit (family_fits above)
        errs: dict[str, list[float]] = {"decode": [], "prefill": []}
        loo: dict[str, list[float]] = {"decode": [], "prefill": []}
        dflt: dict[str, list[float]] = {"decode": [], "prefill": []}
        lodo: dict[str, list[float]] = {"decode": [], "prefill": []}
        lofo: dict[str, list[float]] = {"decode": [], "prefill": []}
        for i, p in enumerate(pts):
            errs[p.kind].append(_err(p, x))
            dflt[p.kind].append(_err(p, (0.75, 0.5, 2e-6)))
            rest = pts[:i] + pts[i + 1:]
            if rest:
                loo[p.kind].append(_err(p, fit(rest)))
        devices = sorted({p.m.device for p in pts})
        if len(fits) > 1:
            xf = borrowed(fits, fam, free)  # the family's own fit never enters
            for p in pts:
                lofo[p.kind].append(_err(p, xf))
            for d in devices:
                rest = [p for p in pts if p.m.device != d]
                xd = fit(rest) if rest else xf  # a family's only device: what a new family borrows
                if xd[3] is None:
                    xd = (*xd[:3], xf[3])
                for p in pts:
                    if p.m.device == d:
                        lodo[p.kind].append(_err(p, xd))
        results.append(FamilyResult(fam, devices, len(errs["decode"]), len(errs["prefill"]), *x, errs, loo, dflt,
                                    lodo, lofo, free[fam]))
    return results, skipped


def _p90(a: list[float]) -> float:
    s = sorted(a)
    return s[min(len(s) - 1, max(0, math.ceil(0.9 * len(s)) - 1))]


def _mp(xs: list[float]) -> str:
    """Median / p90 of absolute relative errors, in percent."""
    if not xs:
        return "-"
    a = [abs(v) for v in xs]
    return f"{100 * statistics.median(a):.0f}% / {100 * _p90(a):.0f}%"


def generalisation_table(results: list[FamilyResult]) -> str:
    """In-sample, leave-one-device-out and leave-one-family-out errors per family and over all of them."""
    lines = ["| family | decode in-sample | decode leave-one-device-out | decode leave-one-family-out | "
             "prefill in-sample | prefill leave-one-device-out | prefill leave-one-family-out |",
             "|---|---|---|---|---|---|---|"]
    alls: dict[str, list[float]] = {}
    for r in results:
        row = []
        for kind in ("decode", "prefill"):
            for name, src in (("in", r.errors), ("lodo", r.lodo_errors), ("lofo", r.lofo_errors)):
                xs = src.get(kind, [])
                alls.setdefault(f"{kind}-{name}", []).extend(xs)
                row.append(_mp(xs))
        lines.append(f"| {r.family} | " + " | ".join(row) + " |")
    lines.append("| **all** | " + " | ".join(_mp(alls.get(f"{k}-{n}", [])) for k in ("decode", "prefill")
                                          for n in ("in", "lodo", "lofo")) + " |")

    def fam_median(kind: str, src: str) -> str:
        meds = [statistics.median(abs(v) for v in xs) for r in results if (xs := getattr(r, src).get(kind, []))]
        return f"{100 * statistics.median(meds):.0f}%" if meds else "-"

    lines.append("| **median of the families' medians** | " + " | ".join(
        fam_median(k, n) for k in ("decode", "prefill") for n in ("errors", "lodo_errors", "lofo_errors")) + " |")
    return "\n".join(lines)


def _stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    a = [abs(v) for v in xs]
    return f"{100 * statistics.median(a):.0f}% / {100 * max(a):.0f}%"


def markdown_report(results: list[FamilyResult], skipped: list[str], n_records: int) -> str:
    lines = [
        "| family | devices | points (decode + prefill) | fitted DRAM eff. | fitted compute eff. (decode / prefill) | "
        "per-block cost | decode error, median / worst | prefill error, median / worst | leave-one-out decode | "
        "leave-one-out prefill | decode error with defaults |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.family} | {', '.join(r.devices)} | {r.n_decode} + {r.n_prefill} | {r.mem_eff:.2f} | {r.comp_eff:.3f} / "
            f"{'-' if r.prefill_eff is None else f'{r.prefill_eff:.3f}'} | "
            f"{r.overhead_s * 1e6:.1f} us | {_stat(r.errors['decode'])} | {_stat(r.errors['prefill'])} | "
            f"{_stat(r.loo_errors['decode'])} | {_stat(r.loo_errors['prefill'])} | {_stat(r.default_errors['decode'])} |")
    used = sum(r.n_decode + r.n_prefill for r in results)
    lines += ["", f"{n_records} published records, {used} points used (a record may give a decode and a prefill point).",
              "", "How far to trust a prediction for a device, or a kind of device, the file does not hold: the error "
              "(median / p90 of |predicted / measured tokens/s - 1|) in-sample, with each device left out of its "
              "family's fit (a family's only device: predicted as a new family is), and with the whole family left out "
              "(predicted by the typical family of its class: the mean of the class's other families' fits, each family "
              "one vote; a class with no other family borrows from every family). The **all** row pools every point "
              "(the Rockchip family holds half of them); the last row gives each family one vote.", "",
              generalisation_table(results)]
    if skipped:
        lines += ["", "Records not used:", *[f"- {s}" for s in sorted(set(skipped))]]
    return "\n".join(lines)


def factors_table(results: list[FamilyResult]) -> dict:
    """The fitted factors per family and, per class, what a family the file does not hold borrows."""
    fits = {r.family: (r.mem_eff, r.comp_eff, r.overhead_s, r.prefill_eff) for r in results}

    def row(x: Factors, **extra: object) -> dict:
        return {"dram_efficiency": round(x[0], 4), "compute_efficiency": round(x[1], 4),
                "prefill_compute_efficiency": None if x[3] is None else round(x[3], 4), "op_overhead_s": float(f"{x[2]:.3g}"),
                **extra}

    def path(devices: list[str]) -> dict:
        """The precision path the family's presets state (activations' precision, 4-bit weights expanded), where
        they agree: not fitted, but part of how the fitted factors were read."""
        seen = set()
        for d in devices:
            s = load_system(d)
            dt = s.die_type(s.die_names[0])
            seen.add((dt.activation_precision, tuple(dt.weight_only)))
        if len(seen) != 1:
            return {}
        act, wo = seen.pop()
        return {"activation_precision": act, "weight_only": list(wo)}

    def engines(family: str) -> list[str]:
        return sorted({m.engine.lower() for m in load_measurements() if family_of(m.device) == family})

    fams = {r.family: row(fits[r.family], **path(r.devices), devices=r.devices, engines=engines(r.family),
                          records=r.n_decode + r.n_prefill) for r in results}
    classes = {}
    for cls in CLASSES:
        members = [f for f in fits if class_of(f) == cls]
        if members:
            classes[cls] = row(borrowed({f: fits[f] for f in members}, f"(new {cls} family)",
                                        {r.family: r.free for r in results}),
                               **path([d for r in results if r.family in members for d in r.devices]), families=members)
    return {"families": fams, "classes": classes}


def write_factors_table(results: list[FamilyResult], path: Path | None = None) -> str:
    """Write hw/fitted_factors.yaml (or `path`), the table quick devices borrow from; returns its path."""
    path = path or factors_path()
    head = ("# Written by `chipfuse calibrate --apply` from sim/data/measurements.yaml: each device family's fitted "
            "efficiency factors,\n# and per class (CPU, GPU, NPU) what a family the file does not hold borrows (the "
            "typical family of the class).\n# A quick device (hw/quick.py) names a family or a class to borrow them. "
            "Do not edit by hand: rerun the command.\n")
    path.write_text(head + yaml.safe_dump(factors_table(results), sort_keys=False, width=120))
    return str(path)


def apply_to_presets(results: list[FamilyResult], preset_dir: Path | None = None,
                     table: Path | None = None) -> list[str]:
    """Write each family's fitted factors into its device presets (text edits keep comments) and the factors table
    (hw/fitted_factors.yaml); a quick-device preset holds no factors of its own and reads them from that table.
    `preset_dir`, `table`: where those live (default: the package's own)."""
    from ..hw.load import PRESET_DIR

    folder = preset_dir or Path(str(PRESET_DIR))
    write_factors_table(results, table)
    texts = {p.stem: p.read_text() for p in sorted(folder.glob("*.yaml"))}  # read once: _follow looks at them all
    changed = []
    for r in results:
        for device in r.devices:
            if is_quick(yaml.safe_load(texts[device])):
                changed.append(device)
                continue
            path = folder / f"{device}.yaml"
            text = texts[device]
            system = load_system(path)
            dt_name = system.dies[0].type
            own = system.die_types[dt_name].memory.own is not None
            note = f"fitted by `chipfuse calibrate --apply` on sim/data/measurements.yaml ({r.family} family)"
            # DRAM efficiency: the die's own DRAM, or the host's it shares
            if own:
                text = re.sub(r"(\n\s+own: \{[^}\n]*?efficiency: )[0-9.]+", rf"\g<1>{r.mem_eff:.3f}", text, count=1)
            else:
                text = re.sub(r"(\n  dram: \{[^}\n]*?efficiency: )[0-9.]+", rf"\g<1>{r.mem_eff:.3f}", text, count=1)
            text = re.sub(r"(\n(\s+)compute_efficiency: )[0-9.]+", rf"\g<1>{r.comp_eff:.3f}", text, count=1)
            text = re.sub(r"\n\s+prefill_compute_efficiency: [0-9.]+", "", text, count=1)
            if r.prefill_eff is not None:
                text = re.sub(r"(\n(\s+)compute_efficiency: [0-9.]+)",
                              rf"\g<1>\n\g<2>prefill_compute_efficiency: {r.prefill_eff:.3f}", text, count=1)
            if re.search(r"\n\s+op_overhead_s: ", text):
                text = re.sub(r"(\n\s+op_overhead_s: )[0-9.eE+-]+", rf"\g<1>{r.overhead_s:.3g}", text, count=1)
            else:
                text = re.sub(r"(\n(\s+)compute_efficiency: [0-9.]+\n)", rf"\g<1>\g<2>op_overhead_s: {r.overhead_s:.3g}\n",
                              text, count=1)
            src_ce = f"die_types.{dt_name}.compute_efficiency"
            src_oh = f"die_types.{dt_name}.op_overhead_s"
            text = re.sub(rf"(\n  {re.escape(src_ce)}: ).*", rf'\g<1>"{note}"', text, count=1)
            if f"  {src_oh}:" not in text:
                text = re.sub(rf"(\n  {re.escape(src_ce)}: .*)", rf'\g<1>\n  {src_oh}: "{note}"', text, count=1)
            src_pe = f"die_types.{dt_name}.prefill_compute_efficiency"
            text = re.sub(rf"\n  {re.escape(src_pe)}: .*", "", text, count=1)
            if r.prefill_eff is not None:
                text = re.sub(rf"(\n  {re.escape(src_ce)}: .*)", rf'\g<1>\n  {src_pe}: "{note} on its prefill points"',
                              text, count=1)
            mem_note = "(DRAM efficiency " + note + ")"
            text = text.replace("efficiency 0.75 is a placeholder for the calibration fit", "").replace(";  (", "; (")
            if mem_note not in text:
                key = f"die_types.{dt_name}.memory" if own else "host.dram"

                def noted(mm: re.Match[str], mem_note: str = mem_note) -> str:
                    return (f'{mm.group(1)}{mm.group(2).rstrip(chr(34))} {mem_note}"\n'
                            if mm.group(1).endswith('"') else f'{mm.group(1)}{mm.group(2)} {mem_note}\n')

                text = re.sub(rf'(\n  {re.escape(key)}: "?)([^\n]*?)("?)\n', noted, text, count=1)
            path.write_text(text)
            texts[device] = text
            load_system(path)  # still valid
            changed.append(device)
            changed += _follow(device, r, folder, texts)
    return changed


def _follow(device: str, r: FamilyResult, folder: Path, texts: dict[str, str]) -> list[str]:
    """Presets built from a family's device (a cluster of Raspberry Pi 5 boards) that say their factors are "as
    fitted for the <device> preset" take the new values too (`texts`: every preset in `folder`, by name)."""
    out = []
    for name, text in texts.items():
        if name == device or f"as fitted for the {device} preset" not in text:
            continue
        text = re.sub(r"((?:dram|own): \{[^}\n]*?efficiency: )[0-9.]+", rf"\g<1>{r.mem_eff:.3f}", text)
        text = re.sub(r"(\n\s+compute_efficiency: )[0-9.]+", rf"\g<1>{r.comp_eff:.3f}", text)
        if r.prefill_eff is not None:
            text = re.sub(r"(\n\s+prefill_compute_efficiency: )[0-9.]+", rf"\g<1>{r.prefill_eff:.3f}", text)
        text = re.sub(r"(\n\s+op_overhead_s: )[0-9.eE+-]+", rf"\g<1>{r.overhead_s:.3g}", text)
        path = folder / f"{name}.yaml"
        path.write_text(text)
        texts[name] = text
        load_system(path)
        out.append(name)
    return out
