"""The fast numeric core equals the full planner (compile_plan + predict + system_cost) on configurations drawn
at random from a space that exercises every path: own and shared DRAM, dies reading it at different rates,
pipeline and tensor splits, precision fallback, designs that cannot be built or do not fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chipfuse.explore.core import Core, check_against_planner
from chipfuse.explore.space import designs, load_space
from chipfuse.frontends import load_model_config

SPACE = load_space(Path(__file__).with_name("space_small.yaml"))
DESIGNS = designs(SPACE)
# qwen2.5-0.5b: 2 KV heads (uneven over 3 dies); gemma-2-2b: sliding windows; smollm2-135m: tied embeddings
MODELS = {m: load_model_config(m) for m in ("smollm2-135m", "qwen2.5-0.5b", "gemma-2-2b")}
CORE = Core(SPACE)
FIELDS = ("decode_tokens_per_s", "ttft_s", "j_per_token", "power_w", "peak_power_w", "cost_usd", "dies_used")


def _same(design, model: str, precision: str, split: str) -> tuple[bool, bool]:
    fast = CORE.evaluate(design, model, MODELS[model], precision, split)
    full = check_against_planner(SPACE, design, MODELS[model], precision, split)
    assert fast.ok == full.ok, (design.label, model, precision, split, fast.problem, full.problem)
    if fast.ok:
        for f in FIELDS:
            a, b = getattr(fast, f), getattr(full, f)
            assert math.isclose(a, b, rel_tol=1e-9), (f, a, b, design.label, model, precision, split)
    return fast.ok, fast.problem.startswith("cannot be built")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.sampled_from(DESIGNS), model=st.sampled_from(sorted(MODELS)), precision=st.sampled_from(SPACE.precisions),
       tensor=st.booleans())
def test_the_numeric_core_equals_the_full_planner(d, model, precision, tensor):
    split = "tensor" if tensor and d.dies > 1 else "pipeline"
    _same(d, model, precision, split)


@pytest.mark.parametrize("label_part, split", [
    ("slowdies", "pipeline"),  # shared DRAM behind a slower die-to-die link: the planner's own split runs
    ("slowdies", "tensor"),  # the same, shards sized to each die's rate
    ("usb", "pipeline"),  # a star of USB dies, 3-4 of them more than the SoC's ports
    ("d2d", "tensor"),  # a ring in one package (3 dies: a package holds 1, 2 or 4)
])
def test_every_path_is_checked(label_part, split):
    """Each special path of the core, on every design it covers, for one model and precision."""
    ran, refused = 0, 0
    for d in DESIGNS:
        if d.link != label_part or (split == "tensor" and d.dies < 2):
            continue
        ok, unbuilt = _same(d, "qwen2.5-0.5b", "int8", split)
        ran += ok
        refused += unbuilt
    assert ran > 0
    if label_part in ("usb", "d2d"):
        assert refused > 0


def test_dies_sharing_dram_behind_slow_links_read_at_different_rates():
    """The case the closed form cannot take: the core runs the planner's split on its arrays."""
    d = next(x for x in DESIGNS if x.link == "slowdies" and x.memory == "shared-1g" and x.dies == 3
             and x.die_type == "medium")
    core = Core(SPACE)
    f = core.evaluate(d, "smollm2-135m", MODELS["smollm2-135m"], "int8")
    assert f.ok and core.dp, "the split path was not taken"


SPACE_OUT = SPACE.model_copy(update={"workload": SPACE.workload.model_copy(update={"output_tokens": 300})})
CORE_OUT = Core(SPACE_OUT)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(d=st.sampled_from(DESIGNS), model=st.sampled_from(sorted(MODELS)), precision=st.sampled_from(SPACE.precisions),
       tensor=st.booleans())
def test_decode_at_the_mean_position_equals_the_planners_too(d, model, precision, tensor):
    """With output_tokens the decode step attends to prompt + output/2 tokens, in the core as in the planner."""
    split = "tensor" if tensor and d.dies > 1 else "pipeline"
    fast = CORE_OUT.evaluate(d, model, MODELS[model], precision, split)
    full = check_against_planner(SPACE_OUT, d, MODELS[model], precision, split)
    assert fast.ok == full.ok, (fast.problem, full.problem)
    if fast.ok:
        for f in FIELDS:
            assert math.isclose(getattr(fast, f), getattr(full, f), rel_tol=1e-9), f
        assert fast.decode_tokens_per_s >= CORE.evaluate(d, model, MODELS[model], precision, split).decode_tokens_per_s
