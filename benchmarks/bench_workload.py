"""Several models placed over emulated dies: measured against predicted, per model.

Run: python benchmarks/bench_workload.py [--seconds 20]

1. `chipfuse probe` describes this machine as two emulated dies, one thread each (as many dies as the
   2-core machine can run at once). Its vision figures are fitted to a synthetic mobile-style network's
   per-op times; none of the models below is fitted on.
2. Each OCR model whole on one die at its workload precision: the predicted time of a frame beside the
   measured one (median of 5, in this process, one thread).
3. examples/hospital.yaml placed on that system (`chipfuse place`), then run (`chipfuse run --workload`):
   every model offered its predicted rate (load 1.0, the dies predicted fully busy) and half of it (0.5),
   for --seconds each; the rate each model finished beside the prediction.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import write_section

from chipfuse import api
from chipfuse.compile.cv import on_die
from chipfuse.frontends.model_files import OCR_FRAMES, ocr_models
from chipfuse.frontends.onnx_model import load_onnx
from chipfuse.frontends.workload import load_workload
from chipfuse.runtime.cv import CVProgram
from chipfuse.runtime.probe import probe, save_system

ROOT = Path(__file__).parents[1]
WORKLOAD = ROOT / "examples" / "hospital.yaml"


def per_frame(system) -> list[tuple[str, str, float, float]]:
    torch.set_num_threads(1)
    w = load_workload(WORKLOAD)
    rows = []
    paths = ocr_models(quiet=True)
    for m in w.models:
        if m.onnx is None:
            continue
        model = load_onnx(paths[m.onnx], m.onnx, OCR_FRAMES[m.onnx])
        od = on_die(model, system, "die0", m.weight_precision)
        prog = CVProgram(model, od.precision)
        x = {model.input_name: torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, model.frame_shape)
                                                .astype(np.float32))}
        prog.run(x)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            prog.run(x)
            times.append(time.perf_counter() - t0)
        rows.append((m.onnx, od.precision, od.frame_s, statistics.median(times)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    system, figures = probe(["die0", "die1"], threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        host = Path(tmp) / "host.yaml"
        save_system(system, host)
        frames = per_frame(system)
        placed = api.place(WORKLOAD, host)
        runs = [api.run_workload(placement=placed.placement, seconds=a.seconds, load=load) for load in (1.0, 0.5)]
    v = figures
    body = (
        "## Several models placed over emulated dies: measured against predicted "
        "(`python benchmarks/bench_workload.py`)\n\n"
        "This machine as two emulated dies, one thread each (`chipfuse probe`); its vision figures "
        f"(TOPS {v['vision_tops']}, GB/s {v['vision_gb_per_s']}, {v['vision_node_overhead_s'] * 1e6:.1f} us an op) "
        "are fitted to a synthetic mobile-style network's per-op times. No model below was fitted on.\n\n"
        "One frame, whole on one die, one thread (median of 5):\n\n"
        "| model | precision | predicted | measured | measured / predicted |\n|---|---|---|---|---|\n")
    for name, prec, pred, meas in frames:
        body += f"| {name} | {prec} | {pred * 1e3:.1f} ms | {meas * 1e3:.1f} ms | {meas / pred:.2f} |\n"
    body += (f"\n`examples/hospital.yaml` placed on these two dies: {100 * placed.lam:.0f}% of every demand at once "
             f"({placed.method}); deployments: "
             + "; ".join(f"{d.model} {d.label} at {d.rate:.3g}/s" for d in placed.deployments)
             + f". Then each model offered its predicted rate x load for {a.seconds:g} s:\n\n"
             "| load | model | predicted /s | offered /s | measured /s | measured / offered | latency p50 / p99 | "
             "skipped |\n|---|---|---|---|---|---|---|---|\n")
    for run in runs:
        for r in run.rows:
            lat = "-" if r.latency_p50_s is None else f"{r.latency_p50_s:.2f} / {r.latency_p99_s:.2f} s"
            body += (f"| {run.load:g} | {r.model} | {r.predicted:.3g} {r.unit} | {r.offered:.3g} | {r.measured:.3g} | "
                     f"{r.measured / r.offered:.2f} | {lat} | {r.skipped} |\n")
    body += ("\nAt load 1 the placement has every die fully busy: any die time the model under-counts shows as a "
             "rate below the prediction (and arrivals skipped once every deployment holds 8 requests). The host's "
             "own work (making the inputs, receiving the outputs) shares the same two cores.\n")
    write_section("workload", body)
    print(body)


if __name__ == "__main__":
    main()
