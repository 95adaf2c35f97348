"""Link technologies and their default characteristics (per direction).

Bandwidths follow from the published signalling rates and line codes:
- PCIe (PCI-SIG base specs): gen1 2.5 GT/s and gen2 5 GT/s with 8b/10b; gen3 8, gen4 16,
  gen5 32 GT/s with 128b/130b. Per lane and direction: 0.25, 0.5, 0.985, 1.969, 3.938 GB/s.
- USB (USB-IF): 3.2 Gen 1 5 Gbit/s 8b/10b; Gen 2 10 Gbit/s and Gen 2x2 20 Gbit/s 128b/132b;
  USB4 Gen 3x2 40 Gbit/s 128b/132b.
- D2D in package: one UCIe 1.0 standard-package module, 16 lanes at 16 GT/s = 32 GB/s per
  direction, ~0.5 pJ/bit (UCIe 1.0 white paper, 2022, standard package targets).
- Ethernet (IEEE 802.3): 1000BASE-T (802.3ab), 2.5GBASE-T (802.3bz) and 10GBASE-T (802.3an)
  carry 1, 2.5 and 10 Gbit/s of MAC data per direction; the PHY's own line code sits below that
  rate, so no further code factor applies. See ETHERNET_TCP_EFFICIENCY for the TCP/IP payload share.
- Wi-Fi (IEEE 802.11): the PHY rate of a typical 2x2 client on an 80 MHz channel at the top
  modulation, computed from the OFDM parameters in WIFI_PHY (802.11ac VHT, 802.11ax HE).
Protocol efficiencies, latencies and on-board D2D figures of PCIe, USB and D2D are ASSUMED
(typical published ranges); the Ethernet and Wi-Fi figures cite a measurement or say ASSUMED
where there is none. Every figure can be overridden per link in the system file.
"""

from dataclasses import dataclass
from typing import Literal, get_args

GB = 1e9

LinkKind = Literal["d2d-package", "d2d-pcb", "pcie", "usb", "on-chip",
                   "ethernet-1g", "ethernet-2.5g", "ethernet-10g", "wifi-5", "wifi-6"]
LINK_KINDS: tuple[str, ...] = get_args(LinkKind)

PCIE_LANE_BYTES_PER_S = {1: 0.25 * GB, 2: 0.5 * GB, 3: 8e9 * 128 / 130 / 8, 4: 16e9 * 128 / 130 / 8, 5: 32e9 * 128 / 130 / 8}
PCIE_LANES = (1, 2, 4, 8, 16)

USB_BYTES_PER_S = {
    "usb3.2-gen1": 5e9 * 8 / 10 / 8,
    "usb3.2-gen2": 10e9 * 128 / 132 / 8,
    "usb3.2-gen2x2": 20e9 * 128 / 132 / 8,
    "usb4": 40e9 * 128 / 132 / 8,
}

# --- Ethernet ----------------------------------------------------------------------------------

# Link kind -> MAC data rate per direction in bit/s (IEEE 802.3ab, 802.3bz, 802.3an).
ETHERNET_BITS_PER_S = {"ethernet-1g": 1e9, "ethernet-2.5g": 2.5e9, "ethernet-10g": 10e9}
# The speed a host port names (Port.ethernet) for each link kind.
ETHERNET_PORT_SPEED = {"ethernet-1g": "1g", "ethernet-2.5g": "2.5g", "ethernet-10g": "10g"}

# TCP/IPv4 payload share of the wire with the standard 1500-byte MTU (IEEE 802.3 frame format,
# RFC 791, RFC 793, RFC 7323). Each full frame occupies, around its 1500-byte IP packet: preamble
# and start delimiter 8 B, MAC header 14 B, frame check sequence 4 B and the minimum inter-frame
# gap 12 B. Inside the packet the IPv4 header takes 20 B, the TCP header 20 B and the timestamp
# option Linux sends by default 12 B, leaving 1448 B of data: 1448 / 1538 = 0.9415, i.e. 941 Mbit/s
# on 1 GbE, which is what iperf measures between two Linux hosts (itecnotes.com, "Calculating
# exact TCP overhead cost": 941 Mbits/sec on 1 Gbit).
ETHERNET_WIRE_OVERHEAD_BYTES = 8 + 14 + 4 + 12
ETHERNET_MTU_BYTES = 1500
TCP_IPV4_HEADER_BYTES = 20 + 20 + 12
ETHERNET_TCP_EFFICIENCY = (ETHERNET_MTU_BYTES - TCP_IPV4_HEADER_BYTES) / (ETHERNET_MTU_BYTES + ETHERNET_WIRE_OVERHEAD_BYTES)

# Per-hop latency. A small TCP request and its reply between two Linux hosts through a gigabit
# switch take 110-125 us (netperf over e1000 NICs, 125 us: Evan Jones, "Ethernet latency",
# evan-jones.appspot.com/ethernet-latency.html; a 100-byte ping-pong between Intel 1G NICs,
# 110 us on Linux 2.6: serverfault.com/questions/791539). One way is about 60 us; a route
# through a switch has two hops, so each hop is charged half: 30 us. The kernel stack, not the
# wire, dominates, so the same figure is ASSUMED for 2.5 and 10 GbE.
ETHERNET_HOP_LATENCY_S = 30e-6

# Power of one PHY (W) per link kind. Both ends' PHYs, each splitting its power between sending
# and receiving, carry the rate in each direction: energy per bit = 2P / (2R) = P / R.
# 1000BASE-T: "a 10/100/1000 Mbps Gigabit Ethernet PHY consumes 450 mW to over 1,000 mW" (G.
# Yamasaki, Texas Instruments, "Why is Ethernet so power-hungry?", SSZTAM3, 2016): the middle,
# 0.725 W. 2.5GBASE-T: Intel Ethernet Controller I225 (MAC and PHY), 1.95 W TDP (Intel ARK).
# 10GBASE-T: 28 nm PHYs below 2.5 W per port (R. Cates, V. Maguire, "Debunking 10GBase-T myths",
# EE Times, 2012).
ETHERNET_PHY_W = {"ethernet-1g": 0.725, "ethernet-2.5g": 1.95, "ethernet-10g": 2.5}

# --- Wi-Fi -------------------------------------------------------------------------------------

# Link kind -> (standard, data subcarriers of an 80 MHz channel, bits per subcarrier of the top
# modulation, code rate, OFDM symbol with guard interval in s, spatial streams).
# 802.11ac (Wi-Fi 5) VHT MCS 9: 256-QAM 5/6, 234 data subcarriers, 3.2 us symbol + 0.4 us short GI.
# 802.11ax (Wi-Fi 6) HE MCS 11: 1024-QAM 5/6, 980 data subcarriers, 12.8 us symbol + 0.8 us GI.
# Two spatial streams: most clients are 2x2 (evanmccann.net, "Understanding Wi-Fi speed", 2021).
WIFI_PHY: dict[str, tuple[str, int, int, float, float, int]] = {
    "wifi-5": ("802.11ac", 234, 8, 5 / 6, 3.6e-6, 2),
    "wifi-6": ("802.11ax", 980, 10, 5 / 6, 13.6e-6, 2),
}
WIFI_PORT_GEN = {"wifi-5": 5, "wifi-6": 6}


def wifi_phy_bits_per_s(kind: str) -> float:
    """PHY rate of one direction: subcarriers x bits x code rate x streams / symbol time."""
    _, subcarriers, bits, rate, symbol_s, streams = WIFI_PHY[kind]
    return subcarriers * bits * rate * streams / symbol_s  # wifi-5: 866.7 Mbit/s, wifi-6: 1201 Mbit/s


# Achieved TCP share of the PHY rate. A 2x2 802.11ac client right next to the router tops out
# near 520 Mbit/s of its 866.7 (duckware.com/wifi, "Wi-Fi 4/5/6/6E", v5.4n 2020): 0.60. For an
# 802.11ax client a single clean link reaches 65-70% of the PHY rate and 33-50% with other
# traffic and contention (meter.dev, "WiFi throughput expectations and limitations"); 0.60 is
# ASSUMED for it too. Wi-Fi is half duplex on a shared channel: this model gives each station's
# link its own rate per direction, which is optimistic when several stations send at once.
WIFI_EFFICIENCY = 0.60

# Per-hop latency: the median Wi-Fi hop round trip measured on 47 campus access points is 3 ms
# (90th percentile 20 ms; K. Sui et al., "Characterizing and improving WiFi latency in
# large-scale operational networks", MobiSys 2016): one way 1.5 ms. ASSUMED the same for Wi-Fi 6.
WIFI_HOP_LATENCY_S = 1.5e-3

# An 802.11n NIC draws up to 2.1 W in its high-rate MIMO configurations (D. Halperin et al.,
# "Demystifying 802.11n power consumption", HotPower 2010); ASSUMED for Wi-Fi 5/6 radios. Energy
# per bit: that power over the achieved rate, the sending radio only.
WIFI_RADIO_W = 2.1

def port_kind(link_kind: str) -> str | None:
    """The host.ports kind a link of this kind needs at the host (None for on-chip)."""
    if link_kind in ETHERNET_BITS_PER_S:
        return "ethernet"
    if link_kind in WIFI_PHY:
        return "wifi"
    if link_kind.startswith("d2d"):
        return "d2d"
    return None if link_kind == "on-chip" else link_kind


@dataclass(frozen=True)
class LinkDefaults:
    """Raw bandwidth per direction, protocol efficiency, per-transfer latency, energy."""

    raw_bytes_per_s: float
    efficiency: float
    latency_s: float
    pj_per_bit: float
    note: str


def link_defaults(kind: str, gen: int | None = None, lanes: int | None = None, usb: str | None = None) -> LinkDefaults:
    """Defaults for one link technology; `kind` is one of LINK_KINDS."""
    if kind == "pcie":
        assert gen is not None and lanes is not None
        return LinkDefaults(PCIE_LANE_BYTES_PER_S[gen] * lanes, 0.80, 2e-6, 6.0,
                            f"PCIe gen{gen} x{lanes}; 80% TLP efficiency, 2 us DMA latency, 6 pJ/bit assumed")
    if kind == "usb":
        assert usb is not None
        return LinkDefaults(USB_BYTES_PER_S[usb], 0.70, 60e-6, 15.0,
                            f"{usb}; 70% bulk-transfer efficiency, 60 us per transfer, 15 pJ/bit assumed")
    if kind == "d2d-package":
        return LinkDefaults(32 * GB, 0.90, 0.05e-6, 0.5,
                            "UCIe standard-package module 16x16 GT/s; 90% efficiency, 50 ns latency assumed")
    if kind == "d2d-pcb":
        return LinkDefaults(16 * GB, 0.85, 0.3e-6, 2.0,
                            "chip-to-chip SerDes on a PCB; 16 GB/s, 85%, 0.3 us, 2 pJ/bit assumed")
    if kind == "on-chip":
        return LinkDefaults(100 * GB, 1.0, 0.01e-6, 0.1,
                            "on-chip network of a monolithic SoC (CPU/GPU/NPU share the die); 100 GB/s assumed")
    if kind in ETHERNET_BITS_PER_S:
        bits = ETHERNET_BITS_PER_S[kind]
        return LinkDefaults(bits / 8, ETHERNET_TCP_EFFICIENCY, ETHERNET_HOP_LATENCY_S, ETHERNET_PHY_W[kind] / bits * 1e12,
                            f"IEEE 802.3 {bits / 1e9:g} Gbit/s; TCP/IPv4 payload 1448 of 1538 wire bytes per frame; "
                            f"30 us per hop (half a measured one-way TCP latency through a switch)")
    if kind in WIFI_PHY:
        bits = wifi_phy_bits_per_s(kind)
        return LinkDefaults(bits / 8, WIFI_EFFICIENCY, WIFI_HOP_LATENCY_S, WIFI_RADIO_W / (bits * WIFI_EFFICIENCY) * 1e12,
                            f"{WIFI_PHY[kind][0]} 2x2 80 MHz, PHY {bits / 1e6:.0f} Mbit/s; 60% achieved; "
                            f"1.5 ms per hop (half the median Wi-Fi hop round trip)")
    raise ValueError(kind)
