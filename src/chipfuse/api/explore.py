"""`explore`: which system should we build? A design space swept through the fast numeric core, the target
applied, the Pareto fronts (cost, power and speed, and accuracy where a quantize report gives it) per model,
the cheapest design that meets the target for every model, and why the rest fail (`chipfuse explore`).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ChipfuseError, SpecError
from .progress import Progress, status_of

OBJECTIVES = (("cost_usd", "min"), ("power_w", "min"), ("decode_tokens_per_s", "max"))
PLOT_FORMATS = ("png", "svg")


@dataclass(frozen=True)
class Point:
    """One configuration: the design, the model and precision that run on it, and the predicted figures."""

    model: str
    precision: str
    split: str  # pipeline or tensor
    design: str
    soc: str
    die_type: str
    dies: int
    link: str
    memory: str
    substrate: str
    decode_tokens_per_s: float
    ttft_s: float
    power_w: float
    peak_power_w: float
    j_per_token: float
    cost_usd: float
    fanless: bool
    accuracy: float | None = None  # the quantize report's figure for the precision, where given


@dataclass(frozen=True)
class Covering:
    """A design that meets the target for every model (each at its best precision)."""

    design: str
    cost_usd: float
    slowest_decode_tokens_per_s: float
    highest_power_w: float
    precisions: tuple[tuple[str, str, str], ...]  # (model, precision, split)


@dataclass(frozen=True)
class Comparison:
    """The fastest configuration meeting the target for one value of the compared options (None: none meets)."""

    option: str  # e.g. "link=pcie-chain" or "soc=a55-4k, memory=shared-3g"
    best: Point | None
    meeting: int
    running: int


@dataclass(frozen=True)
class DevelopmentPath:
    """One way to cover every model explored, in development cost and months (hw/cost.py's figures)."""

    what: str
    tapeouts: int
    package_respins: int
    usd: tuple[float, float]
    months_first: float  # until the first product
    months_next: float  # for each further model size
    designs: tuple[str, ...]


@dataclass(frozen=True)
class ExploreResult:
    space: str
    target: str
    configurations: int
    running: int  # built, fitting and predicted
    meeting: int
    seconds: float
    workers: str
    front: tuple[Point, ...]  # per model, the Pareto front of the configurations meeting the target
    cheapest: tuple[Point, ...]  # per model, the cheapest configuration meeting the target
    covering: tuple[Covering, ...]  # the cheapest designs that meet the target for every model
    rejected: tuple[tuple[str, int], ...]  # (reason, configurations), commonest first
    closest: str | None  # when nothing meets the target: the nearest point and what it misses by
    files: tuple[str, ...]
    compared: tuple[Comparison, ...] = ()  # with `compare`: the best per value of those options
    development: tuple[DevelopmentPath, ...] = ()  # with several models: one SoC per size, or one SoC + chiplets

    def to_json(self) -> dict:
        return asdict(self)


class TargetError(ChipfuseError):
    """No configuration meets the target; the message names the closest one and what it misses by."""

    def __init__(self, message: str, result: ExploreResult):
        super().__init__(message)
        self.result = result


def explore(space: str | Path, models: Sequence[str] = (), *, target: str | None = None,
            out_dir: str | Path | None = None, workers: int | None = None, ray: str | None = None,
            accuracy: str | Path | None = None, plots: bool = True, progress: Progress | None = None,
            require_met: bool = True, compare: str | Sequence[str] | None = None) -> ExploreResult:
    """Sweep `space` (a space YAML file) for `models` (catalogue names or config.json paths, added to the
    space's own), keep the configurations meeting `target` ("decode>=10,power<=10"), and write
    points.csv (every configuration, with why it was rejected), pareto.csv, the fronts' plots and the
    front's designs as system files into `out_dir`. With `require_met`, a target nobody meets raises
    TargetError naming the closest configuration (its `.result` holds the rest). `compare` (options among
    soc, die_type, dies, link, memory, substrate, precision, split, model) adds the fastest configuration
    meeting the target for each value of those options, and a plot of them."""
    from ..explore.space import load_space
    from ..explore.sweep import meets, pareto, reasons, sweep
    from ..explore.target import parse_target
    from ..frontends import load_model_config

    status = status_of(progress)
    bounds = parse_target(target)
    keys = _compare_keys(compare)
    sp = load_space(space)
    names = list(dict.fromkeys([*sp.models, *models]))
    if not names:
        raise SpecError(f"{space}: no model to explore for: give --models (catalogue names or config.json paths) "
                        "or a `models:` list in the space file")
    cfgs = [(n, load_model_config(n)) for n in names]
    acc = _accuracy(accuracy, sp.precisions) if accuracy else None
    out = Path(out_dir) if out_dir else None
    if out is not None:
        _check_out_dir(out)
    from ..explore.sweep import count

    total = count(sp, len(cfgs))
    status.start(total, f"exploring {total:,} configurations")
    t0 = time.perf_counter()
    last = [0]

    def tick(done: int, _total: int) -> None:
        status.advance(done - last[0])
        last[0] = done

    table = sweep(sp, cfgs, workers=workers, ray_address=ray, progress=tick)
    seconds = time.perf_counter() - t0
    ok = meets(table, bounds)
    running = int((table.problem == "").sum())
    objectives = list(OBJECTIVES)
    acc_col = None
    if acc is not None:
        acc_model, acc_by = acc
        measured = {m for m, (n, c) in enumerate(cfgs) if acc_model in (n, c.name)}
        if not measured:
            raise SpecError(f"{accuracy}: measured {acc_model}, which is none of the models explored "
                            f"({', '.join(names)}); its accuracy says nothing about theirs")
        acc_col = np.array([acc_by.get(table.precisions[p], np.nan) if m in measured else np.nan
                            for m, p in zip(table.model, table.precision)])
        table.values["accuracy"] = acc_col
        objectives.append(("accuracy", "max"))
    front_idx = pareto(table, ok, objectives) if ok.any() else np.zeros(0, dtype=np.int64)
    front = tuple(_point(table, int(i), sp.fanless_w) for i in front_idx)
    cheapest = []
    for m in range(len(table.models)):
        idx = np.flatnonzero(ok & (table.model == m))
        if len(idx):
            cheapest.append(_point(table, int(idx[np.lexsort((-table.values["decode_tokens_per_s"][idx],
                                                               table.values["cost_usd"][idx]))[0]]), sp.fanless_w))
    result = ExploreResult(
        space=sp.name, target=",".join(str(b) for b in bounds) or "none", configurations=len(table), running=running,
        meeting=int(ok.sum()), seconds=seconds, workers=f"Ray at {ray}" if ray else f"{_workers(workers)} process(es)",
        front=front, cheapest=tuple(cheapest), covering=_covering(table, ok), rejected=tuple(reasons(table, bounds)),
        closest=None, files=(), compared=_compare(table, ok, keys, sp.fanless_w) if keys else (),
        development=_development(table, ok) if len(cfgs) > 1 else ())
    if not ok.any():
        result = _replace(result, closest=_closest_words(table, bounds, running))
    files: list[str] = []
    if out is not None:
        status.describe("writing the tables and plots")
        files += _write_tables(out, table, bounds, front_idx, acc_col)
        if plots and len(front_idx):
            files += plot_fronts(table, ok, front_idx, out / "pareto", result.target)
            files += _best_design_plots(sp, result, cfgs, out)
        if plots and result.compared:
            files += plot_comparison(result.compared, out / "compare", result.target)
        if len(front_idx):
            files += _write_systems(sp, table, front_idx, out / "systems")
        (out / "summary.json").write_text(json.dumps(_replace(result, files=tuple(files)).to_json(), indent=1),
                                          encoding="utf-8")
        files.append(str(out / "summary.json"))
    result = _replace(result, files=tuple(files))
    if result.closest is not None and require_met:
        raise TargetError(result.closest, result)
    return result


def _workers(workers: int | None) -> int:
    import os

    return workers or os.cpu_count() or 1


COMPARABLE = ("soc", "die_type", "dies", "link", "memory", "substrate", "precision", "split", "model")


def _compare_keys(compare: str | Sequence[str] | None) -> list[str]:
    if not compare:
        return []
    keys = [k.strip() for k in (compare.split(",") if isinstance(compare, str) else compare) if k.strip()]
    import difflib

    for k in keys:
        if k not in COMPARABLE:
            close = difflib.get_close_matches(k, COMPARABLE, n=1)
            raise SpecError(f"--compare {k!r}: not an option" + (f"; did you mean {close[0]}?" if close else "")
                            + f" (options: {', '.join(COMPARABLE)})")
    return keys


def _option_value(t, i: int, key: str) -> str:
    d = t.designs[t.design[i]]
    if key == "precision":
        return t.precisions[t.precision[i]]
    if key == "split":
        return t.splits[t.split[i]]
    if key == "model":
        return t.models[t.model[i]]
    v = getattr(d, key)
    return "none" if v is None else str(v)


def _compare(t, ok: np.ndarray, keys: list[str], fanless_w: float) -> tuple[Comparison, ...]:
    """Per value of `keys`: the fastest configuration meeting the target (cheapest on a tie), in the space's order."""
    groups: dict[str, list[int]] = {}
    running = t.problem == ""
    for i in range(len(t)):
        label = ", ".join(f"{k}={_option_value(t, i, k)}" for k in keys)
        groups.setdefault(label, []).append(i)
    out = []
    for label, idx_list in groups.items():
        idx = np.array(idx_list)
        good = idx[ok[idx]]
        best = None
        if len(good):
            j = good[np.lexsort((t.values["cost_usd"][good], -t.values["decode_tokens_per_s"][good]))[0]]
            best = _point(t, int(j), fanless_w)
        out.append(Comparison(label, best, int(len(good)), int(running[idx].sum())))
    return tuple(out)


def _development(t, ok: np.ndarray) -> tuple[DevelopmentPath, ...]:
    """The talk's comparison for the models explored: a new SoC for each model size, against one SoC and one NPU
    die put in a package (or on a board) per size. The chiplet path takes the SoC and die type that cover every
    model at the least summed bill of materials (each model on its cheapest design of that pair); each further
    package is a package respin, a further board a PCB respin."""
    from ..hw import cost as c

    n_models = len(t.models)
    best: dict[tuple[str, str], dict[int, int]] = {}
    for i in np.flatnonzero(ok):
        d = t.designs[t.design[i]]
        row = best.setdefault((d.soc, d.die_type), {})
        m = int(t.model[i])
        j = row.get(m)
        if j is None or t.values["cost_usd"][i] < t.values["cost_usd"][j]:
            row[m] = int(i)
    full = {k: v for k, v in best.items() if len(v) == n_models}
    lo, hi = c.SOC_TAPEOUT_USD
    mono = DevelopmentPath(f"a new SoC for each of the {n_models} model sizes", n_models, 0,
                           (n_models * lo, n_models * hi), c.SOC_MONTHS, c.SOC_MONTHS, ())
    if not full:
        return (mono,)
    (soc, die), row = min(full.items(), key=lambda kv: sum(t.values["cost_usd"][j] for j in kv[1].values()))
    ds = {t.designs[t.design[j]] for j in row.values()}
    packages = {(d.dies, d.link, d.memory, d.substrate) for d in ds if d.substrate}
    boards = {(d.dies, d.link, d.memory) for d in ds if not d.substrate}
    respins = max(0, len(packages) - 1)
    pcbs = max(0, len(boards) - (0 if packages else 1))
    usd = (2 * lo + respins * c.PACKAGE_RESPIN_USD + pcbs * c.PCB_RESPIN_USD,
           2 * hi + respins * c.PACKAGE_RESPIN_USD + pcbs * c.PCB_RESPIN_USD)
    nxt = c.PACKAGE_RESPIN_MONTHS if respins else c.PCB_RESPIN_MONTHS
    chiplet = DevelopmentPath(f"one SoC ({soc}) and one NPU die ({die}), {len(ds)} package/board variant(s)", 2,
                              respins, usd, c.SOC_MONTHS, nxt,
                              tuple(sorted(t.designs[t.design[j]].label + f" for {t.models[m]}"
                                           for m, j in row.items())))
    return (mono, chiplet)


def _replace(r: ExploreResult, **kw) -> ExploreResult:
    return ExploreResult(**{**r.__dict__, **kw})


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out}: exists and is not a folder; name a folder for the tables and plots")
    if not out.exists() and not out.parent.exists():
        raise SpecError(f"--out {out}: its parent folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)


def _point(t, i: int, fanless_w: float) -> Point:
    d = t.designs[t.design[i]]
    v = {k: float(a[i]) for k, a in t.values.items()}
    acc = v.get("accuracy")
    return Point(model=t.models[t.model[i]], precision=t.precisions[t.precision[i]], split=t.splits[t.split[i]],
                 design=d.label, soc=d.soc,
                 die_type=d.die_type, dies=d.dies, link=d.link, memory=d.memory, substrate=d.substrate or "",
                 decode_tokens_per_s=v["decode_tokens_per_s"], ttft_s=v["ttft_s"], power_w=v["power_w"],
                 peak_power_w=v["peak_power_w"], j_per_token=v["j_per_token"], cost_usd=v["cost_usd"],
                 fanless=v["power_w"] <= fanless_w, accuracy=None if acc is None or acc != acc else acc)


def _covering(t, ok: np.ndarray, top: int = 5) -> tuple[Covering, ...]:
    """Designs on which every model meets the target at some precision; cheapest first."""
    n_m = len(t.models)
    best: dict[int, dict[int, int]] = {}
    for i in np.flatnonzero(ok):
        d, m = int(t.design[i]), int(t.model[i])
        row = best.setdefault(d, {})
        j = row.get(m)
        if j is None or t.values["decode_tokens_per_s"][i] > t.values["decode_tokens_per_s"][j]:
            row[m] = int(i)
    full = [(d, row) for d, row in best.items() if len(row) == n_m]
    out = []
    for d, row in full:
        idx = list(row.values())
        out.append(Covering(design=t.designs[d].label, cost_usd=float(t.values["cost_usd"][idx[0]]),
                            slowest_decode_tokens_per_s=float(min(t.values["decode_tokens_per_s"][j] for j in idx)),
                            highest_power_w=float(max(t.values["power_w"][j] for j in idx)),
                            precisions=tuple((t.models[m], t.precisions[t.precision[j]], t.splits[t.split[j]])
                                             for m, j in sorted(row.items()))))
    out.sort(key=lambda c: (c.cost_usd, -c.slowest_decode_tokens_per_s))
    return tuple(out[:top])


def _closest_words(t, bounds, running: int) -> str:
    from ..explore.sweep import closest, reasons

    if not bounds:
        return "nothing in the space runs: " + "; ".join(f"{why} ({n:,})" for why, n in reasons(t, bounds))
    i = closest(t, bounds)
    target = ",".join(str(b) for b in bounds)
    if i is None:
        top = "; ".join(f"{why} ({n:,} configurations)" for why, n in reasons(t, bounds, 4))
        return (f"no configuration meets {target}: none of the {len(t):,} can even be built and fit its model "
                f"({top})")
    d = t.designs[t.design[i]]
    parts = []
    for b in bounds:
        x = float(t.values[b.field][i])
        if b.holds(x):
            parts.append(f"{b.metric} {x:.4g} {b.unit} (meets {b})")
        else:
            parts.append(f"{b.metric} {x:.4g} {b.unit} (misses {b} by {abs(x - b.value):.4g} {b.unit}, "
                         f"{b.shortfall(x):.0%})")
    return (f"no configuration meets {target} ({running:,} of {len(t):,} run). The closest: {d.label}, "
            f"{t.models[t.model[i]]} at {t.precisions[t.precision[i]]} ({t.splits[t.split[i]]} split): "
            + "; ".join(parts)
            + ". Loosen the target or add faster or cheaper options to the space.")


def _accuracy(path: str | Path, precisions: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The quantize report's model and, per precision of the space, its fidelity to FP32 (higher is better):
    the negated KL divergence, the best method's where the report measured several."""
    from ..io import read_text_bounded
    from ..quant.formats import get_format

    text = read_text_bounded(path, "quantize report", 16 << 20, error=SpecError)
    try:
        rep = json.loads(text)
        model = str(rep["model"])
        got: dict[str, float] = {}
        for r in rep["rows"]:
            name, kl = str(r["format"]), float(r["kl"])
            got[name] = max(got.get(name, -np.inf), -kl)
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"{path}: not a `chipfuse quantize --json` report (a `model` and `rows` with `format` and "
                        "`kl`)") from None
    out = {p: got[get_format(p).name] for p in precisions if get_format(p).name in got}
    if not out:
        raise SpecError(f"{path}: gives none of the space's precisions ({', '.join(precisions)}); it has "
                        f"{', '.join(got)}")
    return model, out


COLUMNS = ("model", "precision", "split", "soc", "die_type", "dies", "link", "memory", "substrate", "decode_tokens_per_s",
           "ttft_s", "power_w", "peak_power_w", "j_per_token", "cost_usd", "accuracy", "meets", "pareto", "rejected")


def _write_tables(out: Path, t, bounds, front_idx: np.ndarray, acc_col) -> list[str]:
    from ..explore.sweep import misses
    from ..io import write_atomic

    on_front = np.zeros(len(t), dtype=bool)
    on_front[front_idx] = True

    def rows(idx):
        for i in idx:
            d = t.designs[t.design[i]]
            why = misses(t, int(i), bounds)
            yield (t.models[t.model[i]], t.precisions[t.precision[i]], t.splits[t.split[i]], d.soc, d.die_type, d.dies, d.link, d.memory,
                   d.substrate or "", *(_num(t.values[k][i]) for k in ("decode_tokens_per_s", "ttft_s", "power_w",
                                                                         "peak_power_w", "j_per_token", "cost_usd")),
                   _num(acc_col[i]) if acc_col is not None else "", "yes" if not why else "no",
                   "yes" if on_front[i] else "no", why)

    def writer(idx):
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                w.writerows(rows(idx))
        return write

    write_atomic(out / "points.csv", writer(range(len(t))))
    order = sorted(front_idx, key=lambda i: (t.model[i], t.values["cost_usd"][i]))
    write_atomic(out / "pareto.csv", writer(order))
    return [str(out / "points.csv"), str(out / "pareto.csv")]


def _num(x: float) -> str:
    return "" if x != x else f"{x:.6g}"


def _save(fig, stem: str | Path) -> list[str]:
    """The figure as PNG and SVG beside each other, each written atomically; their paths."""
    from ..io import write_atomic

    paths = []
    for fmt in PLOT_FORMATS:
        p = Path(f"{stem}.{fmt}")
        write_atomic(p, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt))
        paths.append(str(p))
    return paths


def plot_fronts(t, ok: np.ndarray, front_idx: np.ndarray, stem: str | Path, target: str) -> list[str]:
    """Cost against tokens/s and power against tokens/s: every configuration meeting the target (grey), and per
    model the front of that pair (the cheapest, or least power, for each speed: a step line) over the points
    of the three-objective front (dots). PNG and SVG; returns the paths."""
    from matplotlib.figure import Figure

    from ..explore.sweep import pareto

    fig = Figure(figsize=(12, 4.8), dpi=110)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    x_all = t.values["decode_tokens_per_s"]
    for k, (field, label) in enumerate((("cost_usd", "bill of materials (USD)"), ("power_w", "average power (W)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.scatter(x_all[ok], t.values[field][ok], s=3, color="0.82", rasterized=True, label="meets the target")
        two = pareto(t, ok, [(field, "min"), ("decode_tokens_per_s", "max")])
        for m in range(len(t.models)):
            c = colours[m % len(colours)]
            idx = front_idx[t.model[front_idx] == m]
            if len(idx):
                ax.scatter(x_all[idx], t.values[field][idx], s=10, color=c, alpha=0.5)
            line = two[t.model[two] == m]
            if len(line):
                line = line[np.argsort(x_all[line])]
                ax.step(x_all[line], t.values[field][line], where="pre", marker="o", ms=4, lw=1.3, color=c,
                        label=f"{t.models[m]}")
        ax.set_xscale("log")
        ax.set_xlabel("decode tokens/s (one stream)")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} against speed: each model's front", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"Pareto fronts (target {target}); dots: the front over cost, power and speed together", fontsize=11)
    fig.tight_layout()
    return _save(fig, stem)


def plot_comparison(rows: Sequence[Comparison], stem: str | Path, target: str) -> list[str]:
    """Per compared option: the fastest configuration meeting the target (bars, tokens/s), its bill of materials
    and power written on it. PNG and SVG; returns the paths."""
    from matplotlib.figure import Figure


    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 3), 4.4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(rows)))
    rates = [r.best.decode_tokens_per_s if r.best else 0.0 for r in rows]
    ax.bar(xs, rates, color=["tab:blue" if r.best else "0.8" for r in rows])
    for x, r in zip(xs, rows):
        text = (f"${r.best.cost_usd:.0f}\n{r.best.power_w:.1f} W\n{r.best.dies}x {r.best.split}" if r.best
                else "none\nmeets")
        ax.annotate(text, (x, rates[x]), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(xs, [r.option.replace(", ", "\n") for r in rows], fontsize=7, rotation=0)
    goal = "" if target == "none" else f" meeting {target}"
    ax.set_ylabel(f"decode tokens/s (the fastest{' meeting the target' if goal else ''})")
    ax.set_ylim(0, max(rates + [1.0]) * 1.3)
    ax.set_title(f"The fastest configuration{goal}, per option; its bill of materials, power and split above it",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, stem)


def _best_design_plots(sp, result: ExploreResult, cfgs, out: Path) -> list[str]:
    """The cheapest point meeting the target for the model that needs the most dies (the last such model),
    planned in full: each die's roofline with the model's ops on it, and memory per die."""
    from ..compile.compiler import compile_plan
    from ..explore.space import Design, design_system
    from .explain import plot_memory, plot_roofline

    if not result.cheapest:
        return []
    p = max(reversed(result.cheapest), key=lambda x: x.dies)  # the most dies: the most to see
    d = Design(p.soc, p.die_type, p.dies, p.link, p.memory, p.substrate or None)
    cfg = dict(cfgs)[p.model]
    wl = sp.workload
    plan = compile_plan(cfg, design_system(sp, d), p.precision, context=wl.context, prompt_tokens=wl.prompt_tokens,
                        batch=1, kv_precision=wl.kv_precision, split=p.split, output_tokens=wl.output_tokens)
    paths = []
    for fmt in PLOT_FORMATS:
        paths.append(str(plot_roofline(plan, out / f"roofline.{fmt}")))
        paths.append(str(plot_memory(plan, out / f"memory.{fmt}")))
    return paths


def _write_systems(sp, t, front_idx: np.ndarray, folder: Path) -> list[str]:
    """The front's designs as system files, so `chipfuse plan -s FILE` takes any of them further."""
    import yaml

    from ..explore.space import design_system
    from ..io import write_text_atomic

    folder.mkdir(exist_ok=True)
    paths = []
    for d in sorted({int(t.design[i]) for i in front_idx}):
        system = design_system(sp, t.designs[d])
        p = folder / f"{system.name}.yaml"
        write_text_atomic(p, yaml.safe_dump(system.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        paths.append(str(p))
    return paths


__all__ = ["explore", "ExploreResult", "Point", "Covering", "Comparison", "DevelopmentPath", "TargetError",
           "plot_fronts", "plot_comparison"]
