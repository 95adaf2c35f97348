"""Sweep a space: every design x model x precision through the fast core, on all cores (or a Ray cluster),
then the target, the Pareto fronts and the reason each rejected point fails.

The unit of work is a chunk of designs with every model and precision; each worker builds its own Core
(the compiled frames and groups are cheap to rebuild and not worth shipping). Results come back as plain
tuples in the designs' order, so a sweep gives the same table however it was spread.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import SpecError
from ..frontends.config import ModelConfig
from .core import Core, Figures
from .space import MAX_CONFIGS, Design, Space, designs
from .target import Bound

FIGURES = [f.name for f in fields(Figures)]


@dataclass(frozen=True)
class Table:
    """Every configuration of a sweep, in order: design index, model index, precision index, figures."""

    designs: tuple[Design, ...]
    models: tuple[str, ...]
    precisions: tuple[str, ...]
    splits: tuple[str, ...]
    design: np.ndarray
    model: np.ndarray
    precision: np.ndarray
    split: np.ndarray
    values: dict[str, np.ndarray]  # Figures' numeric fields, one array each
    problem: np.ndarray  # object array of strings ('' when it fits and runs)

    def __len__(self) -> int:
        return len(self.design)

    def figures(self, i: int) -> Figures:
        v = {k: float(a[i]) for k, a in self.values.items() if k in FIGURES and k != "dies_used"}
        return Figures(**v, dies_used=int(self.values["dies_used"][i]), problem=str(self.problem[i]))  # type: ignore[arg-type]


SPLITS = ("pipeline", "tensor")
_LEAD = 4  # design, model, precision, split before the figures in a row


def _chunk(space: Space, first: int, ds: Sequence[Design], models: Sequence[tuple[str, ModelConfig]]) -> list[tuple]:
    core = Core(space)
    out = []
    for j, d in enumerate(ds):
        for m, (name, cfg) in enumerate(models):
            for p, prec in enumerate(space.precisions):
                for split in space.splits_for(d.dies):
                    f = core.evaluate(d, name, cfg, prec, split)
                    out.append((first + j, m, p, SPLITS.index(split), *(getattr(f, k) for k in FIGURES)))
    return out


def _chunks(n: int, parts: int) -> list[range]:
    size = max(1, math.ceil(n / parts))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def count(space: Space, n_models: int) -> int:
    """Configurations of the space for `n_models` models: designs x models x precisions x their split modes."""
    return sum(len(space.splits_for(d.dies)) for d in designs(space)) * n_models * len(space.precisions)


def sweep(space: Space, models: Sequence[tuple[str, ModelConfig]], *, workers: int | None = None,
          ray_address: str | None = None, progress: Callable[[int, int], None] | None = None) -> Table:
    """Evaluate every configuration. `workers` processes on this machine (default: every core), or the
    tasks of a Ray cluster at `ray_address` ("local" starts one on this machine)."""
    ds = designs(space)
    total = count(space, len(models))
    if total == 0:
        raise SpecError("the space holds no configuration: give at least one option of each kind and one model")
    if total > MAX_CONFIGS:
        raise SpecError(f"the space holds {total:,} configurations, more than {MAX_CONFIGS:,}; narrow an option list")
    workers = max(1, workers or os.cpu_count() or 1)
    parts = _chunks(len(ds), max(1, min(len(ds), workers * 8 if workers > 1 or ray_address else 8)))
    done = 0
    results: list[list[tuple]] = [list() for _ in parts]

    def got(i: int, rows: list[tuple]) -> None:
        nonlocal done
        results[i] = rows
        done += len(rows)
        if progress:
            progress(done, total)

    if ray_address:
        _run_ray(space, ds, models, parts, ray_address, got)
    elif workers == 1:
        for i, r in enumerate(parts):
            got(i, _chunk(space, r.start, ds[r.start:r.stop], models))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            futs = {pool.submit(_chunk, space, r.start, ds[r.start:r.stop], models): i for i, r in enumerate(parts)}
            for fut in as_completed(futs):
                got(futs[fut], fut.result())
    rows = [row for part in results for row in part]
    cols: list = list(zip(*rows)) if rows else [() for _ in range(_LEAD + len(FIGURES))]
    values = {k: np.asarray(cols[_LEAD + j], dtype=float) for j, k in enumerate(FIGURES) if k != "problem"}
    ints = [np.asarray(cols[j], dtype=np.int64) for j in range(_LEAD)]
    return Table(tuple(ds), tuple(n for n, _ in models), tuple(space.precisions), SPLITS, design=ints[0],
                 model=ints[1], precision=ints[2], split=ints[3], values=values,
                 problem=np.asarray(cols[_LEAD + FIGURES.index("problem")], dtype=object))


def _run_ray(space, ds, models, parts, address: str, got) -> None:
    try:
        import ray
    except ImportError:
        raise SpecError("--ray needs the ray package: pip install 'chipfuse[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address == "local":
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        task: Any = ray.remote(_chunk)
        space_ref, models_ref = ray.put(space), ray.put(list(models))
        pending = {task.remote(space_ref, r.start, ds[r.start:r.stop], models_ref): i for i, r in enumerate(parts)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                got(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def meets(t: Table, target: Sequence[Bound]) -> np.ndarray:
    """Which configurations fit, run and meet every bound."""
    ok = t.problem == ""
    for b in target:
        x = t.values[b.field]
        with np.errstate(invalid="ignore"):
            ok &= b.holds(x)
    return ok


def misses(t: Table, i: int, target: Sequence[Bound]) -> str:
    """Why configuration i is rejected ('' if it is not)."""
    if t.problem[i]:
        return str(t.problem[i])
    bad = [f"{b.metric} {t.values[b.field][i]:.4g} {b.unit} misses {b}" for b in target
           if not b.holds(float(t.values[b.field][i]))]
    return "; ".join(bad)


def closest(t: Table, target: Sequence[Bound]) -> int | None:
    """The running configuration nearest to meeting the target: least worst shortfall, then least summed."""
    ok = np.flatnonzero(t.problem == "")
    if not len(ok):
        return None
    short = np.zeros((len(ok), len(target)))
    for j, b in enumerate(target):
        x = t.values[b.field][ok]
        gap = np.abs(x - b.value) / (abs(b.value) or 1.0)
        with np.errstate(invalid="ignore"):
            held = b.holds(x)
        short[:, j] = np.where(held, 0.0, gap)
    order = np.lexsort((short.sum(1), short.max(1)))
    return int(ok[order[0]])


def pareto(t: Table, mask: np.ndarray, objectives: Sequence[tuple[str, str]]) -> np.ndarray:
    """Indices of the configurations in `mask` that no other in `mask` beats on every objective (field, min|max),
    per model: the Pareto front by the paretoset library."""
    import pandas as pd  # type: ignore[import-untyped]
    from paretoset import paretoset  # type: ignore[import-untyped]

    out = []
    for m in range(len(t.models)):
        idx = np.flatnonzero(mask & (t.model == m))
        if not len(idx):
            continue
        usable = [(f, s) for f, s in objectives if np.isfinite(t.values[f][idx]).all()]  # accuracy: where measured
        df = pd.DataFrame({f: t.values[f][idx] for f, _ in usable})
        keep = paretoset(df, sense=[s for _, s in usable], distinct=True)
        out.append(idx[np.asarray(keep)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def reasons(t: Table, target: Sequence[Bound], top: int = 6) -> list[tuple[str, int]]:
    """The commonest reasons configurations are rejected, by kind, with counts."""
    c: Counter[str] = Counter()
    for i in range(len(t)):
        why = misses(t, i, target)
        if why:
            c[_kind(why)] += 1
    return c.most_common(top)


def _kind(why: str) -> str:
    """A reason without its numbers, so alike reasons count together."""
    if why.startswith("cannot be built") or why.startswith("die type"):
        return why
    if why.startswith("does not fit"):
        return "does not fit its dies' memory"
    return "; ".join(f"misses {part.split(' misses ')[1]}" for part in why.split("; ") if " misses " in part)


__all__ = ["Table", "sweep", "meets", "misses", "closest", "pareto", "reasons", "count"]
