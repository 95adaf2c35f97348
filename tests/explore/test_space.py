"""Space files and targets: a typo, a bad value or an empty option list is one clear message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chipfuse.errors import SpecError
from chipfuse.explore.space import design_system, designs, load_space
from chipfuse.explore.sweep import count as count_configs
from chipfuse.explore.target import parse_target

SMALL = Path(__file__).with_name("space_small.yaml")


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def _data() -> dict:
    return yaml.safe_load(SMALL.read_text(encoding="utf-8"))


def test_a_misspelt_key_names_the_key_and_the_nearest_one(tmp_path):
    d = _data()
    d["die_count"] = d.pop("die_counts")
    with pytest.raises(SpecError) as e:
        load_space(_write(tmp_path, d))
    assert "die_count" in str(e.value) and "die_counts" in str(e.value)


def test_a_misspelt_precision_is_named_with_a_suggestion(tmp_path):
    d = _data()
    d["precisions"] = ["int4", "in8"]
    with pytest.raises(SpecError, match=r"precisions.*'in8'.*did you mean int8"):
        load_space(_write(tmp_path, d))


@pytest.mark.parametrize("field", ["socs", "die_types", "die_counts", "links", "memories", "precisions"])
def test_an_empty_option_list_is_refused_by_name(tmp_path, field):
    d = _data()
    d[field] = {} if isinstance(d[field], dict) else []
    with pytest.raises(SpecError, match=field):
        load_space(_write(tmp_path, d))


def test_memory_belongs_to_memories_not_to_a_die_type(tmp_path):
    d = _data()
    d["die_types"]["medium"]["memory"] = {"shared": {"capacity_gib": 1}}
    with pytest.raises(SpecError, match="leave out `memory`"):
        load_space(_write(tmp_path, d))


@pytest.mark.parametrize("field, value", [("host_threads", 2), ("step_overhead_s", 5e-4), ("collective_latency_s", 3e-4)])
def test_a_die_type_with_emulated_die_fields_is_refused_by_name(tmp_path, field, value):
    """Fields only `chipfuse probe` sets for dies emulated on the host's CPU: the fast core does not model them,
    so a space refuses them (naming the die type and the field) rather than disagree with the planner."""
    d = _data()
    d["die_types"]["medium"][field] = value
    with pytest.raises(SpecError, match=f"medium: leave out {field}: they describe dies emulated"):
        load_space(_write(tmp_path, d))
    d["die_types"]["medium"][field] = 0 if field == "step_overhead_s" else None  # the silicon default is fine
    load_space(_write(tmp_path, d))


def test_a_chain_needs_its_die_to_die_link(tmp_path):
    d = _data()
    del d["links"]["pcie-chain"]["dies"]
    with pytest.raises(SpecError, match="links.pcie-chain.*give `dies`"):
        load_space(_write(tmp_path, d))


def test_an_unknown_preset_for_a_soc_says_so(tmp_path):
    d = _data()
    d["socs"]["a55-d2d"] = "talk-4die-d2"
    with pytest.raises(SpecError, match=r"socs.a55-d2d.*did you mean talk-4die-d2d"):
        load_space(_write(tmp_path, d))


def test_not_a_mapping(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(SpecError, match="YAML mapping with socs"):
        load_space(p)


def test_the_space_counts_its_designs_and_configurations():
    sp = load_space(SMALL)
    ds = designs(sp)
    # 2 SoCs x 2 die types x 4 counts x 3 memories x (3 links without a package + 1 with 2 substrates)
    assert len(ds) == 2 * 2 * 4 * 3 * (3 + 2)
    tensor_ok = sum(1 for d in ds if d.dies > 1)
    assert count_configs(sp, 2) == (len(ds) + tensor_ok) * 2 * len(sp.precisions)


def test_a_design_builds_as_an_ordinary_system():
    sp = load_space(SMALL)
    d = next(x for x in designs(sp) if x.link == "d2d" and x.dies == 4 and x.memory == "shared-1g"
             and x.soc == "a55-4k")
    s = design_system(sp, d)
    assert len(s.dies) == 4 and s.packages[0].substrate == d.substrate
    assert s.die_type("die0").memory.shared.bandwidth_share == pytest.approx(0.25)  # the host's split evenly
    assert sum(1 for lk in s.links if lk.kind == "d2d-package") == 4  # a ring


def test_targets_parse_and_bad_ones_are_named():
    b = parse_target("decode>=10, power<=10,cost<150")
    assert [str(x) for x in b] == ["decode>=10", "power<=10", "cost<150"]
    assert b[0].holds(10) and not b[0].holds(9.99) and b[0].shortfall(8) == pytest.approx(0.2)
    with pytest.raises(SpecError, match="did you mean decode"):
        parse_target("decod>=10")
    with pytest.raises(SpecError, match="METRIC>=NUMBER"):
        parse_target("decode=10")
    with pytest.raises(SpecError, match="not a number"):
        parse_target("power<=ten")
    with pytest.raises(SpecError, match="finite"):
        parse_target("power<=inf")


def test_a_design_that_cannot_be_built_says_why():
    sp = load_space(SMALL)
    d = next(x for x in designs(sp) if x.link == "d2d" and x.dies == 4 and x.memory == "shared-1g"
             and x.soc == "a55-d2d")  # 4 GiB host DRAM: 4 x 1 GiB shared + 1 GiB reserved
    with pytest.raises(SpecError, match="exceed host.dram.capacity_gib"):
        design_system(sp, d)
