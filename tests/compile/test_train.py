"""Training memory planned before any step: the counts, the schedule's in-flight micro-batches, the refusal."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.compile.train import (
    LoraSpec,
    TrainPlanError,
    TrainSpec,
    adapter_values_per_layer,
    check_fits,
    train_memory,
)
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system

SMOL = load_model_config("smollm2-135m")


def pipeline(n_dies: int, system: str = "talk-4die-d2d", capacity_gib: float | None = None, precision="int8"):
    sysm = load_system(system)
    if capacity_gib is not None:
        from chipfuse.hw.load import parse_system

        d = sysm.model_dump(mode="json")
        for dt in d["die_types"].values():
            if dt["memory"].get("own"):
                dt["memory"]["own"]["capacity_gib"] = capacity_gib
        sysm = parse_system(d, "test")
    return compile_plan(SMOL, sysm, precision, context=256, batch=1, prompt_tokens=64, max_dies=n_dies,
                        split="pipeline")


def test_adapter_values_by_hand():
    """SmolLM2-135M (hidden 576, 9 heads of 64, 3 KV heads, MLP 1536), rank 8 on every projection."""
    h, q, kv, i = 576, 576, 192, 1536
    want = 8 * ((h + q) + (h + kv) * 2 + (q + h) + (h + i) * 2 + (i + h))
    assert adapter_values_per_layer(SMOL, LoraSpec(rank=8)) == want
    assert adapter_values_per_layer(SMOL, LoraSpec(rank=4, targets=("q_proj", "v_proj"))) == 4 * ((h + q) + (h + kv))


def test_each_die_counts_its_own_layers_adapters_gradients_and_adamw_state():
    plan = pipeline(4)
    spec = TrainSpec(LoraSpec(rank=8), seq_len=128, micro_batch=2, micro_batches=8)
    mem = train_memory(plan, spec)
    per_layer = adapter_values_per_layer(SMOL, spec.lora)
    assert sum(d.layers for d in mem.dies) == SMOL.num_layers
    for d, st in zip(mem.dies, plan.stages):
        assert d.base_weight_bytes == st.weight_bytes
        assert d.adapter_bytes == d.layers * per_layer * 4 == d.gradient_bytes
        assert d.optimizer_bytes == 2 * d.adapter_bytes  # two moments
    assert mem.trainable_values == per_layer * SMOL.num_layers


@pytest.mark.parametrize("m, want", [(8, [4, 3, 2, 1]), (2, [2, 2, 2, 1]), (1, [1, 1, 1, 1])])
def test_one_forward_one_backward_keeps_at_most_s_minus_position_micro_batches(m, want):
    mem = train_memory(pipeline(4), TrainSpec(seq_len=64, micro_batch=1, micro_batches=m))
    assert [d.in_flight for d in mem.dies] == want


def test_checkpointing_and_smaller_micro_batches_need_less():
    plan = pipeline(2)
    spec = TrainSpec(seq_len=256, micro_batch=4, micro_batches=4)
    full = train_memory(plan, spec).dies[0].activation_bytes
    assert train_memory(plan, replace(spec, checkpointing=True)).dies[0].activation_bytes < full / 4
    assert train_memory(plan, replace(spec, micro_batch=2)).dies[0].activation_bytes == pytest.approx(full / 2,
                                                                                                      rel=0.01)


def test_tensor_plans_say_they_do_not_train_yet():
    sysm = load_system("talk-4die-d2d")
    plan = compile_plan(SMOL, sysm, "int8", context=256, batch=1, prompt_tokens=64, split="tensor")
    with pytest.raises(TrainPlanError, match="tensor-split plans do not train yet.*--split pipeline"):
        train_memory(plan, TrainSpec())


@pytest.mark.parametrize("spec", [
    TrainSpec(seq_len=2048, micro_batch=16, micro_batches=4),
    TrainSpec(seq_len=4096, micro_batch=64, micro_batches=8),
    TrainSpec(LoraSpec(rank=1024), seq_len=64, micro_batch=1, micro_batches=1),
])
def test_a_plan_that_does_not_fit_is_refused_with_fixes_that_fit(spec):
    """The message names the die and the excess; every change it offers, applied, fits."""
    plan = pipeline(1, "talk-light-usb", capacity_gib=0.5)
    with pytest.raises(TrainPlanError) as e:
        check_fits(plan, spec)
    msg = str(e.value)
    assert re.search(r"does not fit die0 \(stage 0, 30 layers\): it needs [\d,]+ MiB of its 512 MiB, [\d,]+ MiB too "
                     r"many", msg), msg
    fixes = msg.split("What fits: ")[1].split("; or ")
    tried = 0
    for fix in fixes:
        change: dict = {}
        for flag, value in re.findall(r"--([a-z-]+)(?: (\d+))?", fix):
            if flag == "micro-batch":
                change["micro_batch"] = int(value)
            elif flag == "micro-batches":
                change["micro_batches"] = int(value)
            elif flag == "checkpointing":
                change["checkpointing"] = True
            elif flag == "seq-len":
                change["seq_len"] = int(value)
            elif flag == "rank":
                change["lora"] = replace(spec.lora, rank=int(value))
        if change:
            tried += 1
            assert check_fits(plan, replace(spec, **change)).fits, fix
    assert tried >= 1, msg
    assert fixes[-1].startswith("more dies")


@pytest.mark.parametrize("bad, match", [
    (dict(rank=0), "LoRA rank 0"), (dict(alpha=-1), "alpha"), (dict(dropout=1.0), "dropout"),
    (dict(targets=("q_proj", "lm_head")), "target modules"), (dict(targets=()), "target modules"),
])
def test_bad_lora_settings_are_named(bad, match):
    with pytest.raises(TrainPlanError, match=match):
        LoraSpec(**bad)


@pytest.mark.parametrize("bad", [dict(seq_len=1), dict(micro_batch=0), dict(micro_batches=True),
                                 dict(seq_len=10**9)])
def test_bad_step_settings_are_named(bad):
    with pytest.raises(TrainPlanError, match=next(iter(bad))):
        TrainSpec(**bad)
