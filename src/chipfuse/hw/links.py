"""Link technologies and their default characteristics (per direction).

Bandwidths follow from the published signalling rates and line codes:
- PCIe (PCI-SIG base specs): gen1 2.5 GT/s and gen2 5 GT/s with 8b/10b; gen3 8, gen4 16,
  gen5 32 GT/s with 128b/130b. Per lane and direction: 0.25, 0.5, 0.985, 1.969, 3.938 GB/s.
- USB (USB-IF): 3.2 Gen 1 5 Gbit/s 8b/10b; Gen 2 10 Gbit/s and Gen 2x2 20 Gbit/s 128b/132b;
  USB4 Gen 3x2 40 Gbit/s 128b/132b.
- D2D in package: one UCIe 1.0 standard-package module, 16 lanes at 16 GT/s = 32 GB/s per
  direction, ~0.5 pJ/bit (UCIe 1.0 white paper, 2022, standard package targets).
Protocol efficiencies, latencies and on-board D2D figures are ASSUMED (typical published
ranges), and every one can be overridden per link in the system file.
"""

from dataclasses import dataclass

GB = 1e9

PCIE_LANE_BYTES_PER_S = {1: 0.25 * GB, 2: 0.5 * GB, 3: 8e9 * 128 / 130 / 8, 4: 16e9 * 128 / 130 / 8, 5: 32e9 * 128 / 130 / 8}
PCIE_LANES = (1, 2, 4, 8, 16)

USB_BYTES_PER_S = {
    "usb3.2-gen1": 5e9 * 8 / 10 / 8,
    "usb3.2-gen2": 10e9 * 128 / 132 / 8,
    "usb3.2-gen2x2": 20e9 * 128 / 132 / 8,
    "usb4": 40e9 * 128 / 132 / 8,
}


@dataclass(frozen=True)
class LinkDefaults:
    """Raw bandwidth per direction, protocol efficiency, per-transfer latency, energy."""

    raw_bytes_per_s: float
    efficiency: float
    latency_s: float
    pj_per_bit: float
    note: str


def link_defaults(kind: str, gen: int | None = None, lanes: int | None = None, usb: str | None = None) -> LinkDefaults:
    """Defaults for one link technology; `kind` is d2d-package, d2d-pcb, pcie, usb or on-chip."""
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
    raise ValueError(kind)
