"""Energy and power: power is energy per token x tokens per second; each energy term follows its own constant;
the fanless verdict follows the system's limit; a plan file keeps the figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import make_system  # noqa: E402

from chipfuse import api  # noqa: E402
from chipfuse.compile.compiler import compile_plan  # noqa: E402
from chipfuse.frontends import load_model_config  # noqa: E402
from chipfuse.ir.llm import build_llm_graph  # noqa: E402
from chipfuse.sim.energy import ASSUMED_PJ_PER_OP, plan_energy  # noqa: E402


def _energy(system, model="smollm2-135m", batch=1, dies_n=None):
    cfg = load_model_config(model)
    plan = compile_plan(cfg, system, "int8", context=512, batch=batch)
    return plan, plan_energy(plan, plan.prediction, build_llm_graph(cfg), system)


@pytest.mark.parametrize("n, batch", [(1, 1), (2, 1), (2, 4), (3, 2)])
def test_power_is_energy_per_token_times_rate(n, batch):
    plan, e = _energy(make_system(n, power={"static_w": 0.7, "pj_per_op": {"int8": 0.3, "fp16": 0.9}}), batch=batch)
    rate = plan.prediction.decode_tokens_per_s
    assert e.power_w == pytest.approx(e.j_per_token * rate, rel=1e-12)
    assert e.power_w == pytest.approx(e.dynamic_j_per_token * rate + e.static_w, rel=1e-12)
    assert e.static_w == pytest.approx(1.0 + 0.7 * n)  # the host's 1 W and each die's
    assert e.peak_power_w >= e.power_w and not e.assumed


def test_each_term_follows_its_own_constant():
    base = dict(static_w=0.5, pj_per_op={"int8": 0.2, "fp16": 0.6})
    _, a = _energy(make_system(2, power=base))
    _, b = _energy(make_system(2, power={**base, "pj_per_op": {"int8": 0.4, "fp16": 1.2}}))
    assert b.compute_j_per_token == pytest.approx(2 * a.compute_j_per_token, rel=1e-12)
    assert b.dram_j_per_token == pytest.approx(a.dram_j_per_token, rel=1e-12)
    mem = {"own": {"type": "LPDDR5", "bus_width_bits": 64, "data_rate_mtps": 6400, "capacity_gib": 8,
                   "pj_per_byte": 120.0}}
    _, c = _energy(make_system(2, power=base, memory=mem))  # 3 x the LPDDR5 default of 40 pJ/byte
    assert c.dram_j_per_token == pytest.approx(3 * a.dram_j_per_token, rel=1e-12)
    assert c.compute_j_per_token == pytest.approx(a.compute_j_per_token, rel=1e-12)


def test_a_hand_count_of_one_die_at_batch_one():
    """SmolLM2 at int8 on one die: its matmuls do 2 FLOP per weight per token (the tied head included), at
    0.2 pJ each; attention over the 512 positions does 4 FLOP per query dimension per position, at fp16's
    0.6 pJ; norms and the rest add a little; its weights are read once a token."""
    cfg = load_model_config("smollm2-135m")
    _, e = _energy(make_system(1, power={"static_w": 0.5, "pj_per_op": {"int8": 0.2, "fp16": 0.6}}))
    h, inter, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
    per_layer = h * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * h + 3 * h * inter
    matmul_flop = 2 * (layers * per_layer + h * vocab)
    attention_flop = 4 * cfg.q_dim * 512 * layers
    counted = matmul_flop * 0.2e-12 + attention_flop * 0.6e-12
    assert counted <= e.compute_j_per_token <= 1.03 * counted
    weight_bytes = layers * per_layer + h * vocab  # int8: a byte each, plus scales
    assert e.dram_j_per_token >= weight_bytes * 40e-12  # LPDDR5 in conftest: 40 pJ/byte by default


def test_missing_energy_figures_are_assumed_and_said():
    _, e = _energy(make_system(1))
    assert e.assumed and all("pJ/op" in a for a in e.assumed)
    assert any(f"int8 {ASSUMED_PJ_PER_OP['int8']}" in a for a in e.assumed)


def test_the_fanless_verdict_and_the_plan_file(tmp_path):
    p = api.plan("llama-2-7b", "talk-4die-d2d", "int4", context=2048)
    e = p.prediction.energy
    assert e is not None and e.fanless == (e.power_w <= e.fanless_w) and e.fanless_w == 10
    p.save(tmp_path / "p.json")
    assert api.load_plan(tmp_path / "p.json").prediction.energy == e


def test_the_roofline_picture_is_drawn(tmp_path):
    p = api.plan("smollm2-135m", "talk-heavy-2die-pcie", "int4", context=512, split="pipeline")
    out = api.plot_roofline(p, tmp_path / "roof.png")
    assert out.stat().st_size > 20_000
