"""Routes: USB traffic between devices is relayed by the host; routes are cached per system."""

import copy
import pickle

import networkx as nx
import pytest

from chipfuse.errors import SpecError
from chipfuse.hw.load import load_system, parse_system, preset_names
from chipfuse.hw.spec import HOST, System
from chipfuse.sim.collectives import concurrent_s

USB_GEN1 = 5e9 * 8 / 10 / 8 * 0.70  # usable bytes/s of a USB 3.2 Gen 1 link (hw/links.py)
USB_LATENCY = 60e-6


def test_usb_die_to_die_goes_up_to_the_host_and_back_down():
    s = load_system("talk-4die-usb")
    assert s.route_nodes("die0", "die1", 1e6) == ["die0", "usb-hub", "host", "usb-hub", "die1"]
    assert s.route_nodes("die3", "die0", 64) == ["die3", "usb-hub", "host", "usb-hub", "die0"]
    assert s.route_nodes("host", "die2", 1e6) == ["host", "usb-hub", "die2"]
    assert s.route_nodes("die2", "host", 1e6) == ["die2", "usb-hub", "host"]
    assert len(s.route("die0", "die1", 1e6)) == 4 and all(lk.kind == "usb" for lk in s.route("die0", "die1", 1e6))


def test_relayed_transfers_share_the_hubs_uplink_both_ways():
    s = load_system("talk-4die-usb")
    n = 1e6
    one = concurrent_s(s, [("die0", "die1", n)])
    assert one == pytest.approx(4 * USB_LATENCY + 4 * n / USB_GEN1)
    # two relayed transfers at once: each crosses the hub's upstream link up and down, so both
    # directions of it carry 2n; the device links carry n
    two = concurrent_s(s, [("die0", "die1", n), ("die2", "die3", n)])
    assert two == pytest.approx(4 * USB_LATENCY + (n + 2 * n + 2 * n + n) / USB_GEN1)


def _hub_system(base: dict, links: list[dict], switches: list[str], dies: int, ports: list[dict] | None = None) -> System:
    d = copy.deepcopy(base)
    d["dies"] = [{"name": f"die{i}", "type": "npu"} for i in range(dies)]
    d["switches"] = switches
    d["links"] = links
    d["host"]["ports"] = ports or [{"kind": "usb", "usb": "usb4", "count": 4}, {"kind": "pcie", "gen": 3, "lanes": 4, "count": 4}]
    return parse_system(d, "t")


def _usb(a: str, b: str) -> dict:
    return {"between": [a, b], "kind": "usb", "usb": "usb4"}


def test_tiered_hubs_relay_through_the_host(base_system):
    s = _hub_system(base_system, [_usb("host", "hubA"), _usb("hubA", "hubB"), _usb("hubA", "die0"),
                                  _usb("hubB", "die1"), _usb("hubB", "die2")], ["hubA", "hubB"], 3)
    assert s._usb_uplinks == {"hubA": "host", "hubB": "hubA"}
    assert s.route_nodes("die1", "die2", 1e6) == ["die1", "hubB", "hubA", "host", "hubA", "hubB", "die2"]
    assert s.route_nodes("die1", "die0", 1e6) == ["die1", "hubB", "hubA", "host", "hubA", "die0"]
    assert s.route_nodes("hubB", "die2", 1e6) == ["hubB", "die2"]  # a hub as an end takes its better state


def test_a_switch_with_other_links_still_forwards_peer_to_peer(base_system):
    pcie = {"kind": "pcie", "gen": 3, "lanes": 4}
    s = _hub_system(base_system, [{"between": ["host", "sw"], **pcie}, _usb("sw", "die0"), _usb("sw", "die1")], ["sw"], 2)
    assert s._usb_uplinks == {}
    assert s.route_nodes("die0", "die1", 1e6) == ["die0", "sw", "die1"]


def test_a_die_with_another_link_skips_the_relay_when_quicker(base_system):
    s = _hub_system(base_system, [_usb("host", "hub"), _usb("hub", "die0"), _usb("hub", "die1"),
                                  {"between": ["die0", "die1"], "kind": "d2d-pcb"}], ["hub"], 2,
                    ports=[{"kind": "usb"}])
    assert s.route_nodes("die0", "die1", 1e6) == ["die0", "die1"]
    assert s.route_nodes("host", "die1", 1e6) == ["host", "hub", "die1"]


def test_a_hub_whose_upstream_port_is_ambiguous_is_refused(base_system):
    pcie = {"kind": "pcie", "gen": 3, "lanes": 4}
    with pytest.raises(SpecError) as e:
        _hub_system(base_system, [{"between": ["host", "die0"], **pcie}, {"between": ["host", "die1"], **pcie},
                                  _usb("die0", "hub"), _usb("die1", "hub"), _usb("hub", "die2")], ["hub"], 3)
    msg = str(e.value)
    assert "switch hub: all its links are USB, so it is a USB hub with one upstream port" in msg
    assert "die0 and die1 are equally close to the host" in msg


def test_systems_without_usb_hubs_route_exactly_as_networkx():
    for name in preset_names():
        s = load_system(name)
        if s._usb_uplinks:
            continue
        nodes = [HOST, *s.die_names]
        for nbytes in (64, 1e6):
            for a in nodes:
                for b in nodes:
                    if a != b:
                        want = nx.shortest_path(s.graph, a, b, weight=lambda u, v, e, n=nbytes: e["latency_s"] + n * e["inv_bw"])
                        assert s.route_nodes(a, b, nbytes) == want


# --- the route cache ----------------------------------------------------------------------------


def test_cached_routes_equal_fresh_ones_and_are_new_lists():
    for name in ("talk-4die-usb", "talk-4die-pcie", "cluster-4x-rpi5-1gbe", "talk-4die-mesh"):
        s = load_system(name)
        fresh = load_system(name)
        nodes = [HOST, *s.die_names]
        pairs = [(a, b, n) for a in nodes for b in nodes for n in (1.0, 4096, 1e8)]
        first = [s.route_nodes(a, b, n) for a, b, n in pairs]
        assert len(s._routes) == sum(a != b for a, b, _ in pairs)
        again = [s.route_nodes(a, b, n) for a, b, n in pairs]
        assert again == first
        assert [fresh.route_nodes(a, b, n) for a, b, n in reversed(pairs)] == first[::-1]
        got = s.route_nodes(nodes[0], nodes[-1], 4096)
        got.append("mutated")
        assert s.route_nodes(nodes[0], nodes[-1], 4096)[-1] == nodes[-1]  # callers cannot spoil the cache


def test_the_cache_is_used(monkeypatch):
    s = load_system("talk-4die-pcie")
    want = s.route_nodes("die0", "die3", 1e6)
    calls = []
    real = nx.shortest_path
    monkeypatch.setattr(nx, "shortest_path", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(1000):
        assert s.route_nodes("die0", "die3", 1e6) == want
    assert calls == []
    s.route_nodes("die0", "die3", 2e6)
    assert len(calls) == 1


def test_the_cache_never_makes_systems_differ():
    a, b = load_system("talk-4die-usb"), load_system("talk-4die-usb")
    a.route_nodes("die0", "die1", 1e6)
    assert a == b and len(a._routes) == 1 and len(b._routes) == 0
    assert System.model_validate(a.model_dump(mode="json")) == a
    c = copy.deepcopy(a)
    assert c == a and len(c._routes) == 0
    d = pickle.loads(pickle.dumps(a))
    assert d == a and d.route_nodes("die0", "die1", 1e6) == a.route_nodes("die0", "die1", 1e6)


def test_unknown_nodes_still_raise():
    s = load_system("talk-4die-usb")
    with pytest.raises(nx.NodeNotFound):
        s.route_nodes("die0", "die9", 1.0)
    t = load_system("talk-4die-pcie")
    with pytest.raises(nx.NodeNotFound):
        t.route_nodes("die0", "die9", 1.0)
