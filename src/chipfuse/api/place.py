"""`place`: several models over the dies of a system, for the best throughput (`chipfuse place`).

The compiler builds every way to run each model (compile/workload.py), the MILP picks the deployment
(compile/place.py), and this module turns the answer into a report and a placement record; when
the demands cannot all be met it says which, by how much, and what would meet them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ChipfuseError

MAX_EXTRA_DIES = 8  # how far "what would meet it" looks when adding dies


class DemandError(ChipfuseError):
    """A workload's demands cannot all be met on the system; the message says which and what would help."""

    def __init__(self, message: str, result: PlaceResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class DeploymentRow:
    model: str
    label: str
    rate: float
    unit: str


@dataclass(frozen=True)
class ModelRow:
    name: str
    unit: str
    demand: float
    served: float  # predicted items per second with this placement

    @property
    def satisfied(self) -> float:
        return self.served / self.demand


@dataclass(frozen=True)
class DieRow:
    die: str
    busy: float  # share of its time
    used_bytes: float
    memory_bytes: float


@dataclass(frozen=True)
class PlaceResult:
    workload: str
    system: str
    lam: float  # the share of every demand met at once (>= 1: all met)
    method: str  # milp | milp-time-limit | greedy
    bound: float
    solve_s: float
    options: int
    models: tuple[ModelRow, ...]
    deployments: tuple[DeploymentRow, ...]
    dies: tuple[DieRow, ...]
    links: tuple[tuple[str, str, float], ...]  # (from, to, busy share), the busy ones
    die_shares: tuple[tuple[str, str, float], ...]  # (die, model, share of the die's time)
    energy_j_per_item: tuple[tuple[str, float], ...]  # (model, dynamic joules per frame or token, its deployments'
    # mix); then power: static, at the demanded rates, at the served (full) rates, and the fanless limit
    static_w: float
    power_at_demand_w: float
    power_at_served_w: float
    fanless_w: float
    shortfall: str | None  # why the demands cannot all be met, and what would meet them (None: all met)
    placement: object  # plan.placement.Placement, the record `chipfuse run --workload` follows

    @property
    def met(self) -> bool:
        return self.shortfall is None

    @property
    def fanless(self) -> bool:
        """Average power at the demanded rates within the system's fanless limit."""
        return self.power_at_demand_w <= self.fanless_w

    def to_json(self) -> dict:
        d = asdict(self)
        d["placement"] = self.placement.model_dump(mode="json", by_alias=True)  # type: ignore[attr-defined]
        return d


def place(workload: str | Path, system: str | Path, *, time_limit_s: float = 10.0, explain: bool = True,
          require_met: bool = False) -> PlaceResult:
    """Place the models of `workload` (a YAML file) on `system` (a preset or file).

    With `require_met`, raise DemandError (its `.result` holds the best placement) when some demand
    cannot be met; else the result's `shortfall` says so."""
    from ..compile.place import solve
    from ..compile.workload import build_problem
    from ..frontends.workload import load_workload
    from ..hw.load import load_system

    w = load_workload(workload)
    sysm = load_system(system)
    p, models = build_problem(w, sysm)
    unplaceable = [w.models[m].name for m in range(len(w.models)) if not any(o.model == m for o in p.options)]
    if unplaceable:
        raise ChipfuseError(_no_option(unplaceable, w, sysm))
    sol = solve(p, time_limit_s)
    res = _result(w, sysm, p, models, sol)
    if sol.lam < 1.0 - 1e-9:
        text = _shortfall(w, sysm, p, models, sol, time_limit_s) if explain else _short_line(p, sol)
        res = PlaceResult(**{**res.__dict__, "shortfall": text})
        if require_met:
            raise DemandError(text, res)
    return res


def _result(w, sysm, p, models, sol) -> PlaceResult:
    from ..plan.placement import Deployment, ModelRecord, Piece, Placement

    used = [i for i, (x, r) in enumerate(zip(sol.x, sol.rate)) if x and r > 1e-9 * p.demand[p.options[i].model]]
    mem = {d: 0.0 for d in p.dies}
    shares: dict[tuple[str, str], float] = {}
    for i in used:
        o = p.options[i]
        for d, b in o.mem_bytes.items():
            mem[d] += b
        for d, sec in o.die_s.items():
            shares[(d, p.models[o.model])] = shares.get((d, p.models[o.model]), 0.0) + sec * float(sol.rate[i])
    deps = []
    for i in used:
        o = p.options[i]
        det = o.detail
        deps.append(Deployment(model=p.models[o.model], kind=det["kind"], label=o.label, dies=list(o.dies),
                               pieces=[Piece(die=a, start=s, end=e) for a, s, e in det.get("pieces", [])],
                               precision=det["precision"], format=det.get("format"), rate=float(sol.rate[i])))
    recs = []
    for k, lm in enumerate(models):
        dm = lm.demand
        recs.append(ModelRecord(name=dm.name, kind=dm.kind, source=lm.path,
                                frame=list(lm.cv.frame_shape) if lm.cv is not None else None, unit=dm.unit,
                                demand=p.demand[k], served=float(sol.served[k]),
                                fed_by=dm.fed_by.model if dm.fed_by else None,
                                per_item=dm.fed_by.per_item if dm.fed_by else None,
                                prompt_tokens=dm.prompt_tokens if lm.llm_config is not None else None,
                                output_tokens=dm.output_tokens if lm.llm_config is not None else None,
                                batch=dm.batch if lm.llm_config is not None else None))
    from ..sim.energy import static_w

    joules = []
    for k, name in enumerate(p.models):
        mine = [i for i in used if p.options[i].model == k]
        total = sum(float(sol.rate[i]) for i in mine)
        joules.append((name, sum(float(sol.rate[i]) * p.options[i].energy_j for i in mine) / total if total else 0.0))
    base = static_w(sysm)
    at_demand = base + sum(d * e for d, (_, e) in zip(p.demand, joules))
    at_served = base + sum(float(sol.rate[i]) * p.options[i].energy_j for i in used)
    placement = Placement(workload=w.name, system=sysm.model_dump(mode="json"), method=sol.method, lam=sol.lam,
                          bound=max(sol.bound, sol.lam), models=recs, deployments=deps)
    return PlaceResult(
        workload=w.name, system=sysm.name, lam=sol.lam, method=sol.method, bound=max(sol.bound, sol.lam),
        solve_s=sol.seconds, options=len(p.options),
        models=tuple(ModelRow(m, u, float(d), float(s)) for m, u, d, s in zip(p.models, p.units, p.demand, sol.served)),
        deployments=tuple(DeploymentRow(d.model, d.label, d.rate, p.units[p.models.index(d.model)]) for d in deps),
        dies=tuple(DieRow(d, float(sol.die_busy[d]), mem[d], float(m)) for d, m in zip(p.dies, p.memory_bytes)),
        links=tuple((a, b, float(v)) for (a, b), v in sorted(sol.link_busy.items()) if v > 1e-4),
        die_shares=tuple((d, m, v) for (d, m), v in sorted(shares.items())), energy_j_per_item=tuple(joules),
        static_w=base, power_at_demand_w=at_demand, power_at_served_w=at_served, fanless_w=sysm.fanless_w,
        shortfall=None, placement=placement)


def _short_line(p, sol) -> str:
    worst = min(range(len(p.models)), key=lambda m: sol.served[m] / p.demand[m])
    return (f"the demands cannot all be met: at most {100 * sol.lam:.0f}% of each at once; "
            f"{p.models[worst]} gets {sol.served[worst]:.3g} of {p.demand[worst]:.3g} {p.units[worst]}/s")


def _shortfall(w, sysm, p, models, sol, time_limit_s: float) -> str:
    """Which demands fall short, by how much, and what would meet them: another die, a lower precision, a
    lower rate; each figure from solving the changed problem."""
    from ..compile.place import solve, solve_focus
    from ..compile.workload import build_problem, lower_precision, with_extra_die

    short = [m for m in range(len(p.models)) if sol.served[m] < p.demand[m] * (1 - 1e-9)]
    how = "optimal" if sol.optimal else f"{sol.method}; no placement meets more than {100 * sol.bound:.0f}%"
    lines = [f"the demands cannot all be met on {sysm.name}: at most {100 * sol.lam:.1f}% of every demand at once "
             f"({how})."]
    for m in short:
        lines.append(f"  {p.models[m]}: {p.demand[m]:.4g} {p.units[m]}/s asked, {sol.served[m]:.4g} served "
                     f"(short by {100 * (1 - sol.served[m] / p.demand[m]):.0f}%)")
    lines.append("what would meet them:")
    best_die, best_lam = None, sol.lam
    for d in p.dies:
        got = solve(with_extra_die(p, d), time_limit_s).lam
        if got > best_lam + 1e-9:
            best_die, best_lam = d, got
    if best_die is None:
        lines.append("  another die: no die added alone helps (the limit is elsewhere: a link or the host)")
    else:
        more, grown, lam = 1, with_extra_die(p, best_die), best_lam
        while lam < 1 and more < MAX_EXTRA_DIES:
            more += 1
            grown = with_extra_die(grown, best_die)
            lam = solve(grown, time_limit_s).lam
        what = "another die" if more == 1 else f"{more} more dies"
        verdict = "meets every demand" if lam >= 1 else f"still short: {100 * lam:.0f}% of each"
        lines.append(f"  {what} like {best_die} (its memory and speed, on links like {best_die}'s): {verdict}")
    for m in short:
        lp = lower_precision(models[m], sysm)
        if lp is None:
            continue
        p2, _ = build_problem(w, sysm, models, {p.models[m]: lp})
        got = solve(p2, time_limit_s).lam
        verdict = "meets every demand" if got >= 1 else f"{100 * got:.0f}% of each"
        lines.append(f"  {p.models[m]} at {lp} instead of {models[m].demand.weight_precision}: {verdict}")
    for m in short:  # the models with a rate of their own; the ones they feed follow them
        dm = w.models[m]
        if dm.fed_by is not None:
            continue
        group = {k for k, x in enumerate(w.models) if _fed_from(w, x.name) == dm.name}
        share = solve_focus(p, group, time_limit_s)
        follow = sorted(p.models[k] for k in group if k != m)
        also = f" (and {', '.join(follow)}, which it feeds)" if follow else ""
        if share is None or share <= 0:
            lines.append(f"  a lower rate for {dm.name}{also} does not help: the other demands cannot all be met "
                         "even without it")
        else:
            lines.append(f"  a lower rate: {dm.name} at {share * p.demand[m]:.4g} {p.units[m]}/s or less{also}, "
                         "with every other demand met")
    return "\n".join(lines)


def _fed_from(w, name: str) -> str:
    """The model at the head of `name`'s chain of feeds (itself if it has a rate)."""
    m = next(x for x in w.models if x.name == name)
    return name if m.fed_by is None else _fed_from(w, m.fed_by.model)


def _no_option(names: list[str], w, sysm) -> str:
    big = max(sysm.die_names, key=sysm.die_memory_bytes)
    return (f"{', '.join(names)}: no way to run on {sysm.name} (no die holds it whole, none of its two-die splits "
            f"fits, or every way breaks its latency bound); the largest die, {big}, has "
            f"{sysm.die_memory_bytes(big) / 2**30:.2f} GiB. Try a lower precision, a looser latency_ms, or a "
            "system with more memory per die")


def plot_placement(res: PlaceResult, path: str | Path) -> Path:
    """A picture of the placement: each die's predicted busy share, stacked by model, and its memory used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dies = [d.die for d in res.dies]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    bottom = [0.0] * len(dies)
    for m in [r.name for r in res.models]:
        vals = [sum(s for d2, m2, s in res.die_shares if d2 == d and m2 == m) for d in dies]
        ax.bar(dies, vals, bottom=bottom, label=m)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of the die's time")
    ax.set_title(f"{res.workload} on {res.system}: {100 * res.lam:.0f}% of every demand at once", fontsize=9)
    ax.legend(fontsize=7, ncol=len(res.models), loc="upper center")
    ax2.bar(dies, [d.used_bytes / 2**20 for d in res.dies], color="#888")
    ax2.plot(dies, [d.memory_bytes / 2**20 for d in res.dies], "r_", markersize=22, label="capacity")
    ax2.set_ylabel("MiB held")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = ["place", "PlaceResult", "ModelRow", "DieRow", "DeploymentRow", "DemandError", "plot_placement"]
