"""The hardware description: host SoC, NPU dies, links, packages and topology.

A system file is YAML validated by these pydantic models (see docs/hardware.md). Numbers a
user writes carry their unit in the field name; the properties convert to SI. The compact forms
(`boards`, and packages of N identical dies) are expanded into the ordinary fields before
validation (hw/compact.py), so a loaded System always holds the long form.
"""

from __future__ import annotations

import math
import re
import types
from collections import Counter
from functools import cached_property, partial
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import networkx as nx
from annotated_types import Ge
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .dram import DRAM_RATE_MTPS, die_read_bytes_per_s, peak_bandwidth_bytes_per_s
from .links import (
    ETHERNET_BITS_PER_S,
    ETHERNET_PORT_SPEED,
    PCIE_LANES,
    USB_BYTES_PER_S,
    WIFI_PORT_GEN,
    LinkKind,
    link_defaults,
    port_kind,
)
from .routing import relay_graph, relayed_path, usb_hub_uplinks

GiB = 1024**3
GB = 1e9

Precision = Literal["int4", "int8", "fp8", "fp16", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("int4", "int8", "fp8", "fp16", "bf16", "fp32")
HOST = "host"

# Accepted range of a number, chosen by the unit its field name carries: (pattern, smallest
# non-zero value, largest value, unit). The first match wins, so longer suffixes come first.
# The bounds are far outside any real part but keep every figure the models derive finite
# (5e-324 GiB or 1e300 GB/s would overflow or divide by zero downstream).
UNIT_RANGES: tuple[tuple[str, float, float, str], ...] = (
    (r"_gb_per_s$", 1e-6, 1e6, "GB/s"),
    (r"_gib$", 1e-6, 1e6, "GiB"),
    (r"_mib$", 1e-6, 1e9, "MiB"),
    (r"_mtps$", 1.0, 1e6, "MT/s"),
    (r"_ghz$", 1e-3, 100.0, "GHz"),
    (r"_hz$", 1e-3, 1e4, "Hz"),
    (r"_us$", 1e-6, 1e6, "us"),
    (r"_s$", 1e-12, 10.0, "s"),
    (r"_w$", 1e-6, 1e6, "W"),
    (r"_usd$", 1e-6, 1e9, "USD"),
    (r"_px$", 1, 100_000, "px"),
    (r"_bits$", 1, 8192, "bits"),
    (r"_mm2$", 1e-3, 1e5, "mm^2"),
    (r"_nm$", 0.1, 1e4, "nm"),
    (r"^pj_per_", 1e-9, 1e6, "pJ"),
    (r"^tops$", 1e-6, 1e6, "TOPS"),
    (r"^gflops", 1e-6, 1e9, "GFLOP/s"),
    (r"efficiency$|_share$", 1e-3, 1.0, "(a fraction)"),
)


def unit_range(field: str) -> tuple[float, float, str] | None:
    """(smallest non-zero value, largest value, unit) accepted for a field, from its name; None if unitless."""
    for pattern, lo, hi, unit in UNIT_RANGES:
        if re.search(pattern, field):
            return lo, hi, unit
    return None


def _yaml_word(v: object) -> str:
    """A value as the user wrote it in YAML: true/false/null rather than Python's spelling."""
    return {True: "true", False: "false", None: "null"}.get(v, repr(v)) if isinstance(v, (bool, type(None))) else repr(v)


def _string_for_number(v: str | bytes) -> str:
    """Why a string is not accepted as a number, with the fix for the usual YAML surprises."""
    shown = repr(v) if len(v) <= 40 else repr(v[:40]) + "..."
    try:
        float(v)
    except ValueError:
        return f"expected a number, got the string {shown}"
    if isinstance(v, str) and "e" in v.lower() and "inf" not in v.lower():
        return (f"expected a number, got the string {shown}: YAML reads an exponent as a number only with a dot "
                f"and a sign; write it like 1.0e-3 or 2.0e+9")
    return f"expected a number, got the string {shown}; write the number without quotes"


def check_number(v: object, field: str, zero_ok: bool) -> object:
    """A number field's value as written: a real, finite number in the range its unit allows.

    Rejects YAML booleans and quoted numbers (pydantic would turn true into 1 and "896" into 896)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {_yaml_word(v)}")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(v, (str, bytes)):
        raise ValueError(_string_for_number(v))  # noqa: TRY004
    if not isinstance(v, (int, float)):
        return v  # None, lists, ...: the field's type decides
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v}")
    rng = unit_range(field)
    if rng is None:
        return v
    lo, hi, unit = rng
    if zero_ok and v == 0 or lo <= v <= hi:
        return v
    accepted = f"0 or between {lo:g} and {hi:g}" if zero_ok else f"between {lo:g} and {hi:g}"
    raise ValueError(f"must be {accepted} {unit}")


def numeric_annotation(tp: Any) -> bool:
    """Whether a field's type takes a plain number (int, float, an int Literal), optionally or-None."""
    if tp is bool:
        return False
    if tp in (int, float):
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return any(isinstance(a, int) and not isinstance(a, bool) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return any(numeric_annotation(a) for a in get_args(tp))
    if origin is Annotated:
        return numeric_annotation(get_args(tp)[0])
    return False


def _zero_ok(metadata: list) -> bool:
    """A field may be exactly 0 if it declares ge=0."""
    return any(isinstance(m, Ge) and m.ge == 0 for m in metadata)


def Number(unit_field: str, zero_ok: bool):
    """A float checked by the unit rules of `unit_field`: for dict values (tops.int8, pj_per_op.fp16)."""
    return Annotated[float, BeforeValidator(partial(check_number, field=unit_field, zero_ok=zero_ok))]


if TYPE_CHECKING:  # a type checker cannot evaluate Number(...) in an annotation; to it they are floats
    _PjPerOp = float
    _Tops = float
else:
    _PjPerOp = Number("pj_per_op", zero_ok=True)
    _Tops = Number("tops", zero_ok=False)


class Strict(BaseModel):
    """Base: unknown fields are errors (a typo must not be silently ignored); numbers are real,
    finite and within the range their unit allows (see UNIT_RANGES)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_number(cls, v: object, info: ValidationInfo) -> object:
        """Every number field goes through check_number before pydantic's own coercion."""
        name = info.field_name
        assert name is not None  # a field validator always runs for a named field
        field = cls.model_fields[name]
        if not numeric_annotation(field.annotation):
            return v
        return check_number(v, name, _zero_ok(field.metadata))


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
    bytes_per_pixel: int = Field(4, ge=0, le=16)
    other_gb_per_s: float = Field(0.0, ge=0, description="camera, ISP, GPU, ... in GB/s")

    @property
    def bytes_per_s(self) -> float:
        display = self.display_width_px * self.display_height_px * self.bytes_per_pixel * self.refresh_hz
        return display + self.other_gb_per_s * GB


class CPU(Strict):
    cores: int = Field(gt=0, le=100_000)
    core_type: str
    freq_ghz: float = Field(gt=0)
    gflops_fp32: float = Field(gt=0, description="peak FP32 GFLOP/s of all cores")
    time_share_efficiency: float = Field(
        1.0, gt=0, le=1, description="share of the cores' time that still does work when emulated dies' threads "
                                     "outnumber them (context switches, cold caches, threads waiting on each other; "
                                     "sim/perf.core_sharing); fitted by `chipfuse probe` on a 2-die tensor run")


class Port(Strict):
    """A port the host offers for attaching dies (or boards, through a network switch)."""

    kind: Literal["pcie", "usb", "d2d", "ethernet", "wifi"]
    gen: int | None = Field(None, ge=1, le=5, description="PCIe generation")
    lanes: int | None = Field(None, ge=1, le=16, description="PCIe lanes: 1, 2, 4, 8 or 16")
    usb: Literal["usb3.2-gen1", "usb3.2-gen2", "usb3.2-gen2x2", "usb4"] | None = None
    ethernet: Literal["1g", "2.5g", "10g"] | None = Field(
        None, description="fastest Ethernet speed the port takes; links at the host may not exceed it")
    wifi: Literal["wifi-5", "wifi-6"] | None = Field(
        None, description="newest Wi-Fi generation the radio speaks; links at the host may not exceed it")
    count: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _kind_fields(self) -> Port:
        _check_kind_fields(self.kind, self.gen, self.lanes, self.usb)
        if self.kind != "ethernet" and self.ethernet is not None:
            raise ValueError(f"'ethernet' names an Ethernet speed; remove it from this {self.kind} entry "
                             f"(or set kind: ethernet)")
        if self.kind != "wifi" and self.wifi is not None:
            raise ValueError(f"'wifi' names a Wi-Fi generation; remove it from this {self.kind} entry (or set kind: wifi)")
        return self


class HostSoC(Strict):
    name: str
    cpu: CPU
    dram: DRAM
    reserved_gib: float = Field(1.0, ge=0, description="host DRAM kept for the OS and applications")
    traffic: HostTraffic = HostTraffic()
    ports: list[Port] = Field([], max_length=64)
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
    pj_per_op: dict[Precision, _PjPerOp] = Field(default_factory=dict, description="dynamic energy per operation")


class VisionPath(Strict):
    """How a die runs vision models' ops where that differs from its matmul figures: the rate their FLOP reach
    per precision (efficiency included) and a fixed cost per op. An emulated die runs every precision's
    convolutions in float32 through chipfuse's own interpreter, so `chipfuse probe` measures these."""

    tops: dict[Precision, _Tops] = Field(description="tera-ops per second vision ops reach, per precision")
    gb_per_s: dict[Precision, _Tops] = Field(default_factory=dict, description="GB/s an op's activations stream "
                                             "at, per precision (default: the die's memory bandwidth)")
    node_overhead_s: float = Field(0.0, ge=0, description="fixed cost of one op (dispatch)")


class TrainPath(Strict):
    """How a die runs a LoRA fine-tuning step where that differs from its inference figures: the rate a training
    layer's forward and backward FLOP reach, and a fixed cost per layer and micro-batch (autograd's many small
    ops: norms, rotary, adapters, dropout, their gradients). An emulated die trains in float32 through autograd,
    so `chipfuse probe --train` measures these."""

    tops: _Tops = Field(description="tera-ops per second a training layer's forward and backward FLOP reach")
    layer_overhead_s: float = Field(0.0, ge=0, le=1.0, description="fixed cost of one layer's forward and backward "
                                                                    "for one micro-batch")


class DieType(Strict):
    """One NPU die design. Throughput is peak tera-operations per second (a MAC is 2 ops)."""

    description: str = ""
    tops: dict[Precision, _Tops] = Field(description="peak TOPS (TFLOPS for floating point) per supported precision")
    weight_only: list[Precision] = Field(
        default_factory=list,
        description="weight formats the die stores and expands on the fly to a precision it computes in "
                    "(weight-only quantisation, as GPUs and CPUs run INT4 weights)")
    sram_mib: float = Field(0, ge=0)
    memory: DieMemory
    nvm: NVM | None = None
    power: DiePower = DiePower()
    compute_efficiency: float = Field(0.5, gt=0, le=1, description="fraction of peak a matmul achieves")
    prefill_compute_efficiency: float | None = Field(
        None, gt=0, le=1, description="fraction of peak a prompt's (many-token) matmuls achieve, where an engine's "
                                      "prefill path differs from its decode path (default: compute_efficiency)")
    op_overhead_s: float = Field(2e-6, ge=0, description="fixed cost per layer step (dispatch, sync)")
    activation_precision: Precision = Field("fp16", description="precision of attention and activations")
    vision: VisionPath | None = Field(None, description="vision ops' own rates, if not tops x compute_efficiency "
                                                        "and op_overhead_s per op")
    train: TrainPath | None = Field(None, description="a fine-tuning step's own rates, if not the prefill roofline "
                                                      "(sim/train.py)")
    host_threads: int | None = Field(
        None, ge=1, le=100_000,
        description="for a die emulated on the host's CPU (`chipfuse probe`): the threads its kernels use. Such dies "
                    "share the host's `cpu.cores`, so dies computing at once slow each other down when their threads "
                    "outnumber the cores (sim/perf.core_sharing); null: the die has its own silicon")
    step_overhead_s: float = Field(0.0, ge=0, le=1.0, description="fixed cost each time the die runs a step (woken "
                                   "from its wait, receiving, launching); fitted by `chipfuse probe` on emulated dies")
    prefill_overhead_s: float = Field(
        0.0, ge=0, le=1.0,
        description="fixed cost each time the die runs a prompt's (prefill) step, beyond step_overhead_s: an emulated "
                    "die idles through the earlier stages' prefill and returns to work slower than between decode "
                    "steps; fitted by `chipfuse probe` from 1- and 2-die times to first token")
    collective_latency_s: float | None = Field(
        None, ge=0, le=1.0,
        description="for dies whose runtime exchanges a collective directly between every pair (emulated dies: one "
                    "socket per pair): what one all-reduce costs besides its bytes, in place of the links' latency "
                    "(a pipeline hop also pays the receiver's message dispatch, which dies already running do not); "
                    "measured by `chipfuse probe` on a traced 2-die tensor run; null: the links' latency and routes")
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


def _check_kind_fields(kind: str, gen: int | None, lanes: int | None, usb: str | None) -> None:
    """gen and lanes belong to PCIe, usb to USB: a stray one is a mistake the model would ignore."""
    if lanes is not None and lanes not in PCIE_LANES:
        raise ValueError(f"lanes {lanes} is not a PCIe width; accepted: 1, 2, 4, 8, 16")
    if kind != "pcie" and (gen is not None or lanes is not None):
        raise ValueError(f"'gen' and 'lanes' describe PCIe only; remove them from this {kind} entry "
                         f"(or set kind: pcie)")
    if kind != "usb" and usb is not None:
        raise ValueError(f"'usb' names a USB generation; remove it from this {kind} entry (or set kind: usb)")


def _check_network_speed(kind: str, used: list[Link], ports: list[Port]) -> None:
    """An Ethernet or Wi-Fi link at the host may not be faster than the fastest port of its kind
    (checked only when every such port states its speed)."""
    stated: list[str | None]
    if kind == "ethernet":
        stated = [p.ethernet for p in ports]
        rank = {"1g": 1.0, "2.5g": 2.5, "10g": 10.0}
        link_speed = ETHERNET_PORT_SPEED
    else:
        stated = [p.wifi for p in ports]
        rank = {"wifi-5": 5.0, "wifi-6": 6.0}
        link_speed = {k: k for k in WIFI_PORT_GEN}
    if not stated or any(x is None for x in stated):
        return
    best = max((x for x in stated if x is not None), key=rank.__getitem__)
    for lk in used:
        if rank[link_speed[lk.kind]] > rank[best]:
            raise ValueError(f"link {lk.kind} at the host is faster than its fastest {kind} port ({best}); "
                             f"use a slower link kind or add a faster port to host.ports")


class Die(Strict):
    name: str
    type: str = Field(description="a key of die_types")


class Link(Strict):
    """A physical link between two nodes (host, a die or a switch); full duplex."""

    between: tuple[str, str]
    kind: LinkKind = Field(
        description="on-chip: the compute engine is part of the host SoC itself (a real monolithic device); "
                    "ethernet-1g/-2.5g/-10g: TCP over IEEE 802.3; wifi-5/-6: TCP over a 2x2 802.11ac/ax link")
    gen: int | None = Field(None, ge=1, le=5, description="PCIe generation 1-5")
    lanes: int | None = Field(None, ge=1, le=16, description="PCIe lanes: 1, 2, 4, 8 or 16")
    usb: Literal["usb3.2-gen1", "usb3.2-gen2", "usb3.2-gen2x2", "usb4"] | None = None
    bandwidth_gb_per_s: float | None = Field(None, gt=0, description="override: raw GB/s per direction")
    efficiency: float | None = Field(None, gt=0, le=1)
    latency_us: float | None = Field(None, ge=0)
    pj_per_bit: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _kind_fields(self) -> Link:
        if self.kind == "pcie" and (self.gen is None or self.lanes is None):
            raise ValueError("a pcie link needs 'gen' (1-5) and 'lanes' (1, 2, 4, 8, 16)")
        if self.kind == "usb" and self.usb is None:
            raise ValueError(f"a usb link needs 'usb', one of: {', '.join(USB_BYTES_PER_S)}")
        _check_kind_fields(self.kind, self.gen, self.lanes, self.usb)
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
        if self.kind in ETHERNET_BITS_PER_S:
            return f"{ETHERNET_BITS_PER_S[self.kind] / 1e9:g}GbE"
        if self.kind in WIFI_PORT_GEN:
            return f"Wi-Fi {WIFI_PORT_GEN[self.kind]}"
        return self.kind.upper()

    def transfer_s(self, nbytes: float) -> float:
        """Time for one transfer of `nbytes` over this link."""
        return self.latency_s + nbytes / self.bytes_per_s


class Package(Strict):
    name: str
    dies: list[str]
    substrate: Literal["organic-2d", "interposer-2.5d"] = "organic-2d"
    cost_usd: float | None = Field(None, ge=0)


MAX_CACHED_ROUTES = 1 << 16  # a split search asks for a few thousand (a, b, bytes) routes


class RouteCache(dict[tuple[str, str, float], tuple[str, ...]]):
    """Routes already found, by (from, to, bytes). It is a memo of the graph, not part of the system:
    two systems are equal whatever their caches hold, and a deep copy starts empty."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RouteCache)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, RouteCache)

    __hash__ = None  # type: ignore[assignment]  # a dict: unhashable

    def __deepcopy__(self, memo: dict) -> RouteCache:
        return RouteCache()


class System(Strict):
    """A whole AI-chiplet system: one host SoC, its NPU dies and the links between them."""

    schema_version: Literal[1] = 1
    name: str
    description: str = ""
    host: HostSoC
    die_types: dict[str, DieType] = Field(max_length=256)
    dies: list[Die] = Field(min_length=1, max_length=256)
    switches: list[str] = Field([], max_length=256)
    links: list[Link] = Field([], max_length=4096)
    packages: list[Package] = Field([], max_length=256)
    fanless_w: float = Field(10.0, gt=0, le=1e6, description="the power a design may draw without a fan (the talk: "
                                                             "about 10 W for an edge box)")
    sources: dict[str, str] = Field(default_factory=dict, description="field path -> citation or 'assumed'")
    _routes: RouteCache = PrivateAttr(default_factory=RouteCache)

    @model_validator(mode="before")
    @classmethod
    def _expand_compact(cls, data: Any) -> Any:
        """`boards` and packages of `count` identical dies become ordinary dies, links, switches and packages."""
        from .compact import expand_compact, uses_compact_forms

        return expand_compact(data) if uses_compact_forms(data) else data

    @model_validator(mode="after")
    def _check_graph(self) -> System:
        names = [d.name for d in self.dies]
        dup = {n for n, k in Counter(names).items() if k > 1}
        if dup:
            raise ValueError(f"die names must be unique; repeated: {', '.join(sorted(dup))}")
        nodes = {HOST, *names, *self.switches}
        if len(nodes) != 1 + len(names) + len(self.switches):
            raise ValueError("names of dies and switches must be unique and must not be 'host'")
        for i, die in enumerate(self.dies):
            if die.type not in self.die_types:
                raise ValueError(f"dies[{i}] ({die.name}): type {die.type!r} is not in die_types "
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
        reached = nx.node_connected_component(g, HOST)
        unreachable = [n for n in names if n not in reached]
        if unreachable:
            raise ValueError(f"dies not connected to the host: {', '.join(unreachable)}; add links")
        self._usb_uplinks  # noqa: B018 - finds the USB hubs' upstream ports; refuses an ambiguous one
        self._check_ports()
        self._check_shared_bandwidth()
        over = self.shared_capacity_overflow_bytes()
        if over > 0:
            raise ValueError(f"dies with shared memory plus host.reserved_gib exceed host.dram.capacity_gib "
                             f"({self.host.dram.capacity_gib:g} GiB) by {over / GiB:.2f} GiB; lower their capacity_gib")
        return self

    def _check_shared_bandwidth(self) -> None:
        """Dies reading host DRAM need some of its bandwidth left after the display and other masters."""
        sharing = [d for d in self.die_names if self.die_type(d).memory.shared]
        if sharing and self.host.dram_free_bytes_per_s <= 0:
            raise ValueError(
                f"host.traffic takes {self.host.traffic.bytes_per_s / GB:.3g} GB/s, all of the host DRAM's usable "
                f"{self.host.dram.usable_bytes_per_s / GB:.3g} GB/s, leaving nothing for dies with shared memory "
                f"({', '.join(sharing)}); lower host.traffic or give the dies their own DRAM")

    def _check_ports(self) -> None:
        """Host links must fit the ports the host SoC offers."""
        host_links = [lk for lk in self.links if HOST in lk.between]
        for kind in ("pcie", "usb", "ethernet", "wifi"):
            used = [lk for lk in host_links if port_kind(lk.kind) == kind]
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
            if used and kind in ("ethernet", "wifi"):
                _check_network_speed(kind, used, ports)
        if any(lk.kind == "d2d-package" or lk.kind == "d2d-pcb" for lk in host_links) and not any(p.kind == "d2d" for p in self.host.ports):
            raise ValueError("a D2D link reaches the host, but the host offers no d2d port (existing SoCs have none: use pcie or usb)")

    @cached_property
    def graph(self) -> nx.Graph:
        """Undirected topology; each edge carries its Link and transfer cost data."""
        g: nx.Graph[str] = nx.Graph()
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

    @cached_property
    def _usb_uplinks(self) -> dict[str, str]:
        """Each USB hub (a switch whose links are all USB) -> the neighbour on its upstream port."""
        return usb_hub_uplinks(self.graph, HOST)

    @cached_property
    def _relay_graph(self) -> nx.DiGraph:
        """The directed routing graph in which USB hubs forward only up to the host or down from it."""
        return relay_graph(self.graph, self._usb_uplinks)

    @cached_property
    def _type_of(self) -> dict[str, str]:
        return {d.name: d.type for d in self.dies}

    def die_type(self, die: str) -> DieType:
        """The design of die `die`; a SpecError names the known dies if it is not one of them."""
        if die not in self._type_of:
            from ..errors import SpecError

            raise SpecError(f"{self.name}: no die named {die!r}; its dies are {', '.join(self._type_of)}")
        return self.die_types[self._type_of[die]]

    @property
    def die_names(self) -> list[str]:
        return [d.name for d in self.dies]

    def route_nodes(self, a: str, b: str, nbytes: float) -> list[str]:
        """Nodes a transfer of `nbytes` passes from a to b on the quickest path, both ends included.

        A USB hub forwards only between its upstream port and its downstream ports, so a transfer
        between two USB devices goes up to the host and back down (the hub appears twice). Routes are
        remembered per (a, b, nbytes) on this system; each call returns a new list."""
        if a == b:
            return [a]
        key = (a, b, nbytes)
        found = self._routes.get(key)
        if found is None:
            def weight(u: Any, v: Any, e: dict) -> float:
                return e["latency_s"] + nbytes * e["inv_bw"]

            uplinks = self._usb_uplinks
            if uplinks:
                path = relayed_path(self._relay_graph, uplinks, a, b, weight)
            else:
                path = nx.shortest_path(self.graph, a, b, weight=weight)
            found = tuple(path)
            if len(self._routes) >= MAX_CACHED_ROUTES:
                self._routes.clear()
            self._routes[key] = found
        return list(found)

    def route(self, a: str, b: str, nbytes: float) -> list[Link]:
        """The links a transfer of `nbytes` takes from a to b: the quickest path."""
        path = self.route_nodes(a, b, nbytes)
        return [self.graph.edges[u, v]["link"] for u, v in pairwise(path)]

    def die_memory_bytes(self, die: str) -> float:
        mem = self.die_type(die).memory
        if mem.own:
            return mem.own.capacity_bytes
        assert mem.shared is not None  # DieMemory holds exactly one of own, shared
        return mem.shared.capacity_gib * GiB

    def die_bandwidth_bytes_per_s(self, die: str) -> float:
        """Usable DRAM bandwidth of a die: its own DRAM, or its share of what the host leaves free."""
        mem = self.die_type(die).memory
        if mem.own:
            return die_read_bytes_per_s(mem.own.peak_bytes_per_s, mem.own.efficiency)
        assert mem.shared is not None  # DieMemory holds exactly one of own, shared
        dram = self.host.dram
        return die_read_bytes_per_s(dram.peak_bytes_per_s, dram.efficiency, self.host.traffic.bytes_per_s,
                                    mem.shared.bandwidth_share, self.shared_link_cap_bytes_per_s(die))

    def shared_link_cap_bytes_per_s(self, die: str) -> float:
        """A die sharing host DRAM reads it over its route from the host: the slowest off-chip link caps it."""
        links = [lk for lk in self.route(HOST, die, 1 << 20) if lk.kind != "on-chip"]
        return min((lk.bytes_per_s for lk in links), default=float("inf"))

    def shared_capacity_overflow_bytes(self) -> float:
        """How far dies sharing host DRAM plus the host's reserve exceed the host DRAM (0 if not)."""
        shared = sum(s.capacity_gib for s in (self.die_type(d).memory.shared for d in self.die_names) if s)
        return max(0.0, (shared + self.host.reserved_gib - self.host.dram.capacity_gib) * GiB)
