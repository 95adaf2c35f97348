"""Compact system forms: N boards on a switch and packages of N dies expand to exactly the long form."""

import copy

import pytest
import yaml

from chipfuse.errors import SpecError
from chipfuse.hw.load import PRESET_DIR, load_system, parse_system
from chipfuse.hw.spec import System


def _preset(name: str) -> dict:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())


def _err(data) -> str:
    with pytest.raises(SpecError) as e:
        parse_system(data, "bad.yaml")
    return str(e.value)


def _same(a: System, b: System) -> None:
    assert a == b
    assert a.model_dump() == b.model_dump()
    assert a.die_names == b.die_names and a.switches == b.switches


CLUSTER_LONG = """
dies:
  - {name: b0.cpu, type: bcm2712-cpu}
  - {name: b1.cpu, type: bcm2712-cpu}
  - {name: b2.cpu, type: bcm2712-cpu}
  - {name: b3.cpu, type: bcm2712-cpu}
switches: [eth-switch]
links:
  - {between: [host, b0.cpu], kind: on-chip}
  - {between: [b0.cpu, eth-switch], kind: ethernet-1g}
  - {between: [b1.cpu, eth-switch], kind: ethernet-1g}
  - {between: [b2.cpu, eth-switch], kind: ethernet-1g}
  - {between: [b3.cpu, eth-switch], kind: ethernet-1g}
"""


def test_the_cluster_preset_is_its_hand_written_long_form():
    compact = _preset("cluster-4x-rpi5-1gbe")
    long = {k: v for k, v in compact.items() if k not in ("boards", "links")} | yaml.safe_load(CLUSTER_LONG)
    _same(load_system("cluster-4x-rpi5-1gbe"), parse_system(long, "long"))


def test_a_cluster_board_runs_like_the_single_board_preset():
    cluster, single = load_system("cluster-4x-rpi5-1gbe"), load_system("raspberry-pi-5")
    for die in cluster.die_names:
        assert cluster.die_bandwidth_bytes_per_s(die) == pytest.approx(single.die_bandwidth_bytes_per_s("cpu"))
        assert cluster.die_type(die).compute_efficiency == single.die_type("cpu").compute_efficiency
    assert cluster.route_nodes("b1.cpu", "b3.cpu", 1e6) == ["b1.cpu", "eth-switch", "b3.cpu"]
    assert cluster.route_nodes("host", "b2.cpu", 1e6) == ["host", "b0.cpu", "eth-switch", "b2.cpu"]
    assert [lk.label() for lk in cluster.route("b1.cpu", "b2.cpu", 1e6)] == ["1GbE", "1GbE"]


PACKAGE_LONG = """
dies:
  - {name: npu4.die0, type: medium}
  - {name: npu4.die1, type: medium}
  - {name: npu4.die2, type: medium}
  - {name: npu4.die3, type: medium}
links:
  - {between: [host, npu4.die0], kind: pcie, gen: 3, lanes: 2}
  - {between: [npu4.die0, npu4.die1], kind: d2d-package}
  - {between: [npu4.die1, npu4.die2], kind: d2d-package}
  - {between: [npu4.die2, npu4.die3], kind: d2d-package}
  - {between: [npu4.die3, npu4.die0], kind: d2d-package}
packages:
  - {name: npu4, substrate: organic-2d, dies: [npu4.die0, npu4.die1, npu4.die2, npu4.die3]}
"""


def test_the_package_preset_is_its_hand_written_long_form():
    compact = _preset("talk-4die-pkg-pcie")
    long = {k: v for k, v in compact.items() if k not in ("packages", "links")} | yaml.safe_load(PACKAGE_LONG)
    _same(load_system("talk-4die-pkg-pcie"), parse_system(long, "long"))
    # the same package as talk-4die-d2d's, with other names: the same ring
    d2d = load_system("talk-4die-d2d")
    pkg = load_system("talk-4die-pkg-pcie")
    assert [lk.kind for lk in d2d.links[1:]] == [lk.kind for lk in pkg.links[1:]]


@pytest.mark.parametrize("topology, pairs", [
    ("ring", [(0, 1), (1, 2), (2, 3), (3, 0)]), ("chain", [(0, 1), (1, 2), (2, 3)]),
    ("all-pairs", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]), ("none", [])])
def test_package_topologies(base_system, topology, pairs):
    d = copy.deepcopy(base_system)
    d["dies"] = []
    d["packages"] = [{"name": "p", "count": 4, "die_type": "npu",
                      "links": {"topology": topology, "latency_us": 0.2}}]
    d["links"] = [{"between": ["host", f"p.die{i}"], "kind": "pcie", "gen": 3, "lanes": 4} for i in range(4)]
    s = parse_system(d, "t")
    made = [lk for lk in s.links if lk.kind == "d2d-package"]
    assert [lk.between for lk in made] == [(f"p.die{i}", f"p.die{j}") for i, j in pairs]
    assert all(lk.latency_s == pytest.approx(0.2e-6) for lk in made)
    assert s.packages[0].dies == [f"p.die{i}" for i in range(4)]


@pytest.mark.parametrize("count, n_links", [(1, 0), (2, 1), (4, 4)])
def test_a_ring_of_one_or_two_dies_has_no_repeated_link(base_system, count, n_links):
    d = copy.deepcopy(base_system)
    d["packages"] = [{"name": "p", "count": count, "die_type": "npu"}]
    d["links"].append({"between": ["die0", "p.die0"], "kind": "d2d-pcb"})
    s = parse_system(d, "t")
    assert s.die_names == ["die0", *[f"p.die{i}" for i in range(count)]]
    assert sum(lk.kind == "d2d-package" for lk in s.links) == n_links


BOARDS = {
    "count": 2, "prefix": "n",
    "board": {"dies": [{"name": "soc", "type": "npu"}, {"name": "acc", "type": "npu"}],
              "switches": ["hub"],
              "links": [{"between": ["soc", "hub"], "kind": "usb", "usb": "usb3.2-gen2"},
                        {"between": ["hub", "acc"], "kind": "usb", "usb": "usb3.2-gen2"}],
              "packages": [{"name": "pk", "count": 2, "die_type": "npu", "links": {"topology": "chain"}}]},
    "uplink": {"from": "soc", "kind": "ethernet-10g", "latency_us": 12},
    "switch": "tor",
}

BOARDS_LONG = """
dies:
  - {name: n0.soc, type: npu}
  - {name: n0.acc, type: npu}
  - {name: n0.pk.die0, type: npu}
  - {name: n0.pk.die1, type: npu}
  - {name: n1.soc, type: npu}
  - {name: n1.acc, type: npu}
  - {name: n1.pk.die0, type: npu}
  - {name: n1.pk.die1, type: npu}
switches: [tor, n0.hub, n1.hub]
links:
  - {between: [host, tor], kind: ethernet-10g}
  - {between: [n0.pk.die0, n0.soc], kind: d2d-pcb}
  - {between: [n1.pk.die0, n1.soc], kind: d2d-pcb}
  - {between: [n0.soc, n0.hub], kind: usb, usb: usb3.2-gen2}
  - {between: [n0.hub, n0.acc], kind: usb, usb: usb3.2-gen2}
  - {between: [n0.pk.die0, n0.pk.die1], kind: d2d-package}
  - {between: [n0.soc, tor], kind: ethernet-10g, latency_us: 12}
  - {between: [n1.soc, n1.hub], kind: usb, usb: usb3.2-gen2}
  - {between: [n1.hub, n1.acc], kind: usb, usb: usb3.2-gen2}
  - {between: [n1.pk.die0, n1.pk.die1], kind: d2d-package}
  - {between: [n1.soc, tor], kind: ethernet-10g, latency_us: 12}
packages:
  - {name: n0.pk, dies: [n0.pk.die0, n0.pk.die1]}
  - {name: n1.pk, dies: [n1.pk.die0, n1.pk.die1]}
"""


def _boards_system(base: dict) -> dict:
    d = copy.deepcopy(base)
    del d["dies"]
    d["host"]["ports"] = [{"kind": "ethernet", "ethernet": "10g"}]
    d["links"] = [{"between": ["host", "tor"], "kind": "ethernet-10g"},
                  {"between": ["n0.pk.die0", "n0.soc"], "kind": "d2d-pcb"},
                  {"between": ["n1.pk.die0", "n1.soc"], "kind": "d2d-pcb"}]
    d["boards"] = copy.deepcopy(BOARDS)
    return d


def test_boards_with_switches_links_and_packages_expand_to_the_long_form(base_system):
    compact = _boards_system(base_system)
    original = copy.deepcopy(compact)
    s = parse_system(compact, "t")
    assert compact == original  # the caller's mapping is not changed
    long = {k: v for k, v in compact.items() if k not in ("boards", "links")} | yaml.safe_load(BOARDS_LONG)
    _same(s, parse_system(long, "long"))
    assert "boards" not in s.model_dump()
    assert System.model_validate(s.model_dump(mode="json")) == s  # a plan embeds the long form


def test_several_board_groups_share_a_switch(base_system):
    d = _boards_system(base_system)
    other = copy.deepcopy(BOARDS) | {"count": 1, "prefix": "m"}
    d["boards"] = [d["boards"], other]
    d["links"].append({"between": ["m0.pk.die0", "m0.soc"], "kind": "d2d-pcb"})
    s = parse_system(d, "t")
    assert s.switches == ["tor", "n0.hub", "n1.hub", "m0.hub"]
    assert s.die_names[-4:] == ["m0.soc", "m0.acc", "m0.pk.die0", "m0.pk.die1"]
    assert s.route_nodes("n1.soc", "m0.soc", 1e6) == ["n1.soc", "tor", "m0.soc"]


def test_one_board_is_allowed_and_the_uplink_leaves_the_only_die_by_default(base_system):
    d = copy.deepcopy(base_system)
    d["dies"] = []
    d["host"]["ports"] = [{"kind": "wifi"}]
    d["boards"] = {"count": 1, "board": {"dies": [{"name": "npu", "type": "npu"}]},
                   "uplink": {"kind": "wifi-6"}, "switch": "ap"}
    d["links"] = [{"between": ["host", "ap"], "kind": "wifi-6"}]
    s = parse_system(d, "t")
    assert s.die_names == ["b0.npu"] and s.links[1].between == ("b0.npu", "ap")


# --- errors: each names the field as written and what would fix it ---------------------------


def _cluster(**changes) -> dict:
    d = _preset("cluster-4x-rpi5-1gbe")
    for path, value in changes.items():
        *keys, last = path.split("__")
        node = d
        for k in keys:
            node = node[k]
        node[last] = value
    return d


@pytest.mark.parametrize("changes, expected", [
    ({"boards__count": 0}, "boards.count: Input should be greater than or equal to 1"),
    ({"boards__count": 65}, "boards.count: Input should be less than or equal to 64"),
    ({"boards__count": True}, "boards.count: expected a number, got true"),
    ({"boards__swich": "x"}, "boards.swich: unknown field; did you mean 'switch'?"),
    ({"boards__uplink": {"from": "gpu", "kind": "ethernet-1g"}}, "boards.uplink.from: 'gpu' is not a node of the board; its nodes are cpu"),
    ({"boards__uplink": {"from": "cpu"}}, "boards.uplink.kind: Field required"),
    ({"boards__uplink": {"from": "cpu", "kind": "pcie"}}, "boards.uplink: a pcie link needs 'gen'"),
    ({"boards__uplink": {"kind": "usb", "usb": "usb4", "between": ["a", "b"]}}, "boards.uplink.between: the compact form sets a link's ends; remove it"),
    ({"boards__board__links": [{"between": ["host", "cpu"], "kind": "on-chip"}]},
     "boards.board.links[0].between: 'host' is not a node of the board; its nodes are cpu (the host is outside the board: write that link at the top level"),
    ({"boards__board__dies": [{"name": "cpu", "type": "bcm2711"}]}, "boards.board.dies[0].type: 'bcm2711' is not in die_types (bcm2712-cpu)"),
    ({"boards__board__dies": []}, "boards.board: a board needs at least one die"),
    ({"boards__board__dies": [{"name": "host", "type": "bcm2712-cpu"}], "boards__uplink": {"kind": "ethernet-1g"}},
     "boards.board.dies: 'host' names the system's host"),
    ({"boards__board__dies": [{"name": "cpu", "type": "bcm2712-cpu"}, {"name": "gpu", "type": "bcm2712-cpu"}],
      "boards__uplink": {"kind": "ethernet-1g"}}, "boards.uplink.from: missing; name the board node whose port goes to the switch (one of cpu, gpu)"),
    ({"boards__switch": "b2.cpu"}, "boards: die 'cpu' of board 2 of boards becomes 'b2.cpu', which is already the name of the switch of boards; "
                                   "node names must be unique: rename one or change the boards' prefix"),
    ({"dies": [{"name": "b1.cpu", "type": "bcm2712-cpu"}]}, "boards: die 'cpu' of board 1 of boards becomes 'b1.cpu', which is already the name of dies[0]"),
    ({"boards__count": 64, "boards__board__dies": [{"name": f"c{i}", "type": "bcm2712-cpu"} for i in range(5)],
      "boards__uplink": {"from": "c0", "kind": "ethernet-1g"}},
     "boards.count: 64 boards of 5 dies make the system 320 dies; a system holds at most 256: lower the count"),
    ({"boards": "four"}, "boards: expected a mapping (count, prefix, board, uplink, switch) or a list of them"),
])
def test_bad_boards_name_the_field(changes, expected):
    msg = _err(_cluster(**changes))
    assert expected in msg, msg
    assert "Traceback" not in msg and msg.startswith("bad.yaml: invalid system description")


def test_two_board_groups_need_their_own_prefix():
    d = _cluster()
    d["boards"] = [d["boards"], copy.deepcopy(d["boards"])]
    assert "boards[1].prefix: 'b' is also the prefix of boards[0]; give each group its own" in _err(d)


def _package(**changes) -> dict:
    d = _preset("talk-4die-pkg-pcie")
    d["packages"][0].update(changes)
    return d


@pytest.mark.parametrize("changes, expected", [
    ({"count": 3}, "packages[0].count: Input should be 1, 2 or 4 (got 3)"),
    ({"die_type": "huge"}, "packages[0].die_type: 'huge' is not in die_types (medium)"),
    ({"links": {"topology": "star"}}, "packages[0].links.topology: 'star' is not a package topology; accepted: ring, chain, all-pairs, none"),
    ({"links": {"kind": "pcie"}}, "packages[0].links: a pcie link needs 'gen'"),
    ({"links": {"lanes": 3}}, "packages[0].links: lanes 3 is not a PCIe width"),
    ({"dies": ["x"]}, "packages[0]: give either dies (the long form) or count and die_type (the compact form), not both"),
    ({"substrate": "3d"}, "packages[0].substrate: Input should be 'organic-2d' or 'interposer-2.5d'"),
])
def test_bad_compact_packages_name_the_field(changes, expected):
    msg = _err(_package(**changes))
    assert expected in msg, msg


def test_a_package_die_clashing_with_a_die_is_named():
    d = _package()
    d["dies"] = [{"name": "npu4.die2", "type": "medium"}]
    assert ("packages[0]: die 2 of package 'npu4' becomes 'npu4.die2', which is already the name of dies[0]"
            in _err(d))


def test_all_compact_problems_are_reported_together():
    d = _cluster(boards__count=0)
    d["packages"] = [{"name": "p", "count": 3, "die_type": "bcm2712-cpu"}]
    msg = _err(d)
    assert "(2 problem(s))" in msg and "packages[0].count" in msg and "boards.count" in msg


def test_a_misspelt_boards_key_at_the_top_suggests_it():
    d = _cluster()
    d["board"] = d.pop("boards")
    assert "board: unknown field; did you mean 'boards'?" in _err(d)
