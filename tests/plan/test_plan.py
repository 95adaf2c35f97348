"""Plan files: every bad plan is one ChipfuseError naming the file, the field and the fix."""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import pytest

from chipfuse.errors import ChipfuseError
from chipfuse.plan.plan import Plan
from chipfuse.sim.predict import predict


@lru_cache(maxsize=8)
def _plan_json() -> str:
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system

    return compile_plan(load_model_config("smollm2"), load_system("talk-4die-d2d"), context=2048).to_json()


@pytest.fixture
def plan_dict() -> dict:
    return json.loads(_plan_json())


def _load_err(tmp_path, content) -> str:
    f = tmp_path / "p.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ChipfuseError) as e:
        predict(Plan.load(f))
    assert str(f) in str(e.value)
    return str(e.value)


def test_a_good_plan_loads_and_predicts(tmp_path, plan_dict):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(plan_dict))
    pred = predict(Plan.load(f))
    assert pred.decode_tokens_per_s > 0


@pytest.mark.parametrize("text, words", [("[1, 2]", "not a list"), ("3", "not a number"), ("null", "not a null"),
                                         ('"x"', "not a string")])
def test_top_level_must_be_an_object(tmp_path, text, words):
    msg = _load_err(tmp_path, text)
    assert "a plan file is a JSON object" in msg and words in msg


def test_non_utf8_directory_deep_and_huge(tmp_path, plan_dict):
    raw = json.dumps(plan_dict).encode()
    assert "offset 50" in _load_err(tmp_path, raw[:50] + b"\xff" + raw[50:])
    d = tmp_path / "dir.json"
    d.mkdir()
    with pytest.raises(ChipfuseError, match="is a directory"):
        Plan.load(d)
    assert "nested more than" in _load_err(tmp_path, "[" * 1000 + "]" * 1000)
    assert "too large" in _load_err(tmp_path, " " * (17 << 20) + "{}")


def test_infinity_and_nan_tokens_are_refused_with_their_line(tmp_path, plan_dict):
    plan_dict["prediction"]["ttft_s"] = float("inf")
    msg = _load_err(tmp_path, json.dumps(plan_dict, indent=2))
    assert "Infinity is not a number JSON allows" in msg and "line" in msg
    msg = _load_err(tmp_path, json.dumps(plan_dict).replace('"batch": 1', '"batch": 1e999'))
    assert "too large for a number" in msg


def test_a_plan_holding_inf_cannot_be_built_or_saved(plan_dict):
    plan_dict["prediction"]["decode_tokens_per_s"] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        Plan.model_validate(plan_dict)
    d = json.loads(_plan_json())
    d["models"][0]["config"]["rope_theta"] = float("inf")
    with pytest.raises(ValueError, match=r"models\[0\]\.config\.rope_theta"):
        Plan.model_validate(d)


def test_reversed_blocks(tmp_path, plan_dict):
    plan_dict["stages"][0]["blocks"] = [5, 2]
    msg = _load_err(tmp_path, plan_dict)
    assert "stages[0].blocks: [5, 2] should start at 0" in msg and "tile blocks 0..32" in msg


def test_empty_stages(tmp_path, plan_dict):
    plan_dict["stages"] = []
    assert "stages: a plan needs at least one stage" in _load_err(tmp_path, plan_dict)


def test_unknown_die(tmp_path, plan_dict):
    plan_dict["stages"][1]["die"] = "die9"
    msg = _load_err(tmp_path, plan_dict)
    assert "stages[1].die: unknown die 'die9'" in msg and "die0, die1, die2, die3" in msg


def test_stages_must_tile_the_blocks_in_order(tmp_path, plan_dict):
    plan_dict["stages"].pop()
    plan_dict["route"].pop(-2)
    plan_dict["prediction"] = None
    msg = _load_err(tmp_path, plan_dict)
    assert "the last stage must end at 32" in msg


def test_flags_and_layers_must_match_the_blocks(tmp_path, plan_dict):
    plan_dict["stages"][1]["has_embedding"] = True
    plan_dict["stages"][1]["layers"] = [0, 3]
    msg = _load_err(tmp_path, plan_dict)
    assert "stages[1].has_embedding: should be false" in msg and "stages[1].layers: [0, 3]" in msg


def test_negative_bytes_and_bools_for_numbers(tmp_path, plan_dict):
    plan_dict["stages"][0]["weight_bytes"] = -1
    plan_dict["stages"][0]["kv_bytes"] = True
    msg = _load_err(tmp_path, plan_dict)
    assert "stages[0].weight_bytes: Input should be greater than or equal to 0" in msg
    assert "stages[0].kv_bytes: expected a number, got true" in msg


@pytest.mark.parametrize("field, value, words", [
    ("context", 0, "greater than 0"), ("batch", -3, "greater than 0"), ("context", 10**8, "less than or equal"),
    ("prompt_tokens", 4000, "prompt_tokens 4000 exceeds context 2048")])
def test_workload_bounds(tmp_path, plan_dict, field, value, words):
    plan_dict["workload"][field] = value
    msg = _load_err(tmp_path, plan_dict)
    assert "workload" in msg and words in msg


def test_context_beyond_the_model(tmp_path, plan_dict):
    plan_dict["workload"]["context"] = 100_000
    assert "exceeds the model's max_position" in _load_err(tmp_path, plan_dict)


def test_route_naming_unknown_nodes(tmp_path, plan_dict):
    plan_dict["stages"][0]["route_in"] = ["host", "nowhere", "die0"]
    msg = _load_err(tmp_path, plan_dict)
    assert "stages[0].route_in: unknown node(s) 'nowhere'" in msg


def test_invalid_model_config_and_system_name_their_fields(tmp_path, plan_dict):
    plan_dict["models"][0]["config"]["num_layers"] = 0
    plan_dict["system"]["host"]["dram"]["capacity_gib"] = -1
    msg = _load_err(tmp_path, plan_dict)
    assert "models[0].config.num_layers" in msg and "system.host.dram.capacity_gib" in msg


def test_memory_bytes_must_match_the_system(tmp_path, plan_dict):
    plan_dict["stages"][0]["memory_bytes"] = 10**15
    assert "stages[0].memory_bytes" in _load_err(tmp_path, plan_dict)


def test_unknown_field_suggests_the_right_one(tmp_path, plan_dict):
    plan_dict["stagse"] = plan_dict.pop("stages")
    msg = _load_err(tmp_path, plan_dict)
    assert "stagse: unknown field; did you mean 'stages'?" in msg


def test_predict_refuses_a_plan_edited_after_it_was_built(plan_dict):
    plan = Plan.model_validate(plan_dict)
    plan.stages = []
    with pytest.raises(ChipfuseError, match="at least one stage"):
        predict(plan)
    plan = Plan.model_validate(copy.deepcopy(plan_dict))
    plan.stages[0].die = "die9"
    with pytest.raises(ChipfuseError, match="unknown die 'die9'"):
        predict(plan)
    plan = Plan.model_validate(copy.deepcopy(plan_dict))
    plan.system = {"name": "broken"}
    with pytest.raises(ChipfuseError, match="host: Field required"):
        predict(plan)


def test_save_is_atomic_and_round_trips(tmp_path, plan_dict):
    plan = Plan.model_validate(plan_dict)
    f = tmp_path / "out.json"
    plan.save(f)
    assert Plan.load(f) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(ChipfuseError, match="does not exist"):
        plan.save(tmp_path / "missing" / "out.json")


def test_predict_on_another_system_skips_the_plans_own_memory_figures(plan_dict):
    """Calibration and `chipfuse run` predict a plan on a measured system: memory_bytes may differ."""
    from chipfuse.hw.load import load_system

    other = load_system("talk-4die-pcie")
    assert predict(Plan.model_validate(plan_dict), system=other).decode_tokens_per_s > 0


# --- schema version 2: resolved formats, KV precision, version handling, shards, several models -------------

def _problem_lines(msg: str) -> list[str]:
    """The problem lines of a plan error (after the '<file>: invalid plan (n problem(s))' header)."""
    return [ln.strip() for ln in msg.splitlines()[1:]]


def _mixed_system(system_factory):
    """Three dies: one with everything, one without int4 or fp8 (falls back), one expanding int4 weights."""
    from chipfuse.hw.load import parse_system

    system = system_factory(3).model_dump(mode="json")
    system["die_types"]["plain"] = {"tops": {"int8": 16, "fp16": 4, "bf16": 4},
                                    "memory": system["die_types"]["npu"]["memory"]}
    system["die_types"]["expand"] = {"tops": {"fp16": 8, "fp32": 1}, "weight_only": ["int4", "int8"],
                                     "memory": system["die_types"]["npu"]["memory"]}
    system["dies"][1]["type"] = "plain"
    system["dies"][2]["type"] = "expand"
    return parse_system(system, "mixed dies")


MIXED = [("int4", None, ()), ("int8", "fp16", ()), ("fp8", None, ((3, "int4-g64"),)),
         ("int4-g64", "int8", ((1, "int8"), (2, "fp16"), (5, "fp8-e4m3"), (12, "int4-g128-sym"), (20, "bf16")))]


@pytest.mark.parametrize("default, head, blocks", MIXED)
def test_stage_formats_are_what_the_die_fallback_gives(system_factory, default, head, blocks):
    """Each stage's resolved formats equal die_recipe's for every block it holds (mixed recipes, fallback dies)."""
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.quant.formats import Recipe
    from chipfuse.sim.perf import die_recipe

    system = _mixed_system(system_factory)
    requested = Recipe.of(Recipe.of(default, head), None)
    requested = Recipe(requested.default, requested.head, blocks)
    plan = compile_plan(load_model_config("qwen2.5-0.5b"), system, requested, context=512, prompt_tokens=64)
    assert len(plan.stages) == 3
    for j, st in enumerate(plan.stages):
        want, got = die_recipe(system, st.die, plan.recipe()), plan.stage_recipe(j)
        assert got.default == want.default and st.format == want.default.name
        for b in range(*st.blocks):
            if 1 <= b <= 24:
                assert got.for_block(b) == want.for_block(b), (st.die, b)
        if st.has_embedding or st.has_lm_head:
            assert got.head == want.head and st.head_format == want.head.name
        else:
            assert st.head_format is None
        assert all(st.blocks[0] <= b < st.blocks[1] and f != st.format for b, f in st.block_formats)


def test_predict_reads_the_stage_formats_not_the_request(plan_dict):
    """Changing the requested recipe changes nothing predicted; changing a stage's format does."""
    plan = Plan.model_validate(plan_dict)
    base = predict(plan)
    plan.models[0].precision = "fp16"
    assert predict(plan) == base
    plan.stages[1].format = "int8"
    assert predict(plan).stages[1].read_bytes_per_step > base.stages[1].read_bytes_per_step


@pytest.mark.parametrize("kv", ["int8", "fp8", "q4"])
def test_unsupported_kv_precision_is_one_line_at_compile_and_in_a_plan_file(tmp_path, plan_dict, kv):
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.errors import SpecError
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system

    with pytest.raises(SpecError) as e:
        compile_plan(load_model_config("smollm2"), load_system("talk-4die-d2d"), context=512, kv_precision=kv)
    assert "\n" not in str(e.value) and "--kv-precision" in str(e.value) and "fp32, fp16, bf16" in str(e.value)
    plan_dict["workload"]["kv_precision"] = kv
    lines = _problem_lines(_load_err(tmp_path, plan_dict))
    assert len(lines) == 1 and lines[0].startswith("workload.kv_precision: ") and "fp32, fp16, bf16" in lines[0]


def test_kv_precision_aliases_become_the_name_the_runtime_holds():
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.hw.load import load_system
    from chipfuse.quant.formats import KV_PRECISIONS

    plan = compile_plan(load_model_config("smollm2"), load_system("talk-4die-d2d"), context=512,
                        kv_precision="float16")
    assert plan.workload.kv_precision == "fp16" and "fp16" in KV_PRECISIONS


@pytest.mark.parametrize("version, words", [(1, "schema_version: 1 is an older plan format"),
                                            (3, "schema_version: 3 is not supported"),
                                            (True, "schema_version: true is not supported")])
def test_other_schema_versions_are_one_line_naming_the_field(tmp_path, plan_dict, version, words):
    plan_dict["schema_version"] = version
    f = tmp_path / "p.json"
    f.write_text(json.dumps(plan_dict))
    with pytest.raises(ChipfuseError) as e:
        Plan.load(f)
    assert "\n" not in str(e.value) and words in str(e.value) and str(f) in str(e.value)


def test_a_format_the_die_does_not_hold_is_one_line_naming_the_field(tmp_path, system_factory):
    """A stage hand-edited to int4 on a die with no int4 in tops or weight_only."""
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config

    system = system_factory(2, tops={"fp16": 8, "bf16": 8})
    plan = compile_plan(load_model_config("smollm2"), system, "int4", context=512, prompt_tokens=64)
    d = json.loads(plan.to_json())
    s, e = d["stages"][1]["blocks"]
    d["stages"][1]["block_formats"] = [[s, "bf16"], [s + 1, "bf16"], [s + 2, "bf16"], [s + 3, "int4-g32"]]
    lines = _problem_lines(_load_err(tmp_path, d))
    assert lines == ["stages[1].block_formats[3]: int4-g32 is int4, which die1 does not hold: die1 supports fp16, "
                     "bf16 (tops) and expands none (weight_only); re-run `chipfuse plan`, which falls back to a "
                     "format the die has"]
    d["stages"][0]["head_format"] = "int8"
    assert _problem_lines(_load_err(tmp_path, d))[0].startswith("stages[0].head_format: int8 is int8, which die0")


def test_v2_round_trip_keeps_the_resolved_formats(tmp_path, system_factory):
    from chipfuse.compile.compiler import compile_plan
    from chipfuse.frontends import load_model_config
    from chipfuse.quant.formats import Recipe, get_format

    recipe = Recipe(get_format("int4-g64"), get_format("int8"), ((2, "int8"), (20, "fp16")))
    plan = compile_plan(load_model_config("qwen2.5-0.5b"), _mixed_system(system_factory), recipe, context=512,
                        prompt_tokens=64)
    f = tmp_path / "plan.json"
    plan.save(f)
    again = Plan.load(f)
    d = json.loads(f.read_text())
    assert again == plan and d["schema_version"] == 2 and [m["id"] for m in d["models"]] == ["m0"]
    assert {st["model"] for st in d["stages"]} == {"m0"} and {st["kind"] for st in d["stages"]} == {"layers"}
    assert any(st["block_formats"] for st in d["stages"])
    assert [again.stage_recipe(j) for j in range(3)] == [plan.stage_recipe(j) for j in range(3)]
    assert again.model.name == "qwen2.5-0.5b" and again.recipe() == recipe and again.block_formats == [
        (2, "int8"), (20, "fp16")]
    assert predict(again) == plan.prediction


def _sharded(plan_dict: dict) -> dict:
    """The smollm2 plan with stages 1 and 2 made one shard group (uneven: 9 heads in 3 KV groups over 2 dies)."""
    st1, st2, st3 = plan_dict["stages"][1:]
    blocks, layers = [st1["blocks"][0], st2["blocks"][1]], [st1["layers"][0], st2["layers"][1]]
    for k, (st, heads, kv, cols) in enumerate([(st1, [0, 6], [0, 2], [0, 1024]), (st2, [6, 3], [2, 1], [1024, 512])]):
        st.update(kind="shard", blocks=blocks, layers=layers,
                  shard={"group": ["die1", "die2"], "index": k, "heads": heads, "kv_heads": kv, "mlp_columns": cols,
                         "collective": "all-reduce"})
    st2["route_in"] = ["die0", "die1", "die2"]  # every die of the group takes the input from the previous stage
    st3["route_in"] = ["die1", "die2", "die3"]  # the group's output leaves from its first die
    plan_dict["prediction"] = None
    return plan_dict


def test_shard_stages_validate_and_are_predicted(tmp_path, plan_dict):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(_sharded(plan_dict)))
    plan = Plan.load(f)
    assert plan.stages[2].shard.heads == (6, 3)
    assert plan.unsupported() is None
    pred = predict(plan)
    group = pred.stages[1:3]
    assert group[0].decode_s == group[1].decode_s > 0 and "all-reduces" in group[0].reason
    assert pred.decode_tokens_per_s > 0


@pytest.mark.parametrize("edit, words", [
    (lambda s: s[2]["shard"].update(heads=[6, 2]), "stages[2].shard.heads: [6, 2] should be [6, 3]"),
    (lambda s: s[2]["shard"].update(kv_heads=[1, 2], heads=[3, 6]), "stages[1].shard.kv_heads: the group's spans"),
    (lambda s: s[2]["shard"].update(mlp_columns=[1024, 600]), "beyond the model's 1536"),
    (lambda s: s[2]["shard"].update(index=0), "stages[2].shard.index: 0 should be the place of die2"),
    (lambda s: s[2].update(shard=None), 'stages[2].shard: a "shard" stage needs its shard'),
    (lambda s: s[0].update(shard=s[1]["shard"]), 'stages[0].shard: a "layers" stage holds whole layers')])
def test_bad_shards_name_the_field(tmp_path, plan_dict, edit, words):
    d = _sharded(plan_dict)
    edit(d["stages"])
    assert words in _load_err(tmp_path, d)


def _two_models(plan_dict: dict) -> dict:
    """The smollm2 plan plus a second copy of the model, whole on die0 beside the first model's stage 0."""
    m1 = dict(plan_dict["models"][0], id="m1")
    first, last = plan_dict["stages"][0], plan_dict["stages"][-1]
    whole = dict(first, index=4, model="m1", blocks=[0, 32], layers=[0, 29], has_lm_head=True,
                 weight_bytes=first["weight_bytes"] + 3 * last["weight_bytes"], kv_bytes=3 * first["kv_bytes"])
    plan_dict["models"].append(m1)
    plan_dict["stages"].append(whole)
    plan_dict["route"].insert(-1, "die0")
    plan_dict["prediction"] = None
    return plan_dict


def test_several_models_may_share_a_die_but_are_not_predicted(tmp_path, plan_dict):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(_two_models(plan_dict)))
    plan = Plan.load(f)
    assert [st.die for st in plan.stages if st.die == "die0"] == ["die0", "die0"]
    assert plan.model_by_id("m1").name == plan.models[0].name
    with pytest.raises(ChipfuseError, match="several models are not supported by this chipfuse yet"):
        predict(plan)
    with pytest.raises(ChipfuseError, match="holds 2 models"):
        _ = plan.model


def test_one_models_pipeline_still_uses_each_die_once(tmp_path, plan_dict):
    d = _two_models(plan_dict)
    d["stages"][-1]["model"] = "m9"
    assert "stages[4].model: unknown model 'm9'" in _load_err(tmp_path, d)
    d = json.loads(_plan_json())
    d["stages"][1]["die"] = "die0"
    d["stages"][1]["route_in"] = ["die0"]
    assert "stages[1].die: die0 holds two stages of model m0" in _load_err(tmp_path, d)
    d = _two_models(json.loads(_plan_json()))
    d["models"][1]["id"] = "m0"
    assert "models[1].id: 'm0' is used twice" in _load_err(tmp_path, d)


def test_stages_sharing_a_die_must_fit_it_together(tmp_path, plan_dict):
    d = _two_models(plan_dict)
    d["stages"][-1]["kv_bytes"] = d["stages"][-1]["memory_bytes"] - d["stages"][-1]["weight_bytes"]
    assert "stages[0, 4]: weights, KV cache and workspace take" in _load_err(tmp_path, d)
