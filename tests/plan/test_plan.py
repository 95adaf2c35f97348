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
    d["model"]["config"]["rope_theta"] = float("inf")
    with pytest.raises(ValueError, match="model.config.rope_theta"):
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
    plan_dict["model"]["config"]["num_layers"] = 0
    plan_dict["system"]["host"]["dram"]["capacity_gib"] = -1
    msg = _load_err(tmp_path, plan_dict)
    assert "model.config.num_layers" in msg and "system.host.dram.capacity_gib" in msg


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
