"""Ethernet and Wi-Fi links: figures follow the standards' arithmetic; host ports take them."""

import copy

import pytest

from chipfuse.errors import SpecError
from chipfuse.hw import links
from chipfuse.hw.load import parse_system
from chipfuse.hw.spec import Link


def _link(kind: str, **kw) -> Link:
    return Link(between=("a", "b"), kind=kind, **kw)


def test_every_link_kind_has_defaults():
    assert set(links.LINK_KINDS) == {"d2d-package", "d2d-pcb", "pcie", "usb", "on-chip",
                                     *links.ETHERNET_BITS_PER_S, *links.WIFI_PHY}
    for kind in links.LINK_KINDS:
        d = links.link_defaults(kind, gen=3, lanes=2, usb="usb3.2-gen1")
        assert d.raw_bytes_per_s > 0 and 0 < d.efficiency <= 1 and d.latency_s > 0 and d.pj_per_bit > 0


def test_tcp_payload_share_of_a_1500_byte_mtu_frame():
    # wire per frame: 8 preamble+SFD, 14 MAC header, 1500 payload, 4 FCS, 12 inter-frame gap = 1538 bytes;
    # TCP data: 1500 - 20 IPv4 - 20 TCP - 12 timestamps = 1448 bytes
    assert links.ETHERNET_TCP_EFFICIENCY == pytest.approx(1448 / 1538)
    assert 1e9 * links.ETHERNET_TCP_EFFICIENCY / 1e6 == pytest.approx(941.5, abs=0.1)  # iperf's 941 Mbit/s


@pytest.mark.parametrize("kind, gbit", [("ethernet-1g", 1), ("ethernet-2.5g", 2.5), ("ethernet-10g", 10)])
def test_ethernet_bandwidth_is_the_line_rate_times_the_tcp_share(kind, gbit):
    lk = _link(kind)
    assert lk.bytes_per_s == pytest.approx(gbit * 1e9 / 8 * 1448 / 1538)
    assert lk.latency_s == pytest.approx(30e-6)
    assert lk.label() == f"{gbit:g}GbE"


def test_ethernet_energy_is_phy_power_over_the_rate():
    assert _link("ethernet-1g").joules_per_byte == pytest.approx(8 * 0.725 / 1e9)
    assert _link("ethernet-2.5g").joules_per_byte == pytest.approx(8 * 1.95 / 2.5e9)
    assert _link("ethernet-10g").joules_per_byte == pytest.approx(8 * 2.5 / 10e9)


def test_wifi_phy_rates_follow_the_ofdm_parameters():
    # 802.11ac MCS 9, 2 streams, 80 MHz, short GI: 234 x 8 bits x 5/6 x 2 / 3.6 us = 866.7 Mbit/s
    assert links.wifi_phy_bits_per_s("wifi-5") == pytest.approx(866.67e6, rel=1e-4)
    # 802.11ax MCS 11, 2 streams, 80 MHz, 0.8 us GI: 980 x 10 bits x 5/6 x 2 / 13.6 us = 1201 Mbit/s
    assert links.wifi_phy_bits_per_s("wifi-6") == pytest.approx(1201e6, rel=1e-3)
    w5, w6 = _link("wifi-5"), _link("wifi-6")
    assert w5.bytes_per_s == pytest.approx(866.67e6 / 8 * 0.6, rel=1e-4)
    assert w6.bytes_per_s == pytest.approx(1201e6 / 8 * 0.6, rel=1e-3)
    assert w5.latency_s == w6.latency_s == pytest.approx(1.5e-3)
    assert w5.joules_per_byte == pytest.approx(8 * 2.1 / (866.67e6 * 0.6), rel=1e-4)
    assert (w5.label(), w6.label()) == ("Wi-Fi 5", "Wi-Fi 6")


def test_overrides_still_apply_to_network_links():
    lk = _link("ethernet-1g", efficiency=0.5, latency_us=100, bandwidth_gb_per_s=0.2, pj_per_bit=1)
    assert lk.bytes_per_s == pytest.approx(0.1e9) and lk.latency_s == pytest.approx(100e-6)


def test_network_link_kinds_take_no_pcie_or_usb_fields():
    with pytest.raises(ValueError, match="describe PCIe only"):
        _link("ethernet-1g", gen=3, lanes=2)
    with pytest.raises(ValueError, match="names a USB generation"):
        _link("wifi-6", usb="usb4")


def _switched(base: dict, host_kind: str, ports: list[dict]) -> dict:
    """Two dies behind a switch that the host reaches with one `host_kind` link."""
    d = copy.deepcopy(base)
    d["dies"] = [{"name": "die0", "type": "npu"}, {"name": "die1", "type": "npu"}]
    d["switches"] = ["sw"]
    d["links"] = [{"between": ["host", "sw"], "kind": host_kind},
                  {"between": ["sw", "die0"], "kind": host_kind},
                  {"between": ["sw", "die1"], "kind": host_kind}]
    d["host"]["ports"] = ports
    return d


def _err(data) -> str:
    with pytest.raises(SpecError) as e:
        parse_system(data, "bad.yaml")
    return str(e.value)


def test_host_needs_an_ethernet_or_wifi_port_for_such_a_link(base_system):
    s = parse_system(_switched(base_system, "ethernet-2.5g", [{"kind": "ethernet", "ethernet": "2.5g"}]), "t")
    assert s.route_nodes("die0", "die1", 1e6) == ["die0", "sw", "die1"]  # an Ethernet switch forwards peer to peer
    assert "the host has no ethernet port" in _err(_switched(base_system, "ethernet-1g", []))
    assert "the host has no wifi port" in _err(_switched(base_system, "wifi-6", [{"kind": "usb"}]))
    parse_system(_switched(base_system, "wifi-5", [{"kind": "wifi", "wifi": "wifi-6"}]), "t")
    parse_system(_switched(base_system, "ethernet-10g", [{"kind": "ethernet"}]), "t")  # speed not stated: any


def test_a_link_faster_than_the_hosts_port_is_refused(base_system):
    msg = _err(_switched(base_system, "ethernet-10g", [{"kind": "ethernet", "ethernet": "1g"},
                                                       {"kind": "ethernet", "ethernet": "2.5g"}]))
    assert "ethernet-10g at the host is faster than its fastest ethernet port (2.5g)" in msg
    msg = _err(_switched(base_system, "wifi-6", [{"kind": "wifi", "wifi": "wifi-5"}]))
    assert "wifi-6 at the host is faster than its fastest wifi port (wifi-5)" in msg
    d = _switched(base_system, "ethernet-1g", [{"kind": "ethernet", "ethernet": "1g", "count": 1}])
    d["links"].append({"between": ["host", "die1"], "kind": "ethernet-1g"})
    assert "2 ethernet links at the host but it offers 1 ethernet port(s)" in _err(d)


def test_port_speed_fields_belong_to_their_kind(base_system):
    d = copy.deepcopy(base_system)
    d["host"]["ports"].append({"kind": "usb", "ethernet": "1g"})
    d["host"]["ports"].append({"kind": "ethernet", "wifi": "wifi-6"})
    d["host"]["ports"].append({"kind": "ethernet", "ethernet": "5g"})
    msg = _err(d)
    assert "host.ports[1]: 'ethernet' names an Ethernet speed; remove it from this usb entry" in msg
    assert "host.ports[2]: 'wifi' names a Wi-Fi generation" in msg
    assert "host.ports[3].ethernet: Input should be '1g', '2.5g' or '10g'" in msg


def test_unknown_kind_lists_the_network_kinds(base_system):
    d = copy.deepcopy(base_system)
    d["links"][0] = {"between": ["host", "die0"], "kind": "ethernet-100g"}
    msg = _err(d)
    assert "links[0].kind" in msg and "'ethernet-2.5g'" in msg and "'wifi-6'" in msg
