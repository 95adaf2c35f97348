"""The performance model reproduces the talk's arithmetic and the bandwidth roofline."""

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.frontends import load_model_config
from chipfuse.sim.perf import required_bandwidth_bytes_per_s


def test_talk_arithmetic_3gb_model_at_10_tokens_needs_30_gbps():
    assert required_bandwidth_bytes_per_s(3e9, 10) == pytest.approx(30e9)


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-3.2-3b", "qwen2.5-1.5b"])
@pytest.mark.parametrize("precision", ["int4", "int8", "fp16"])
def test_one_die_decode_is_bandwidth_over_bytes_per_token(system_factory, model, precision):
    system = system_factory(1, capacity_gib=32)
    plan = compile_plan(load_model_config(model), system, precision, context=1024, prompt_tokens=128)
    pred = plan.prediction
    bw = system.die_bandwidth_bytes_per_s("die0")
    roofline = bw / pred.bytes_read_per_token
    assert pred.decode_tokens_per_s == pytest.approx(roofline, rel=0.05)
    assert pred.decode_tokens_per_s <= roofline  # overheads only ever slow it down
    assert pred.stages[0].bound == "memory"


def test_weight_bytes_dominate_bytes_per_token(system_factory):
    """At short context the bytes read per token are the model's weight bytes (the talk's claim)."""
    system = system_factory(1, capacity_gib=32)
    plan = compile_plan(load_model_config("llama-2-7b"), system, "int8", context=16, prompt_tokens=8)
    weights = sum(s.weight_bytes for s in plan.stages)
    # the embedding table is resident but only one row per token is read
    emb = 32000 * 4096 + 32000 * 2
    assert plan.prediction.bytes_read_per_token == pytest.approx(weights - emb, rel=0.01)


def test_pipeline_adds_capacity_not_bandwidth_when_memory_bound(system_factory):
    """Memory-bound decode: 4 pipelined dies each read their quarter per micro-batch, so the
    batch's throughput matches one die holding everything, and single-stream is never faster."""
    cfg = load_model_config("llama-3.2-3b")
    one = compile_plan(cfg, system_factory(1), "int4", context=1024, batch=4, prompt_tokens=128).prediction
    four = compile_plan(cfg, system_factory(4), "int4", context=1024, batch=4, prompt_tokens=128).prediction
    assert four.micro_batches == 4
    assert four.decode_tokens_per_s == pytest.approx(one.decode_tokens_per_s, rel=0.25)
    single1 = compile_plan(cfg, system_factory(1), "int4", context=1024, prompt_tokens=128).prediction
    single4 = compile_plan(cfg, system_factory(4), "int4", context=1024, prompt_tokens=128).prediction
    assert single4.decode_tokens_per_s <= single1.decode_tokens_per_s


def test_pipeline_speeds_up_compute_bound_prefill_throughput(system_factory):
    """Where a die is compute-bound, four dies in a pipeline carry four micro-batches at once."""
    cfg = load_model_config("llama-3.2-3b")
    slow = {"tops": {"int4": 2, "int8": 1, "fp16": 0.5}}
    one = compile_plan(cfg, system_factory(1, **slow), "int4", context=512, batch=64, prompt_tokens=128).prediction
    four = compile_plan(cfg, system_factory(4, **slow), "int4", context=512, batch=64, prompt_tokens=128).prediction
    assert one.stages[0].bound == "compute"
    assert four.decode_tokens_per_s > 2.5 * one.decode_tokens_per_s


def test_a_prefill_compute_efficiency_changes_the_prompt_not_the_decode(system_factory):
    """An engine whose prompt path reaches more of the peak: the time to first token falls in proportion to the
    compute-bound prefill, the decode step (memory-bound) does not move."""
    model = load_model_config("llama-3.2-1b")
    base = system_factory(1, capacity_gib=32, compute_efficiency=0.2)
    fast = system_factory(1, capacity_gib=32, compute_efficiency=0.2, prefill_compute_efficiency=0.8)
    a = compile_plan(model, base, "fp16", context=1024, prompt_tokens=512).prediction
    b = compile_plan(model, fast, "fp16", context=1024, prompt_tokens=512).prediction
    assert b.decode_tokens_per_s == pytest.approx(a.decode_tokens_per_s, rel=1e-12)
    assert b.ttft_s < 0.5 * a.ttft_s


def test_decode_at_the_mean_position_of_the_generated_tokens(system_factory, tmp_path):
    """--output-tokens N predicts decode where the KV cache is on average (prompt + N/2), not at the full context;
    the KV cache is still sized for the context. Without it, decode is the full-context worst case, as before."""
    from chipfuse.plan.plan import Plan
    from chipfuse.sim.predict import predict

    model = load_model_config("llama-3.2-1b")
    system = system_factory(1, capacity_gib=32)
    full = compile_plan(model, system, "int4", context=32768, prompt_tokens=512)
    mean = compile_plan(model, system, "int4", context=32768, prompt_tokens=512, output_tokens=256)
    short = compile_plan(model, system, "int4", context=512 + 128, prompt_tokens=512)
    assert mean.workload.decode_context == 640 and full.workload.decode_context == 32768
    assert mean.prediction.decode_tokens_per_s == pytest.approx(short.prediction.decode_tokens_per_s, rel=1e-12)
    assert mean.prediction.decode_tokens_per_s > 1.2 * full.prediction.decode_tokens_per_s
    assert mean.prediction.ttft_s == pytest.approx(full.prediction.ttft_s, rel=1e-12)
    assert mean.stages[0].kv_bytes == full.stages[0].kv_bytes  # memory for the whole context all the same
    mean.save(tmp_path / "p.json")
    back = Plan.load(tmp_path / "p.json")
    assert back.workload.output_tokens == 256
    assert predict(back).decode_tokens_per_s == pytest.approx(mean.prediction.decode_tokens_per_s, rel=1e-12)
    from chipfuse.errors import SpecError

    with pytest.raises(SpecError, match="--output-tokens 40000: must be between 1 and 32,256"):
        compile_plan(model, system, "int4", context=32768, prompt_tokens=512, output_tokens=40000)
