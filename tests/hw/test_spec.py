"""System files: presets load and cite their numbers; wrong files get a clear error."""

import copy
from typing import Literal, get_origin

import pytest
import yaml

from chipfuse.errors import SpecError
from chipfuse.hw.load import PRESET_DIR, load_system, parse_system, preset_names
from chipfuse.hw.spec import UNIT_RANGES, System, numeric_annotation, unit_range


def test_every_preset_loads_and_is_named_after_its_file():
    names = preset_names()
    assert names
    for name in names:
        assert load_system(name).name == name


def _numeric_paths(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if prefix == "" and k == "sources":
                continue
            yield from _numeric_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numeric_paths(v, f"{prefix}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield prefix


def test_every_number_in_a_preset_cites_a_source_or_says_assumed():
    """Topology and link numbers (PCIe gen/lanes) are choices, the rest are facts to cite."""
    for name in preset_names():
        data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
        sources = data.get("sources", {})
        if "device" in data and "host" not in data:  # a quick device: its facts, each with a source
            assert set(sources) >= {"tops", "dram"}, f"{name}: a quick device cites its tops and dram"
            continue
        for path in _numeric_paths(data):
            if path.startswith(("links", "schema_version", "packages", "boards")) or ".ports" in path:
                continue
            clean = path.split("[")[0]
            assert any(clean == k or clean.startswith(k + ".") for k in sources), f"{name}: {path} has no source"


def test_required_preset_families_exist():
    names = set(preset_names())
    talk = [n for n in names if n.startswith("talk-")]
    assert len(talk) >= 8
    real = names - set(talk)
    assert len(real) >= 6
    for n in talk:
        s = load_system(n)
        assert len(s.dies) in (1, 2, 4)
    kinds = {lk.kind for n in talk for lk in load_system(n).links}
    assert {"pcie", "usb", "d2d-package", "d2d-pcb"} <= kinds
    mem = {("own" if load_system(n).die_type(d).memory.own else "shared") for n in talk for d in load_system(n).die_names}
    assert mem == {"own", "shared"}


def _err(data) -> str:
    with pytest.raises(SpecError) as e:
        parse_system(data, "bad.yaml")
    return str(e.value)


def test_unknown_field_names_the_path_and_suggests_the_right_one(base_system):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["sram_mb"] = 8
    msg = _err(d)
    assert "bad.yaml" in msg and "die_types.npu.sram_mb" in msg and "sram_mib" in msg


def test_dram_rate_outside_the_standard_is_caught_with_the_accepted_range(base_system):
    d = copy.deepcopy(base_system)
    d["host"]["dram"]["data_rate_mtps"] = 64000
    msg = _err(d)
    assert "host.dram" in msg and "64000" in msg and "1600-4266" in msg


def test_bad_link_values_name_what_is_accepted(base_system):
    d = copy.deepcopy(base_system)
    d["links"][0]["lanes"] = 3
    msg = _err(d)
    assert "links[0]" in msg and "1, 2, 4, 8, 16" in msg
    d = copy.deepcopy(base_system)
    d["links"][0]["kind"] = "ethernet"
    msg = _err(d)
    assert "links[0].kind" in msg and "'pcie'" in msg and "ethernet" in msg


def test_link_to_unknown_node_and_disconnected_die(base_system):
    d = copy.deepcopy(base_system)
    d["links"][0]["between"] = ["host", "die9"]
    assert "unknown node 'die9'" in _err(d)
    d = copy.deepcopy(base_system)
    d["dies"].append({"name": "die1", "type": "npu"})
    assert "not connected to the host: die1" in _err(d)


def test_host_ports_limit_links(base_system):
    d = copy.deepcopy(base_system)
    d["links"][0].update(gen=5, lanes=16)
    assert "exceeds the host's ports" in _err(d)


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "sys.yaml"
    f.write_text("name: x\nhost: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_system(f)
    assert str(f) in str(e.value) and "line" in str(e.value)


def test_unknown_preset_suggests_close_names():
    with pytest.raises(SpecError) as e:
        load_system("talk-heavy-2die-pcei")
    assert "talk-heavy-2die-pcie" in str(e.value)


def test_bandwidth_from_bus_width_and_rate(base_system):
    s = parse_system(base_system, "t")
    # 64-bit LPDDR5-6400 = 51.2 GB/s peak, 0.75 efficiency by default
    assert s.die_type("die0").memory.own.peak_bytes_per_s == pytest.approx(51.2e9)
    assert s.die_bandwidth_bytes_per_s("die0") == pytest.approx(51.2e9 * 0.75)


def test_shared_memory_bandwidth_is_what_the_display_leaves(base_system):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["memory"] = {"shared": {"capacity_gib": 2, "bandwidth_share": 1.0}}
    d["host"]["traffic"] = {"display_width_px": 1920, "display_height_px": 1080, "refresh_hz": 60}
    pcie = parse_system(d, "t")
    # over PCIe gen3 x4 the die reads host DRAM no faster than the link carries
    assert pcie.die_bandwidth_bytes_per_s("die0") == pytest.approx(4 * 8e9 * 128 / 130 / 8 * 0.8)
    d["links"][0] = {"between": ["host", "die0"], "kind": "on-chip"}
    s = parse_system(d, "t")
    free = 12.8e9 * 0.75 - 1920 * 1080 * 4 * 60
    assert s.die_bandwidth_bytes_per_s("die0") == pytest.approx(free)
    d["die_types"]["npu"]["memory"]["shared"]["capacity_gib"] = 3.5
    assert "exceed host.dram.capacity_gib" in _err(d)


def test_system_round_trips_through_json(base_system):
    s = parse_system(base_system, "t")
    assert System.model_validate(s.model_dump(mode="json")) == s


# --- robustness: every bad system file is one clear SpecError (found by tests/fuzz/cat_system.py) ---


def _load_text(tmp_path, raw: bytes | str) -> str:
    f = tmp_path / "sys.yaml"
    f.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    with pytest.raises(SpecError) as e:
        load_system(f)
    assert str(f) in str(e.value)
    return str(e.value)


def _preset_text() -> str:
    return (PRESET_DIR / "talk-4die-d2d.yaml").read_text()


def test_non_utf8_bytes_name_the_offset(tmp_path):
    text = _preset_text().encode()
    msg = _load_text(tmp_path, text[:100] + b"\xff" + text[100:])
    assert "not UTF-8" in msg and "offset 100" in msg and "0xff" in msg


def test_deep_nesting_is_refused_before_parsing(tmp_path):
    msg = _load_text(tmp_path, "name: " + "[" * 1000 + "]" * 1000 + "\n")
    assert "nested more than" in msg and "line 1" in msg
    msg = _load_text(tmp_path, "name: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n")
    assert "nested more than" in msg


def test_directory_and_missing_and_huge_files(tmp_path):
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(SpecError, match="is a directory"):
        load_system(d)
    with pytest.raises(SpecError, match="no such system file"):
        load_system(tmp_path / "nope.yaml")
    msg = _load_text(tmp_path, "# pad\n" * 300_000)
    assert "too large" in msg and "1.0 MiB" in msg


def test_alias_bomb_and_python_tags_are_refused(tmp_path):
    bomb = "a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9))
    assert "aliases" in _load_text(tmp_path, bomb + _preset_text())
    msg = _load_text(tmp_path, _preset_text().replace("name: talk-4die-d2d", "name: !!python/object/apply:os.getcwd []"))
    assert "not valid YAML" in msg


def test_a_key_written_twice_is_refused(tmp_path):
    text = _preset_text().replace("schema_version: 1", "schema_version: 1\nschema_version: 1")
    msg = _load_text(tmp_path, text)
    assert "'schema_version' appears twice" in msg and "line" in msg


@pytest.mark.parametrize("value, words", [
    (float("inf"), "finite"), (float("nan"), "finite"), (1e300, "between 1e-06 and 1e+06 GiB"),
    (5e-324, "between 1e-06 and 1e+06 GiB"), (True, "expected a number, got true"),
    ("896", "without quotes"), ("1e300", "with a dot and a sign"), (-1, "between"), (0, "between")])
def test_capacity_must_be_a_plausible_number(base_system, value, words):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["memory"]["own"]["capacity_gib"] = value
    msg = _err(d)
    assert "die_types.npu.memory.own.capacity_gib" in msg and words in msg


def test_inf_nan_in_yaml_text_are_refused(tmp_path):
    for bad, words in ((".inf", "finite"), ("-.inf", "finite"), (".nan", "finite"), ("1.0e+300", "GiB"),
                       ("5.0e-324", "GiB"), ("1e300", "with a dot and a sign"), ("true", "got true")):
        msg = _load_text(tmp_path, _preset_text().replace("capacity_gib: 8", f"capacity_gib: {bad}", 1))
        assert "capacity_gib" in msg and words in msg, msg


def test_booleans_are_not_numbers_anywhere(base_system):
    d = copy.deepcopy(base_system)
    d["host"]["cpu"]["cores"] = True
    d["links"][0]["lanes"] = True
    d["host"]["reserved_gib"] = False
    msg = _err(d)
    assert "host.cpu.cores: expected a number, got true" in msg
    assert "links[0].lanes: expected a number, got true" in msg
    assert "host.reserved_gib: expected a number, got false" in msg


def test_tops_and_energies_name_the_precision_and_the_range(base_system):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["tops"]["int8"] = float("inf")
    d["die_types"]["npu"]["tops"]["fp16"] = 1e300
    d["die_types"]["npu"]["power"] = {"pj_per_op": {"int8": -1}, "static_w": -0.5}
    msg = _err(d)
    assert "die_types.npu.tops.int8: must be a finite number" in msg
    assert "die_types.npu.tops.fp16: must be between 1e-06 and 1e+06 TOPS" in msg
    assert "die_types.npu.power.pj_per_op.int8: must be 0 or between" in msg and "pJ" in msg
    assert "die_types.npu.power.static_w: must be 0 or between" in msg and " W " in msg


def test_fractions_and_times_have_bounds(base_system):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["compute_efficiency"] = 5e-324
    d["die_types"]["npu"]["op_overhead_s"] = 1e9
    d["links"][0]["latency_us"] = -3
    msg = _err(d)
    assert "compute_efficiency: must be between 0.001 and 1" in msg
    assert "op_overhead_s: must be 0 or between 1e-12 and 10 s" in msg
    assert "links[0].latency_us: must be 0 or between" in msg and "us" in msg


def test_pcie_fields_on_other_links_and_negative_lanes(base_system):
    d = copy.deepcopy(base_system)
    d["host"]["ports"].append({"kind": "usb", "usb": "usb4"})
    d["links"][0] = {"between": ["host", "die0"], "kind": "usb", "usb": "usb4", "gen": 3, "lanes": 4}
    msg = _err(d)
    assert "links[0]" in msg and "describe PCIe only; remove them" in msg
    d["links"][0] = {"between": ["host", "die0"], "kind": "pcie", "gen": 3, "lanes": -4}
    assert "links[0].lanes: Input should be greater than or equal to 1" in _err(d)
    d["links"][0] = {"between": ["host", "die0"], "kind": "d2d-pcb", "usb": "usb4"}
    assert "'usb' names a USB generation; remove it" in _err(d)


def test_display_traffic_that_eats_all_host_bandwidth_is_refused_for_shared_dies(base_system):
    d = copy.deepcopy(base_system)
    d["die_types"]["npu"]["memory"] = {"shared": {"capacity_gib": 1}}
    d["host"]["traffic"] = {"display_width_px": 100000, "display_height_px": 100000, "refresh_hz": 1000}
    msg = _err(d)
    assert "host.traffic takes" in msg and "give the dies their own DRAM" in msg


def test_huge_lists_are_bounded(base_system):
    d = copy.deepcopy(base_system)
    d["dies"] = [{"name": f"d{i}", "type": "npu"} for i in range(5000)]
    assert "dies: List should have at most 256 items" in _err(d)


def test_long_bad_values_are_cut_short(base_system):
    d = copy.deepcopy(base_system)
    d["name"] = ["x"]
    d["host"]["name"] = 10**400
    msg = _err(d)
    assert len(msg) < 600 and "chars)" in msg


def test_every_number_field_has_a_finite_range():
    """A new number field must get a unit suffix with a range (UNIT_RANGES) or an explicit upper bound."""
    from annotated_types import Le, Lt

    from chipfuse.hw import compact, spec

    for model in [*vars(spec).values(), *vars(compact).values()]:
        if not (isinstance(model, type) and issubclass(model, spec.Strict) and model is not spec.Strict):
            continue
        for name, f in model.model_fields.items():
            if not numeric_annotation(f.annotation) or name == "schema_version":
                continue
            bounded = (unit_range(name) is not None or any(isinstance(m, (Le, Lt)) for m in f.metadata)
                       or get_origin(f.annotation) is Literal)
            assert bounded, f"{model.__name__}.{name} has no upper bound; add a unit suffix or le="
    assert all(lo > 0 and hi < 1e10 for _, lo, hi, _ in UNIT_RANGES)


def test_every_preset_is_within_the_new_ranges():
    for name in preset_names():
        assert load_system(name).name == name
