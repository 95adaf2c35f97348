"""`chipfuse probe`: measure this machine and describe it as a system of emulated dies.

The runtime's dies are worker processes on this host's CPU, taking turns on its cores and
sharing its DRAM; the links are gloo transfers on loopback. Measuring those (streaming
bandwidth, each precision's matmul throughput, per-layer dispatch cost, one hop's latency)
gives a system file the performance model can evaluate a plan on, so a run's measured speed
can be set beside the model's prediction for the same plan.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..hw.load import parse_system
from ..hw.spec import System
from ..quant.formats import get_format
from .kernels import make_linear

GB = 1e9


def _best(fn, reps: int, repeat: int = 3) -> float:
    """Fastest mean over `repeat` runs of `reps` calls (less noise on a shared machine)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def measure_bandwidth_bytes_per_s(mib: int = 256) -> float:
    x = torch.ones(mib * 1024 * 1024 // 4)
    return x.numel() * 4 / _best(lambda: x.sum(), 4)


def measure_kernel_bandwidth_bytes_per_s(precision: str = "int4", n: int = 8192, k: int = 2048) -> float:
    """Weight bytes per second the packed kernel streams in a decode step (one row of activations)."""
    lin = make_linear(torch.randn(n, k) * 0.05, get_format(precision))
    x = torch.randn(1, k)
    return lin.resident_bytes / _best(lambda: lin(x), 20)


def measure_tops(precision: str, m: int = 256, n: int = 1536, k: int = 576) -> float:
    """Tera-ops per second of this precision's linear kernel on a prefill-sized batch."""
    lin = make_linear(torch.randn(n, k) * 0.05, get_format(precision))
    x = torch.randn(m, k)
    return 2 * m * n * k / _best(lambda: lin(x), 10) / 1e12


def _mobile_stack(blocks: int, channels: int, side: int):
    """A vision model built in code, shaped like the mobile CNNs chipfuse runs: per block a depthwise 3x3
    convolution, a 1x1 one, hard-swish (HardSigmoid x input), a dense 3x3 one and a residual Add."""
    import numpy as np

    from ..ir.cv import CVModel, CVNode

    rng = np.random.default_rng(0)
    nodes, consts, x = [], {}, "x"

    def conv(name, src, shape, attrs):
        consts[name + ".w"] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        consts[name + ".b"] = np.zeros(shape[0], np.float32)
        nodes.append(CVNode(name, "Conv", (src, name + ".w", name + ".b"), (name,), attrs))
        return name

    for i in range(blocks):
        d = conv(f"dw{i}", x, (channels, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": channels})
        p = conv(f"pw{i}", d, (channels, channels, 1, 1), {})
        nodes.append(CVNode(f"hs{i}", "HardSigmoid", (p,), (f"hs{i}",), {"alpha": 1 / 6, "beta": 0.5}))
        nodes.append(CVNode(f"sw{i}", "Mul", (p, f"hs{i}"), (f"sw{i}",)))
        f = conv(f"full{i}", f"sw{i}", (channels, channels, 3, 3), {"pads": [1, 1, 1, 1]})
        nodes.append(CVNode(f"res{i}", "Add", (f, x), (f"res{i}",)))
        x = f"res{i}"
    shape = (1, channels, side, side)
    return CVModel("probe-mobile", nodes, consts, "x", shape, (x,), shape)


def measure_vision() -> tuple[dict[str, float], dict[str, float], float]:
    """Vision ops through chipfuse's interpreter, per precision: each op of a mobile-style network timed at six
    frame sizes (8 MiB down to 9 KiB a tensor), and the roofline fitted to them: t = overhead + max(FLOP / rate, bytes / bandwidth),
    with FLOP and bytes as the IR counts them (a 16-bit or int8 die rounds every output, which the fitted
    bandwidth absorbs). Returns (TOPS, GB/s) per precision and the overhead of one op."""
    import numpy as np
    from scipy.optimize import least_squares

    from ..ir.cv import cv_costs, shapes
    from .cv import CVProgram

    tops: dict[str, float] = {}
    gbps: dict[str, float] = {}
    overheads = []
    for p in ("fp32", "fp16", "bf16", "int8"):
        flop, nbytes, seconds = [], [], []
        for channels, side in ((8, 512), (16, 184), (32, 96), (64, 48), (32, 24), (16, 12)):
            model = _mobile_stack(3, channels, side)
            c = cv_costs(model, shapes(model), get_format("fp32"), 4.0).costs
            prog = CVProgram(model, p)
            frame = {"x": torch.randn(model.frame_shape)}
            prog.run(frame)
            best = None
            for _ in range(3):
                times: list[float] = []
                prog.run(frame, times)
                best = times if best is None else [min(a, b) for a, b in zip(best, times)]
            flop += list(c.weight_flop + c.act_flop)
            nbytes += list(c.read_bytes)
            seconds += best or []
        f, b, t = np.array(flop), np.array(nbytes), np.array(seconds)

        def residual(q, f=f, b=b, t=t):
            o, rate, bw = np.exp(q)
            return np.log(o + np.maximum(f / rate, b / bw)) - np.log(t)

        fit = least_squares(residual, np.log([2e-6, 5e10, 5e9]))
        o, rate, bw = np.exp(fit.x)
        tops[p], gbps[p] = round(float(rate) / 1e12, 5), round(float(bw) / 1e9, 3)
        overheads.append(float(o))
    return tops, gbps, float(np.median(overheads))


def measure_layer_overhead_s() -> float:
    """Fixed cost of one decode layer step beyond its weight streaming: dispatch and small ops (the compiled
    decode path when it is available, as the runtime uses it)."""
    from ..frontends.config import ModelConfig
    from .stage import Segment, StageModel

    cfg = ModelConfig(name="probe", family="llama", hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=16, vocab_size=256)
    w = {"embed": torch.randn(256, 64), "final_norm": torch.ones(64)}
    for i in range(4):
        p = f"layers.{i}."
        w.update({p + "attn_norm": torch.ones(64), p + "mlp_norm": torch.ones(64), p + "q_proj": torch.randn(64, 64),
                  p + "k_proj": torch.randn(32, 64), p + "v_proj": torch.randn(32, 64), p + "o_proj": torch.randn(64, 64),
                  p + "gate_proj": torch.randn(128, 64), p + "up_proj": torch.randn(128, 64),
                  p + "down_proj": torch.randn(64, 128)})
    model = StageModel(cfg, w, (1, 5), get_format("int4"), 256, "fp16")
    h = torch.randn(1, 64)
    state = {"pos": 0}

    def step():
        model.forward(h, [Segment(0, state["pos"] % 200, 1)])
        state["pos"] += 1

    return _best(step, 50) / 4


_HOP = r"""
import sys, time, torch, torch.distributed as dist
from datetime import timedelta
rank, port, nbytes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60))
res = {}
for size in (1600, nbytes):
    x = torch.zeros(size, dtype=torch.uint8)
    n = 200 if size < 100000 else 30
    for i in range(n + 10):
        if i == 10: t = time.perf_counter()
        if rank == 0: dist.send(x, 1); dist.recv(x, 1)
        else: dist.recv(x, 0); dist.send(x, 0)
    res[size] = (time.perf_counter() - t) / n / 2
if rank == 0: print(res[1600], res[nbytes])
dist.destroy_process_group()
"""


def measure_hop() -> tuple[float, float]:
    """(latency s, bytes/s) of one gloo point-to-point transfer between two processes on loopback."""
    from .device import _free_port

    port = str(_free_port())
    big = 8 * 1024 * 1024
    peer = subprocess.Popen([sys.executable, "-c", _HOP, "1", port, str(big)], stdout=subprocess.DEVNULL)
    out = subprocess.run([sys.executable, "-c", _HOP, "0", port, str(big)], capture_output=True, text=True, timeout=120)
    peer.wait(timeout=30)
    small_s, big_s = (float(v) for v in out.stdout.split())
    return small_s, big / max(big_s - small_s, 1e-9)


TRAIN_SHAPES = ((1, 32), (1, 128), (2, 128), (4, 128))  # (sequences, tokens) of the training probe's micro-batches


def measure_train() -> tuple[float, float]:
    """A LoRA training step through autograd (runtime/lora.py) on two layers shaped like SmolLM2's (random
    weights, rank 8 on every projection, dropout on), forward and backward at four micro-batch sizes, and
    t = 2 x overhead + FLOP / rate fitted to them, FLOP as sim/train.py counts them (the IR's forward,
    then the weight products again and the attention twice). Returns (TFLOP/s, overhead per layer in s)."""
    import numpy as np

    from ..frontends import load_model_config
    from ..ir.graph import Workload, op_costs
    from ..ir.llm import build_llm_graph
    from ..plan.train import LoraSpec
    from ..quant.formats import Recipe
    from .lora import TrainStage

    cfg = load_model_config("smollm2-135m").model_copy(update={"num_layers": 2, "vocab_size": 64})
    g = torch.Generator().manual_seed(0)
    w = {"embed": torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g)}
    for i in range(2):
        p = f"layers.{i}."
        for n, (o, k) in {"q_proj": (cfg.q_dim, cfg.hidden_size), "k_proj": (cfg.kv_dim, cfg.hidden_size),
                          "v_proj": (cfg.kv_dim, cfg.hidden_size), "o_proj": (cfg.hidden_size, cfg.q_dim),
                          "gate_proj": (cfg.intermediate_size, cfg.hidden_size),
                          "up_proj": (cfg.intermediate_size, cfg.hidden_size),
                          "down_proj": (cfg.hidden_size, cfg.intermediate_size)}.items():
            w[p + n] = torch.randn(o, k, generator=g) / k ** 0.5
        w[p + "attn_norm"], w[p + "mlp_norm"] = torch.ones(cfg.hidden_size), torch.ones(cfg.hidden_size)
    stage = TrainStage(cfg, w, (1, 3), get_format("fp32"), LoraSpec(), 0)
    graph = build_llm_graph(cfg)
    mask = np.isin(graph.op_block, [1, 2])
    flop, seconds = [], []
    for b, t in TRAIN_SHAPES:
        c = op_costs(graph, Recipe.of(get_format("fp32")), Workload.prefill(t, b), 4.0, 2.0)
        flop.append(float((2 * c.weight_flop + 3 * c.act_flop)[mask].sum()))
        x = torch.randn(b, t, cfg.hidden_size, generator=g)

        def step(x=x):
            xi = x.clone().requires_grad_()
            out = stage.forward(xi, key=(0, 0))
            out.backward(torch.ones_like(out))
            for p_ in stage.parameters():
                p_.grad = None

        seconds.append(_best(step, 2))
    a = np.stack([np.full(len(flop), 2.0), np.array(flop)], 1)  # t = 2 layers x overhead + FLOP x seconds/FLOP
    (o, inv), *_ = np.linalg.lstsq(a, np.array(seconds), rcond=None)
    inv = max(float(inv), 1e-15)
    return round(1.0 / inv / 1e12, 5), round(max(float(o), 0.0), 7)


def probe(dies: list[str], on_status=lambda m: None, threads: int | None = None,
          train: bool = False) -> tuple[System, dict]:
    """Measure this host; return a system of len(dies) emulated dies (named as given) and the raw figures.
    `threads`: the threads each die's kernels use (the runtime's default: every core). `train`: also measure a
    LoRA training step's rate (`DieType.train`, for `chipfuse finetune`'s prediction)."""
    cores = os.cpu_count() or 1
    torch.set_num_threads(threads or cores)
    on_status("streaming bandwidth")
    bw = measure_bandwidth_bytes_per_s()
    on_status("int4 kernel streaming rate")
    kernel_bw = measure_kernel_bandwidth_bytes_per_s()
    tops = {}
    for p in ("fp32", "bf16", "int8", "int4"):
        on_status(f"{p} matmul throughput")
        tops[p] = round(measure_tops(p), 4)
    on_status("per-layer dispatch cost")
    overhead = measure_layer_overhead_s()
    on_status("vision ops through the interpreter")
    vision_tops, vision_gbps, node_s = measure_vision()
    train_path = None
    if train:
        on_status("a LoRA training step through autograd")
        train_tops, train_overhead = measure_train()
        train_path = {"tops": train_tops, "layer_overhead_s": train_overhead}
    on_status("gloo hop on loopback")
    hop_s, hop_bw = measure_hop()
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    ram_gib = int(ram_gib * 10) / 10
    per_die = max(0.25, int((ram_gib - 1.5) / len(dies) * 100) / 100)  # the dies split this host's RAM
    data = {
        "name": "this-host",
        "description": f"this machine measured by `chipfuse probe`: {len(dies)} emulated dies (worker processes) "
                       f"taking turns on {cores} cores and sharing its DRAM; links are gloo on loopback",
        "host": {"name": "this host", "cpu": {"cores": cores, "core_type": "host", "freq_ghz": 1.0,
                                              "gflops_fp32": round(tops["fp32"] * 1000, 1)},
                 "dram": {"type": "DDR5", "bus_width_bits": 64, "data_rate_mtps": 4800, "capacity_gib": round(ram_gib, 1),
                          "bandwidth_gb_per_s": round(bw / GB, 2), "efficiency": 1.0},
                 "reserved_gib": 1.0, "ports": [{"kind": "d2d", "count": 1}],
                 "overhead_per_token_s": 2e-4},
        "die_types": {"emulated": {
            "description": "a worker process on this host's CPU (measured kernels; packed int4/int8 take bf16 activations)",
            "tops": tops,
            # each worker's weights sit in this host's DRAM, read at the rate the packed kernels reach
            "memory": {"own": {"type": "DDR5", "bus_width_bits": 64, "data_rate_mtps": 4800, "capacity_gib": per_die,
                               "bandwidth_gb_per_s": round(bw / GB, 2),
                               "efficiency": round(min(1.0, kernel_bw / bw), 3)}},
            "compute_efficiency": 1.0, "op_overhead_s": round(overhead, 7), "activation_precision": "fp32",
            # the threads each die's kernels use (the figures above were measured with them): dies computing at
            # once share this host's cores (sim/perf.core_sharing)
            "host_threads": threads or cores,
            "vision": {"tops": vision_tops, "gb_per_s": vision_gbps, "node_overhead_s": round(node_s, 7)},
            **({"train": train_path} if train_path else {})}},
        "dies": [{"name": d, "type": "emulated"} for d in dies],
        "links": [{"between": ["host", dies[0]], "kind": "d2d-pcb", "bandwidth_gb_per_s": round(hop_bw / GB, 3),
                   "efficiency": 1.0, "latency_us": round(hop_s * 1e6, 1)}]
                 + [{"between": [a, b], "kind": "d2d-pcb", "bandwidth_gb_per_s": round(hop_bw / GB, 3),
                     "efficiency": 1.0, "latency_us": round(hop_s * 1e6, 1)} for a, b in zip(dies, dies[1:])],
        "sources": {"host": "measured by chipfuse probe", "die_types": "measured by chipfuse probe",
                    "links": "measured by chipfuse probe"},
    }
    if len(dies) > 1:  # the last die answers the host directly
        data["links"].append({"between": [dies[-1], "host"], "kind": "d2d-pcb", "bandwidth_gb_per_s": round(hop_bw / GB, 3),
                              "efficiency": 1.0, "latency_us": round(hop_s * 1e6, 1)})
        data["host"]["ports"][0]["count"] = 2
    figures = {"train": train_path, "vision_tops": vision_tops, "vision_gb_per_s": vision_gbps, "vision_node_overhead_s": node_s, "bandwidth_gb_per_s": bw / GB, "int4_kernel_gb_per_s": kernel_bw / GB, "tops": tops, "layer_overhead_s": overhead, "hop_latency_s": hop_s,
               "hop_gb_per_s": hop_bw / GB}
    return parse_system(data, "chipfuse probe"), figures


def save_system(system: System, path: str | Path) -> None:
    import yaml

    from ..io import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(system.model_dump(mode="json", exclude_none=True), sort_keys=False))
