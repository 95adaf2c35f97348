"""What a system costs to build, and what it costs to develop: the talk's challenges 6, 8 and 9 as numbers.

Unit cost (bill of materials) follows the published shape of chip cost models:
- dies per wafer: pi (d/2)^2 / A - pi d / sqrt(2 A), for wafer diameter d and die area A (Hennessy and
  Patterson, Computer Architecture: A Quantitative Approach, 5th ed., section 1.6);
- die yield: the negative binomial (1 + D0 A / alpha)^-alpha for defect density D0 and clustering alpha
  (the same section's form, with alpha its "process-complexity factor");
- a good die costs the wafer's price over its good dies, plus test;
- a package holds good dies on a substrate: 2D organic (~$5) or 2.5D with a silicon interposer (~$20, the
  talk's figures); each die bonded may fail (bonding yield), and a failed package loses the good dies in it,
  so a good package costs (dies + substrate + assembly) / package yield;
- the board adds the host SoC, every DRAM device (per GiB) and the links' parts.
Development follows the talk: a new 12 nm SoC costs $10-20M and ~18 months; a new package of existing dies
takes >= 6 months; a new PCB about one month.

Every constant below cites its source or says "assumed"; a system's own `cost_usd` fields override them
(a die type's price per good die, a package's, the host's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import System

WAFER_DIAMETER_MM = 300.0


@dataclass(frozen=True)
class Process:
    node_nm: float
    wafer_usd: float
    defect_per_cm2: float
    source: str


# TSMC 300 mm wafer prices estimated by CSET (Khan and Mann, "AI Chips: What They Are and Why They Matter",
# 2020, appendix); defect densities assumed (mature nodes ~0.1 /cm2, newer ones higher)
PROCESSES = {
    28: Process(28, 2891.0, 0.08, "wafer price: CSET 2020; D0 assumed"),
    16: Process(16, 3984.0, 0.10, "wafer price: CSET 2020 (16/12 nm); D0 assumed"),
    12: Process(12, 3984.0, 0.10, "wafer price: CSET 2020 (16/12 nm); D0 assumed"),
    7: Process(7, 9346.0, 0.15, "wafer price: CSET 2020; D0 assumed"),
    5: Process(5, 16988.0, 0.20, "wafer price: CSET 2020; D0 assumed"),
}
CLUSTERING_ALPHA = 3.0  # assumed: a common negative-binomial clustering value
TEST_USD_PER_DIE = 0.5  # assumed: wafer-level test of a small die
SUBSTRATE_USD = {"organic-2d": 5.0, "interposer-2.5d": 20.0}  # the talk: ~$5 (2D) and ~$20 (2.5D) a substrate
ASSEMBLY_USD_PER_DIE = {"organic-2d": 0.5, "interposer-2.5d": 1.5}  # assumed
BOND_YIELD_PER_DIE = {"organic-2d": 0.995, "interposer-2.5d": 0.98}  # assumed
DRAM_USD_PER_GIB = {"LPDDR4X": 3.0, "LPDDR5": 3.5, "LPDDR5X": 4.0, "DDR4": 2.0, "DDR5": 3.0, "HBM3": 15.0}  # assumed
HOST_SOC_USD = 15.0  # assumed: an A55-class SoC in volume
LINK_PARTS_USD = {"pcie": 2.0, "usb": 1.0, "d2d-pcb": 1.0, "d2d-package": 0.0, "on-chip": 0.0}  # assumed connectors
ETHERNET_PORT_USD = 5.0  # assumed: a PHY and a connector per Gigabit-class port
BOARD_USD = 10.0  # assumed: the PCB and passives of an edge box
# development (the talk): a new SoC, a new package of existing dies, a new PCB
SOC_TAPEOUT_USD = (10e6, 20e6)
SOC_MONTHS = 18.0
PACKAGE_RESPIN_MONTHS = 6.0
PCB_RESPIN_MONTHS = 1.0
PACKAGE_RESPIN_USD = 1.0e6  # assumed: substrate design, tooling, qualification
PCB_RESPIN_USD = 0.05e6  # assumed


def dies_per_wafer(area_mm2: float, diameter_mm: float = WAFER_DIAMETER_MM) -> int:
    """Whole dies of `area_mm2` on a round wafer (Hennessy and Patterson's formula, floored)."""
    if area_mm2 <= 0:
        raise ValueError("a die's area must be positive")
    n = math.pi * (diameter_mm / 2) ** 2 / area_mm2 - math.pi * diameter_mm / math.sqrt(2 * area_mm2)
    return max(0, math.floor(n))


def die_yield(area_mm2: float, defect_per_cm2: float, alpha: float = CLUSTERING_ALPHA) -> float:
    """The share of dies without a killer defect: (1 + D0 A / alpha)^-alpha, A in cm2."""
    return (1.0 + defect_per_cm2 * area_mm2 / 100.0 / alpha) ** -alpha


def process_for(node_nm: float | None) -> Process:
    """The cost figures of the nearest listed node (12 nm when the die gives none: the talk's example)."""
    node = 12.0 if node_nm is None else node_nm
    return PROCESSES[min(PROCESSES, key=lambda n: abs(n - node))]


def good_die_usd(area_mm2: float, process: Process) -> float:
    """One tested good die: the wafer's price over its good dies, plus test."""
    good = dies_per_wafer(area_mm2) * die_yield(area_mm2, process.defect_per_cm2)
    if good < 1:
        raise ValueError(f"a {area_mm2:g} mm2 die yields less than one good die a wafer")
    return process.wafer_usd / good + TEST_USD_PER_DIE


def package_usd(die_usd: list[float], substrate: str) -> float:
    """A good package of the given good dies: (dies + substrate + assembly) / bonding yield of every die."""
    parts = sum(die_usd) + SUBSTRATE_USD[substrate] + ASSEMBLY_USD_PER_DIE[substrate] * len(die_usd)
    return parts / BOND_YIELD_PER_DIE[substrate] ** len(die_usd)


@dataclass(frozen=True)
class CostLine:
    item: str
    usd: float
    source: str


@dataclass(frozen=True)
class CostReport:
    system: str
    lines: tuple[CostLine, ...]

    @property
    def bom_usd(self) -> float:
        return sum(line.usd for line in self.lines)


def system_cost(system: System) -> CostReport:
    """The system's bill of materials, line by line, each with where its figure comes from."""
    lines: list[CostLine] = []
    host = system.host
    lines.append(CostLine("host SoC", host.cost_usd if host.cost_usd is not None else HOST_SOC_USD,
                          "system file" if host.cost_usd is not None else "assumed"))
    lines.append(CostLine(f"host DRAM {host.dram.type} {host.dram.capacity_gib:g} GiB",
                          host.dram.capacity_gib * DRAM_USD_PER_GIB.get(host.dram.type, 3.0), "assumed $/GiB"))
    packaged: dict[str, str] = {}
    for pkg in system.packages:
        for d in pkg.dies:
            packaged[d] = pkg.name
    die_usd: dict[str, tuple[float, str]] = {}
    for d in system.die_names:
        dt = system.die_type(d)
        if dt.cost_usd is not None:
            die_usd[d] = (dt.cost_usd, "system file")
        elif dt.area_mm2 is not None:
            proc = process_for(dt.process_nm)
            die_usd[d] = (good_die_usd(dt.area_mm2, proc), f"{dt.area_mm2:g} mm2 at {proc.node_nm:g} nm: "
                                                           f"{proc.source}; yield model: H&P")
        else:
            die_usd[d] = (0.0, "no area_mm2 or cost_usd in the system file: not counted")
    for pkg in system.packages:
        if pkg.cost_usd is not None:
            lines.append(CostLine(f"package {pkg.name} ({len(pkg.dies)} dies)", pkg.cost_usd, "system file"))
        else:
            usd = package_usd([die_usd[d][0] for d in pkg.dies], pkg.substrate)
            lines.append(CostLine(f"package {pkg.name} ({len(pkg.dies)} dies, {pkg.substrate})", usd,
                                  f"good dies ({die_usd[pkg.dies[0]][1]}) + substrate (the talk) + assembly, "
                                  "over bonding yield (assumed)"))
    for d in system.die_names:
        if d not in packaged:  # a bare die on its own small package
            known = system.die_type(d).cost_usd is not None or system.die_type(d).area_mm2 is not None
            usd = package_usd([die_usd[d][0]], "organic-2d") if known else 0.0
            lines.append(CostLine(f"die {d} in its own package", usd, die_usd[d][1]))
        mem = system.die_type(d).memory.own
        if mem is not None:
            lines.append(CostLine(f"{d} DRAM {mem.type} {mem.capacity_gib:g} GiB",
                                  mem.capacity_gib * DRAM_USD_PER_GIB.get(mem.type, 3.0), "assumed $/GiB"))
    for link in system.links:
        kind = link.kind
        usd = ETHERNET_PORT_USD * 2 if kind.startswith("ethernet") else LINK_PARTS_USD.get(kind, 1.0)
        if usd:
            lines.append(CostLine(f"link {link.between[0]}-{link.between[1]} ({link.label()})", usd, "assumed"))
    lines.append(CostLine("board", BOARD_USD, "assumed"))
    return CostReport(system.name, tuple(lines))


@dataclass(frozen=True)
class DevelopmentPath:
    what: str
    usd: tuple[float, float]
    months: float
    source: str


def development_paths() -> tuple[DevelopmentPath, ...]:
    """The talk's three ways to a new product: a new SoC, a new package of existing dies, a new PCB."""
    return (DevelopmentPath("a new SoC (12 nm, IP and back end included)", SOC_TAPEOUT_USD, SOC_MONTHS, "the talk"),
            DevelopmentPath("a new package of existing dies", (PACKAGE_RESPIN_USD, PACKAGE_RESPIN_USD),
                            PACKAGE_RESPIN_MONTHS, "months: the talk (>= 6); cost assumed"),
            DevelopmentPath("a new PCB with existing parts", (PCB_RESPIN_USD, PCB_RESPIN_USD), PCB_RESPIN_MONTHS,
                            "months: the talk (~1); cost assumed"))


__all__ = ["dies_per_wafer", "die_yield", "good_die_usd", "package_usd", "system_cost", "CostReport", "CostLine",
           "development_paths", "DevelopmentPath", "PROCESSES", "process_for"]
