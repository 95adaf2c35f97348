"""A design space: the options an architect weighs, each written once, and the systems they combine into.

    name: edge-box
    socs:                          # host SoC options: a HostSoC mapping, or the name of a preset whose host to take
      a55: talk-4die-d2d
    die_types:                     # NPU die options, as in a system file but without `memory` (that is `memories`)
      medium: {tops: {int4: 64, int8: 32, fp16: 8}, area_mm2: 40, process_nm: 12}
    die_counts: [1, 2, 4]
    links:                         # how the dies join the host and each other
      d2d: {host: {kind: d2d-pcb}, dies: {kind: d2d-package}, topology: ring, package: true}
      pcie: {host: {kind: pcie, gen: 3, lanes: 2}, topology: star}
    memories:                      # each die's memory: its own DRAM, or a share of the host's
      lpddr5-8g: {own: {type: LPDDR5, bus_width_bits: 64, data_rate_mtps: 6400, capacity_gib: 8}}
      shared-4g: {shared: {capacity_gib: 4}}
    packaging: [organic-2d, interposer-2.5d]   # substrates for link options whose dies share a package
    precisions: [int4, int8]
    workload: {context: 2048, prompt_tokens: 256}

A configuration is one choice of each (and a model); `Space.system(config)` builds it as an ordinary
System, which is what the full planner and `chipfuse plan` take. Validation names the field and, for a
misspelt key, the nearest known one.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from ..errors import SpecError
from ..errors import format_validation_error as _format_errors
from ..hw.spec import HOST, DieMemory, DieType, HostSoC, Link, Strict, System
from ..io import read_text_bounded
from ..quant.formats import FORMATS, get_format

MAX_SPACE_FILE_BYTES = 1 << 20
MAX_OPTIONS = 256  # per dimension
MAX_CONFIGS = 20_000_000  # a sweep beyond this would not finish on an edge architect's machine
TOPOLOGIES = ("chain", "ring", "star")
SUBSTRATES = ("organic-2d", "interposer-2.5d")
_PLACEHOLDER_MEMORY = {"shared": {"capacity_gib": 1.0}}


class LinkOption(Strict):
    """The host's link to the dies and the dies' links to each other."""

    host: dict[str, Any] = Field(description="Link fields but `between`: the host to the first die (star: to every die)")
    dies: dict[str, Any] | None = Field(None, description="Link fields but `between`: die to die (chain and ring)")
    topology: Literal["chain", "ring", "star"] = Field(
        "chain", description="chain: host-die0-die1-...; ring: a chain closed back to die0; star: every die on the host")
    package: bool = Field(False, description="the dies share one package (in-package D2D links need it)")
    substrate: Literal["organic-2d", "interposer-2.5d"] | None = Field(
        None, description="pin the package substrate (otherwise every `packaging` option is tried)")

    @model_validator(mode="after")
    def _links_parse(self) -> LinkOption:
        for key, fields in (("host", self.host), ("dies", self.dies)):
            if fields is None:
                continue
            if "between" in fields:
                raise ValueError(f"{key}: leave out `between`; the topology places the links")
            Link.model_validate({**fields, "between": ("a", "b")})
        if self.topology != "star" and self.dies is None:
            raise ValueError(f"a {self.topology} topology joins the dies to each other: give `dies` (Link fields)")
        return self


SocOption = Annotated[Annotated[HostSoC, Tag("soc")] | Annotated[str, Tag("preset")],
                      Discriminator(lambda v: "preset" if isinstance(v, str) else "soc")]


class Workload(Strict):
    context: int = Field(2048, ge=1, le=1_048_576, description="tokens of context the KV cache holds")
    prompt_tokens: int = Field(256, ge=1, le=1_048_576)
    kv_precision: str = "fp16"
    output_tokens: int | None = Field(None, ge=1, le=1_048_576, description="tokens generated per request: decode is "
                                      "predicted at the mean position (default: at the full context, the worst case)")

    @model_validator(mode="after")
    def _prompt_in_context(self) -> Workload:
        if self.prompt_tokens > self.context:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} exceeds context {self.context}")
        if self.output_tokens is not None and self.prompt_tokens + self.output_tokens > self.context:
            raise ValueError(f"prompt_tokens {self.prompt_tokens} + output_tokens {self.output_tokens} exceed context "
                             f"{self.context}")
        return self


class Space(Strict):
    """The options of a design-space search (see the module's docstring)."""

    name: str = "space"
    socs: dict[str, SocOption] = Field(min_length=1, max_length=MAX_OPTIONS)
    die_types: dict[str, DieType] = Field(min_length=1, max_length=MAX_OPTIONS)
    die_counts: list[int] = Field([1, 2, 4], min_length=1, max_length=64)
    links: dict[str, LinkOption] = Field(min_length=1, max_length=MAX_OPTIONS)
    memories: dict[str, DieMemory] = Field(min_length=1, max_length=MAX_OPTIONS)
    packaging: list[Literal["organic-2d", "interposer-2.5d"]] = Field(["organic-2d"], min_length=1, max_length=2)
    precisions: list[str] = Field(["int4"], min_length=1, max_length=len(FORMATS))
    splits: list[Literal["pipeline", "tensor"]] = Field(
        ["pipeline", "tensor"], min_length=1, max_length=2,
        description="pipeline: layer ranges die after die; tensor: every layer sharded over a group (2+ dies)")
    models: list[str] = Field([], max_length=64, description="catalogue names or config.json paths (--models adds)")
    workload: Workload = Workload()
    fanless_w: float = Field(10.0, gt=0, le=1e6)

    # DieType fields only `chipfuse probe` sets, for dies emulated on the host's CPU: the fast core (explore.core)
    # does not model them, so a space refuses them rather than disagree with the planner
    EMULATED_ONLY: ClassVar[tuple[str, ...]] = ("host_threads", "step_overhead_s", "prefill_overhead_s",
                                                    "collective_latency_s")

    @field_validator("die_types", mode="before")
    @classmethod
    def _memory_from_memories(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out = {}
        for name, dt in v.items():
            if isinstance(dt, dict) and "memory" in dt:
                raise ValueError(f"{name}: leave out `memory`; each die's memory is an option of `memories`")
            emulated = sorted(k for k in cls.EMULATED_ONLY if isinstance(dt, dict) and dt.get(k) not in (None, 0))
            if emulated:
                raise ValueError(f"{name}: leave out {', '.join(emulated)}: they describe dies emulated on this "
                                 "machine's CPU (`chipfuse probe` fits them), not silicon a design space explores")
            out[name] = {**dt, "memory": _PLACEHOLDER_MEMORY} if isinstance(dt, dict) else dt
        return out

    @field_validator("die_counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if not 1 <= n <= 64]
        if bad:
            raise ValueError(f"{bad}: a system holds 1 to 64 dies")
        if len(set(v)) != len(v):
            raise ValueError("a die count is listed twice")
        return v

    @field_validator("precisions")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                get_format(p)
            except SpecError:
                close = difflib.get_close_matches(p, list(FORMATS), n=1)
                raise ValueError(f"unknown precision {p!r}" + (f"; did you mean {close[0]}?" if close else "")
                                 + f" (formats: {', '.join(FORMATS)})") from None
        return v

    def host(self, soc: str) -> HostSoC:
        got = self.socs[soc]
        if isinstance(got, HostSoC):
            return got
        from ..hw.load import load_system

        return load_system(got).host

    def splits_for(self, dies: int) -> list[str]:
        """The split modes a design of `dies` dies is tried with (a tensor group needs two)."""
        return [x for x in self.splits if x == "pipeline" or dies > 1]

    def packagings(self, link: str) -> list[str | None]:
        """The substrates tried for a link option: its pinned one, every packaging option, or none (no package)."""
        lo = self.links[link]
        if not lo.package:
            return [None]
        return [lo.substrate] if lo.substrate else list(self.packaging)


@dataclass(frozen=True)
class Design:
    """One hardware choice of each option: what gets built (the model and precision are what runs on it)."""

    soc: str
    die_type: str
    dies: int
    link: str
    memory: str
    substrate: str | None

    @property
    def label(self) -> str:
        pkg = f" {self.substrate}" if self.substrate else ""
        return f"{self.soc} + {self.dies}x {self.die_type} ({self.memory}) over {self.link}{pkg}"


def designs(space: Space) -> list[Design]:
    """Every design of the space, in a fixed order."""
    out = []
    for soc, dt, n, link, mem in itertools.product(space.socs, space.die_types, space.die_counts, space.links,
                                                   space.memories):
        for sub in space.packagings(link):
            out.append(Design(soc, dt, n, link, mem, sub))
    return out


def frame_system(space: Space, soc: str, n: int, link: str, substrate: str | None,
                 die_type: DieType | None = None, type_name: str = "npu") -> System:
    """The system of a design's host, links and package, with `die_type` (any, for routes) on every die.
    Raises the System's ValidationError when the combination cannot be built (ports, package size)."""
    lo = space.links[link]
    dt = die_type or DieType.model_validate({"tops": {"int8": 1.0}, "memory": {"own": {
        "type": "LPDDR5", "bus_width_bits": 64, "data_rate_mtps": 6400, "capacity_gib": 8}}})
    names = [f"die{i}" for i in range(n)]
    links = []
    if lo.topology == "star":
        links = [{**lo.host, "between": (HOST, d)} for d in names]
    else:
        links = [{**lo.host, "between": (HOST, names[0])}]
        assert lo.dies is not None  # checked by LinkOption
        links += [{**lo.dies, "between": (a, b)} for a, b in zip(names, names[1:])]
        if lo.topology == "ring" and n > 2:
            links.append({**lo.dies, "between": (names[-1], names[0])})
    data = {"name": "design", "host": space.host(soc), "die_types": {type_name: dt},
            "dies": [{"name": d, "type": type_name} for d in names], "links": links, "fanless_w": space.fanless_w,
            "packages": [{"name": "pkg", "dies": names, "substrate": substrate}] if substrate else []}
    return System.model_validate(data)


def with_memory(space: Space, design: Design) -> DieType:
    """The design's die type holding its memory option; a shared one splits the host's bandwidth evenly
    unless the option gives its own `bandwidth_share`."""
    mem = space.memories[design.memory]
    if mem.shared is not None and "bandwidth_share" not in mem.shared.model_fields_set:
        mem = mem.model_copy(update={"shared": mem.shared.model_copy(update={"bandwidth_share": 1.0 / design.dies})})
    return space.die_types[design.die_type].model_copy(update={"memory": mem})


def design_system(space: Space, design: Design) -> System:
    """The design as an ordinary System (what `chipfuse plan` takes); a SpecError if it cannot be built."""
    from ..hw.load import format_validation_error

    try:
        s = frame_system(space, design.soc, design.dies, design.link, design.substrate, with_memory(space, design),
                         design.die_type)
    except ValidationError as err:
        raise SpecError(format_validation_error(design.label, err)) from None
    return s.model_copy(update={"name": _slug(design), "description": design.label})


def _slug(d: Design) -> str:
    return "-".join(x for x in (d.soc, f"{d.dies}x{d.die_type}", d.memory, d.link, d.substrate or "") if x)


def _suggest(field: str) -> str | None:
    """The space's or a system file's field name closest to a misspelt one."""
    from ..hw.load import _spec_fields

    names = set(Space.model_fields) | set(LinkOption.model_fields) | set(Workload.model_fields) | set(_spec_fields())
    close = difflib.get_close_matches(str(field), sorted(names), n=1, cutoff=0.6)
    return close[0] if close else None


def parse_space(data: object, source: str) -> Space:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a space file is a YAML mapping with socs, die_types, die_counts, links and "
                        "memories (see docs/explore.md)")
    try:
        space = Space.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(source, err, "design space", suggest=_suggest)) from None
    for name, soc in space.socs.items():
        if isinstance(soc, str):
            try:
                space.host(name)
            except SpecError as err:
                raise SpecError(f"{source}: socs.{name}: {err}") from None
    return space


def load_space(path: str | Path) -> Space:
    """Read and check a space file."""
    from ..hw.load import parse_yaml

    p = Path(path)
    text = read_text_bounded(p, "space file", MAX_SPACE_FILE_BYTES, error=SpecError)
    return parse_space(parse_yaml(text, str(p)), str(p))


__all__ = ["Space", "LinkOption", "Design", "designs", "design_system", "frame_system", "load_space", "parse_space",
           "with_memory", "TOPOLOGIES", "SUBSTRATES", "MAX_CONFIGS"]
