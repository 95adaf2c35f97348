import copy

"""System files: presets load and cite their numbers; wrong files get a clear error."""

import pytest
import yaml

from chipfuse.errors import SpecError
from chipfuse.hw.load import PRESET_DIR, load_system, parse_system, preset_names
from chipfuse.hw.spec import System


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
        for path in _numeric_paths(data):
            if path.startswith(("links", "schema_version", "packages")) or ".ports" in path:
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
