"""The compiler: fitting plans, clear overflow errors, precision fallback, heterogeneous dies."""

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.errors import FitError, SpecError
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system, parse_system
from chipfuse.plan.plan import Plan


def test_llama2_7b_fits_two_dies_and_every_die_respects_its_memory():
    plan = compile_plan(load_model_config("llama-2-7b"), load_system("talk-heavy-2die-pcie"), "int4")
    assert plan.fits and len(plan.stages) == 2
    assert plan.stages[0].has_embedding and plan.stages[-1].has_lm_head
    layers = [i for s in plan.stages for i in range(s.layers[0], s.layers[1] + 1)]
    assert layers == list(range(32))
    for s in plan.stages:
        assert s.used_bytes <= s.memory_bytes


def test_llama2_70b_on_one_small_die_names_the_die_the_overflow_and_the_fix():
    with pytest.raises(FitError) as e:
        compile_plan(load_model_config("llama-2-70b"), load_system("talk-light-pcie"), "int4")
    msg = str(e.value)
    assert "does not fit" in msg and "die0" in msg and "over by" in msg
    assert "more dies:" in msg and "more DRAM:" in msg and "lower precision:" in msg


def test_overflow_amount_is_exact(system_factory):
    """The reported overflow is the die's need minus its capacity, in bytes."""
    system = system_factory(1, capacity_gib=1)
    with pytest.raises(FitError) as e:
        compile_plan(load_model_config("llama-3.2-1b"), system, "fp16", context=256, prompt_tokens=16)
    msg = str(e.value)
    ok = compile_plan(load_model_config("llama-3.2-1b"), system_factory(1, capacity_gib=8), "fp16",
                      context=256, prompt_tokens=16).stages[0]
    over = ok.used_bytes - 1 * 1024**3
    reported = int(msg.split("over by")[1].split("(")[1].split(" bytes")[0].replace(",", ""))
    assert abs(reported - over) <= 2  # workspace rounding


def test_the_suggested_fixes_really_fit(system_factory):
    cfg = load_model_config("llama-3.1-8b")
    with pytest.raises(FitError) as e:
        compile_plan(cfg, system_factory(2, capacity_gib=3), "int8", context=2048)
    msg = str(e.value)
    n = int(msg.split("more dies: ")[1].split(" ")[0])
    compile_plan(cfg, system_factory(n, capacity_gib=3), "int8", context=2048)
    with pytest.raises(FitError):
        compile_plan(cfg, system_factory(n - 1, capacity_gib=3), "int8", context=2048)
    lower = msg.split("lower precision: ")[1].split(" fits")[0]
    compile_plan(cfg, system_factory(2, capacity_gib=3), lower, context=2048)


def test_die_without_the_precision_falls_back_with_a_warning_or_fails_when_strict(system_factory):
    system = system_factory(1, tops={"int8": 32, "fp16": 8})
    plan = compile_plan(load_model_config("qwen2.5-0.5b"), system, "int4", context=512, prompt_tokens=64)
    assert plan.stages[0].format == "int8"
    assert any("no int4 support" in w for w in plan.warnings)
    with pytest.raises(SpecError, match="strict"):
        compile_plan(load_model_config("qwen2.5-0.5b"), system, "int4", context=512, prompt_tokens=64, strict=True)


def test_faster_die_gets_more_layers(base_system):
    base_system["die_types"]["fast"] = {
        "tops": {"int4": 64, "int8": 32, "fp16": 8},
        "memory": {"own": {"type": "LPDDR5", "bus_width_bits": 128, "data_rate_mtps": 6400, "capacity_gib": 8}}}
    base_system["dies"].append({"name": "die1", "type": "fast"})
    base_system["links"].append({"between": ["die0", "die1"], "kind": "pcie", "gen": 3, "lanes": 4})
    system = parse_system(base_system, "t")
    plan = compile_plan(load_model_config("llama-3.2-3b"), system, "int4", context=1024, batch=2)
    layers = {s.die: s.layers[1] - s.layers[0] + 1 for s in plan.stages}
    assert layers["die1"] > 1.3 * layers["die0"]
    # and the split balances the two stages' decode time better than an even split would
    times = [sp.decode_s for sp in plan.prediction.stages]
    assert max(times) / min(times) < 1.3


def test_plan_json_round_trip_and_schema(tmp_path):
    plan = compile_plan(load_model_config("smollm2-135m"), load_system("talk-heavy-2die-pcie"), "int8")
    p = tmp_path / "plan.json"
    plan.save(p)
    again = Plan.load(p)
    assert again == plan
    import json

    d = json.loads(p.read_text())
    assert d["schema"] == "chipfuse.plan" and d["schema_version"] == 2
    assert {"fits", "prediction", "stages"} <= set(d)
    assert {"ttft_s", "decode_tokens_per_s"} <= set(d["prediction"])
    assert {"die", "layers", "weight_bytes", "kv_bytes"} <= set(d["stages"][0])


def test_sim_recomputes_the_same_prediction_from_the_plan_alone():
    from chipfuse.sim.predict import predict

    plan = compile_plan(load_model_config("qwen2.5-1.5b"), load_system("talk-heavy-2die-pcie"), "int4")
    assert predict(plan) == plan.prediction


def test_more_dies_than_blocks_is_explained(system_factory):
    with pytest.raises(SpecError, match="--dies"):
        compile_plan(load_model_config("smollm2-135m"), system_factory(2), "int4", max_dies=3)


def test_mixed_precision_recipe_is_planned_recorded_and_reloaded(tmp_path):
    from chipfuse.quant.formats import Recipe, get_format, load_recipe, save_recipe

    cfg = load_model_config("qwen2.5-0.5b")
    system = load_system("talk-heavy-2die-pcie")
    uniform = compile_plan(cfg, system, "int4-g64", context=1024)
    recipe = Recipe(get_format("int4-g64"), get_format("int8"), tuple((b, "int8") for b in range(1, 7)))
    f = tmp_path / "recipe.json"
    save_recipe(recipe, f)
    mixed = compile_plan(cfg, system, load_recipe(f), context=1024)
    assert mixed.block_formats == [(b, "int8") for b in range(1, 7)]
    # six layers at 8 bits instead of ~4.5: the first stage holds more bytes
    extra = sum(s.weight_bytes for s in mixed.stages) - sum(s.weight_bytes for s in uniform.stages)
    layer_params = 2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864  # q,o + k,v + gate,up,down
    assert extra == pytest.approx(6 * layer_params * (8.0 + 16 / 896 - 4.5) / 8, rel=0.02)
    p = tmp_path / "plan.json"
    mixed.save(p)
    assert Plan.load(p).recipe() == mixed.recipe()
    from chipfuse.sim.predict import predict

    assert predict(Plan.load(p)) == mixed.prediction
