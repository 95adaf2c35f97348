"""The hardware description: host SoC, NPU dies, links, packages and topology.

A system file is YAML validated by these pydantic models (see docs/hardware.md). Numbers a
user writes carry their unit in the field name; the properties convert to SI.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .dram import DRAM_RATE_MTPS, peak_bandwidth_bytes_per_s
from .links import PCIE_LANES, USB_BYTES_PER_S, link_defaults

GiB = 1024**3
GB = 1e9

Precision = Literal["int4", "int8", "fp8", "fp16", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("int4", "int8", "fp8", "fp16", "bf16", "fp32")
HOST = "host"


class Strict(BaseModel):
    """Base: unknown fields are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DRAM(Strict):
    """A DRAM interface: type, bus width and data rate give peak bandwidth."""

    type: str = Field(description="LPDDR4, LPDDR4X, LPDDR5, LPDDR5X, DDR4, DDR5, GDDR6, GDDR6X, HBM2, HBM2E, HBM3")
    bus_width_bits: int = Field(gt=0, le=8192)
    data_rate_mtps: float = Field(gt=0, description="mega-transfers per second per pin")
    capacity_gib: float = Field(gt=0)
    efficiency: float = Field(0.75, gt=0, le=1, description="fraction of peak a streaming read achieves")
    pj_per_byte: float = Field(40.0, ge=0, description="access energy per byte moved")
    bandwidth_gb_per_s: float | None = Field(
        None, gt=0, description="peak GB/s stated or measured; overrides bus width x data rate")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v.upper() not in DRAM_RATE_MTPS:
            raise ValueError(f"unknown DRAM type {v!r}; accepted: {', '.join(DRAM_RATE_MTPS)}")
        return v.upper()

    @model_validator(mode="after")
    def _rate_in_range(self) -> DRAM:
        lo, hi = DRAM_RATE_MTPS[self.type]
        if not lo <= self.data_rate_mtps <= hi:
            raise ValueError(
                f"data_rate_mtps {self.data_rate_mtps:g} is outside {self.type}'s speed grades "
                f"({lo:g}-{hi:g} MT/s); check the type or the rate")
        return self

    @property
    def peak_bytes_per_s(self) -> float:
        if self.bandwidth_gb_per_s is not None:
            return self.bandwidth_gb_per_s * GB
        return peak_bandwidth_bytes_per_s(self.bus_width_bits, self.data_rate_mtps)

    @property
    def usable_bytes_per_s(self) -> float:
        return self.peak_bytes_per_s * self.efficiency

    @property
    def capacity_bytes(self) -> float:
        return self.capacity_gib * GiB


class HostTraffic(Strict):
    """Other masters that read the host DRAM: the display controller and the rest."""

    display_width_px: int = Field(0, ge=0)
    display_height_px: int = Field(0, ge=0)
    refresh_hz: float = Field(60, ge=0)
    bytes_per_pixel: int = Field(4, ge=0)
    other_gb_per_s: float = Field(0.0, ge=0, description="camera, ISP, GPU, ... in GB/s")

    @property
    def bytes_per_s(self) -> float:
        display = self.display_width_px * self.display_height_px * self.bytes_per_pixel * self.refresh_hz
        return display + self.other_gb_per_s * GB


class CPU(Strict):
    cores: int = Field(gt=0)
    core_type: str
    freq_ghz: float = Field(gt=0)
    gflops_fp32: float = Field(gt=0, description="peak FP32 GFLOP/s of all cores")


class Port(Strict):
    """A port the host offers for attaching dies."""

    kind: Literal["pcie", "usb", "d2d"]
    gen: int | None = Field(None, ge=1, le=5, description="PCIe generation")
    lanes: int | None = None
    usb: Literal["usb3.2-gen1", "usb3.2-gen2", "usb3.2-gen2x2", "usb4"] | None = None
    count: int = Field(1, ge=1)


class HostSoC(Strict):
    name: str
    cpu: CPU
    dram: DRAM
    reserved_gib: float = Field(1.0, ge=0, description="host DRAM kept for the OS and applications")
    traffic: HostTraffic = HostTraffic()
    ports: list[Port] = []
    overhead_per_token_s: float = Field(50e-6, ge=0, description="host work per generated token: sampling, detokenising, scheduling")
    static_w: float = Field(1.0, ge=0)
    cost_usd: float | None = Field(None, ge=0)

    @property
    def dram_free_bytes_per_s(self) -> float:
        """Host DRAM bandwidth left after the display and other masters."""
        return max(0.0, self.dram.usable_bytes_per_s - self.traffic.bytes_per_s)


class SharedMemory(Strict):
    """A die that uses a share of the host's DRAM instead of its own."""

    capacity_gib: float = Field(gt=0, description="host DRAM set aside for this die")
    bandwidth_share: float = Field(1.0, gt=0, le=1, description="fraction of the host's free bandwidth this die gets")


class DieMemory(Strict):
    own: DRAM | None = None
    shared: SharedMemory | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DieMemory:
        if (self.own is None) == (self.shared is None):
            raise ValueError("give exactly one of 'own' (the die's DRAM) or 'shared' (a share of host DRAM)")
        return self


class NVM(Strict):
    """Optional non-volatile memory interface on the die, to load models without the host."""

    capacity_gib: float = Field(gt=0)
    read_gb_per_s: float = Field(gt=0)


class DiePower(Strict):
    static_w: float = Field(0.5, ge=0)
    pj_per_op: dict[Precision, float] = Field(default_factory=dict, description="dynamic energy per operation")


class DieType(Strict):
    """One NPU die design. Throughput is peak tera-operations per second (a MAC is 2 ops)."""

    description: str = ""
    tops: dict[Precision, float] = Field(description="peak TOPS (TFLOPS for floating point) per supported precision")
    weight_only: list[Precision] = Field(
        default_factory=list,
        description="weight formats the die stores and expands on the fly to a precision it computes in "
                    "(weight-only quantisation, as GPUs and CPUs run INT4 weights)")
    sram_mib: float = Field(0, ge=0)
    memory: DieMemory
    nvm: NVM | None = None
    power: DiePower = DiePower()
    compute_efficiency: float = Field(0.5, gt=0, le=1, description="fraction of peak a matmul achieves")
    op_overhead_s: float = Field(2e-6, ge=0, description="fixed cost per layer step (dispatch, sync)")
    activation_precision: Precision = Field("fp16", description="precision of attention and activations")
    area_mm2: float | None = Field(None, gt=0)
    process_nm: float | None = Field(None, gt=0)
    cost_usd: float | None = Field(None, ge=0)

    @field_validator("tops")
    @classmethod
    def _some_tops(cls, v: dict) -> dict:
        if not v:
            raise ValueError(f"a die must support at least one precision; accepted keys: {', '.join(PRECISIONS)}")
        for k, x in v.items():
            if x <= 0:
                raise ValueError(f"tops.{k} must be > 0 (omit a precision the die lacks)")
        return v


class Die(Strict):
    name: str
    type: str = Field(description="a key of die_types")


class Link(Strict):
    """A physical link between two nodes (host, a die or a switch); full duplex."""

    between: tuple[str, str]
    kind: Literal["d2d-package", "d2d-pcb", "pcie", "usb", "on-chip"] = Field(
        description="on-chip: the compute engine is part of the host SoC itself (a real monolithic device)")
    gen: int | None = Field(None, ge=1, le=5, description="PCIe generation 1-5")
    lanes: int | None = Field(None, description="PCIe lanes: 1, 2, 4, 8 or 16")
    usb: Literal["usb3.2-gen1", "usb3.2-gen2", "usb3.2-gen2x2", "usb4"] | None = None
    bandwidth_gb_per_s: float | None = Field(None, gt=0, description="override: raw GB/s per direction")
    efficiency: float | None = Field(None, gt=0, le=1)
    latency_us: float | None = Field(None, ge=0)
    pj_per_bit: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _kind_fields(self) -> Link:
        if self.kind == "pcie":
            if self.gen is None or self.lanes is None:
                raise ValueError("a pcie link needs 'gen' (1-5) and 'lanes' (1, 2, 4, 8, 16)")
            if self.lanes not in PCIE_LANES:
                raise ValueError(f"lanes {self.lanes} is not a PCIe width; accepted: 1, 2, 4, 8, 16")
        elif self.kind == "usb":
            if self.usb is None:
                raise ValueError(f"a usb link needs 'usb', one of: {', '.join(USB_BYTES_PER_S)}")
        if self.between[0] == self.between[1]:
            raise ValueError(f"a link joins two different nodes, got {self.between[0]!r} twice")
        return self

    @cached_property
    def _defaults(self):
        return link_defaults(self.kind, self.gen, self.lanes, self.usb)

    @property
    def bytes_per_s(self) -> float:
        """Usable bandwidth per direction."""
        raw = self.bandwidth_gb_per_s * GB if self.bandwidth_gb_per_s else self._defaults.raw_bytes_per_s
        return raw * (self.efficiency if self.efficiency is not None else self._defaults.efficiency)

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6 if self.latency_us is not None else self._defaults.latency_s

    @property
    def joules_per_byte(self) -> float:
        return 8e-12 * (self.pj_per_bit if self.pj_per_bit is not None else self._defaults.pj_per_bit)

    def label(self) -> str:
        if self.kind == "pcie":
            return f"PCIe{self.gen}x{self.lanes}"
        if self.kind == "usb":
            return self.usb or "usb"
        return self.kind.upper()

    def transfer_s(self, nbytes: float) -> float:
        """Time for one transfer of `nbytes` over this link."""
        return self.latency_s + nbytes / self.bytes_per_s


class Package(Strict):
    name: str
    dies: list[str]
    substrate: Literal["organic-2d", "interposer-2.5d"] = "organic-2d"
    cost_usd: float | None = Field(None, ge=0)


class System(Strict):
    """A whole AI-chiplet system: one host SoC, its NPU dies and the links between them."""

    schema_version: Literal[1] = 1
    name: str
    description: str = ""
    host: HostSoC
    die_types: dict[str, DieType]
    dies: list[Die] = Field(min_length=1)
    switches: list[str] = []
    links: list[Link] = []
    packages: list[Package] = []
    sources: dict[str, str] = Field(default_factory=dict, description="field path -> citation or 'assumed'")

    @model_validator(mode="after")
    def _check_graph(self) -> System:
        names = [d.name for d in self.dies]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"die names must be unique; repeated: {', '.join(sorted(dup))}")
        nodes = {HOST, *names, *self.switches}
        if len(nodes) != 1 + len(names) + len(self.switches):
            raise ValueError("names of dies and switches must be unique and must not be 'host'")
        for i, d in enumerate(self.dies):
            if d.type not in self.die_types:
                raise ValueError(f"dies[{i}] ({d.name}): type {d.type!r} is not in die_types "
                                 f"({', '.join(self.die_types) or 'none defined'})")
        for i, link in enumerate(self.links):
            for end in link.between:
                if end not in nodes:
                    raise ValueError(f"links[{i}]: unknown node {end!r}; nodes are {', '.join(sorted(nodes))}")
        in_pkg: dict[str, str] = {}
        for p in self.packages:
            if len(p.dies) not in (1, 2, 4):
                raise ValueError(f"package {p.name}: holds {len(p.dies)} dies; packages hold 1, 2 or 4")
            for d in p.dies:
                if d not in names:
                    raise ValueError(f"package {p.name}: unknown die {d!r}")
                if d in in_pkg:
                    raise ValueError(f"die {d} is in two packages ({in_pkg[d]}, {p.name})")
                in_pkg[d] = p.name
        for i, link in enumerate(self.links):
            if link.kind == "d2d-package":
                a, b = link.between
                if a not in in_pkg or in_pkg.get(a) != in_pkg.get(b):
                    raise ValueError(f"links[{i}] {a}-{b}: an in-package D2D link joins two dies of one package; "
                                     f"use d2d-pcb (or pcie/usb) between packages")
        g = self.graph
        unreachable = [n for n in names if not nx.has_path(g, HOST, n)]
        if unreachable:
            raise ValueError(f"dies not connected to the host: {', '.join(unreachable)}; add links")
        self._check_ports()
        over = self.shared_capacity_overflow_bytes()
        if over > 0:
            raise ValueError(f"dies with shared memory plus host.reserved_gib exceed host.dram.capacity_gib "
                             f"({self.host.dram.capacity_gib:g} GiB) by {over / GiB:.2f} GiB; lower their capacity_gib")
        return self

    def _check_ports(self) -> None:
        """Host links must fit the ports the host SoC offers."""
        host_links = [lk for lk in self.links if HOST in lk.between]
        for kind in ("pcie", "usb"):
            used = [lk for lk in host_links if lk.kind == kind]
            ports = [p for p in self.host.ports if p.kind == kind]
            if used and not ports:
                raise ValueError(f"the host has no {kind} port but links use one; add it to host.ports or change the link")
            if len(used) > sum(p.count for p in ports):
                raise ValueError(f"{len(used)} {kind} links at the host but it offers {sum(p.count for p in ports)} {kind} port(s)")
            for lk in used:
                if kind == "pcie" and not any((p.gen or 0) >= (lk.gen or 0) and (p.lanes or 0) >= (lk.lanes or 0) for p in ports):
                    best = max(ports, key=lambda p: ((p.gen or 0), (p.lanes or 0)))
                    raise ValueError(f"link PCIe gen{lk.gen} x{lk.lanes} exceeds the host's ports "
                                     f"(best: gen{best.gen} x{best.lanes}); lower gen or lanes")
        if any(lk.kind == "d2d-package" or lk.kind == "d2d-pcb" for lk in host_links) and not any(p.kind == "d2d" for p in self.host.ports):
            raise ValueError("a D2D link reaches the host, but the host offers no d2d port (existing SoCs have none: use pcie or usb)")

    @cached_property
    def graph(self) -> nx.Graph:
        """Undirected topology; each edge carries its Link and transfer cost data."""
        g = nx.Graph()
        g.add_node(HOST, kind="host")
        for d in self.dies:
            g.add_node(d.name, kind="die")
        for s in self.switches:
            g.add_node(s, kind="switch")
        for link in self.links:
            a, b = link.between
            # Parallel links between the same pair: keep the faster one.
            if g.has_edge(a, b) and g.edges[a, b]["link"].bytes_per_s >= link.bytes_per_s:
                continue
            g.add_edge(a, b, link=link, latency_s=link.latency_s, inv_bw=1.0 / link.bytes_per_s)
        return g

    def die_type(self, die: str) -> DieType:
        return self.die_types[next(d.type for d in self.dies if d.name == die)]

    @property
    def die_names(self) -> list[str]:
        return [d.name for d in self.dies]

    def route_nodes(self, a: str, b: str, nbytes: float) -> list[str]:
        """Nodes a transfer of `nbytes` passes from a to b on the quickest path, both ends included."""
        if a == b:
            return [a]
        return nx.shortest_path(self.graph, a, b, weight=lambda u, v, e: e["latency_s"] + nbytes * e["inv_bw"])

    def route(self, a: str, b: str, nbytes: float) -> list[Link]:
        """The links a transfer of `nbytes` takes from a to b: the quickest path."""
        path = self.route_nodes(a, b, nbytes)
        return [self.graph.edges[u, v]["link"] for u, v in zip(path, path[1:])]

    def die_memory_bytes(self, die: str) -> float:
        mem = self.die_type(die).memory
        return mem.own.capacity_bytes if mem.own else mem.shared.capacity_gib * GiB

    def die_bandwidth_bytes_per_s(self, die: str) -> float:
        """Usable DRAM bandwidth of a die: its own DRAM, or its share of what the host leaves free."""
        mem = self.die_type(die).memory
        if mem.own:
            return mem.own.usable_bytes_per_s
        # a die sharing host DRAM reads it over its route from the host: the slowest off-chip link caps it
        links = [lk for lk in self.route(HOST, die, 1 << 20) if lk.kind != "on-chip"]
        link_cap = min((lk.bytes_per_s for lk in links), default=float("inf"))
        return min(self.host.dram_free_bytes_per_s * mem.shared.bandwidth_share, link_cap)

    def shared_capacity_overflow_bytes(self) -> float:
        """How far dies sharing host DRAM plus the host's reserve exceed the host DRAM (0 if not)."""
        shared = sum(self.die_type(d).memory.shared.capacity_gib for d in self.die_names
                     if self.die_type(d).memory.shared)
        return max(0.0, (shared + self.host.reserved_gib - self.host.dram.capacity_gib) * GiB)
