"""A device from a handful of facts: its peak TOPS, its DRAM's GB/s and GiB, and optionally the family whose
fitted factors it borrows; or a cluster of N such devices over a named link.

    device: orange-pi-5-plus
    tops: {int8: 0.84, fp16: 0.42, fp32: 0.21}
    dram: {bandwidth_gb_per_s: 33.8, capacity_gib: 16}
    family: rk3588              # a preset, a calibration family ("Arm SBC CPU") or a class (CPU, GPU, NPU)
    count: 1                    # optional: N devices on a switch ...
    link: ethernet-1g           # ... over this link (each device's uplink)

The facts say what a spec sheet says; what it does not say (how much of its peak compute and DRAM bandwidth
an engine reaches, the fixed cost of a layer, the precision activations run in, whether 4-bit weights are
expanded) is borrowed: from a preset, from a family's fit, or from a class's typical family (a device of a
family never measured), all written by `chipfuse calibrate --apply` (hw/fitted_factors.yaml), or defaults that
are said to be assumed. The System's description and `sources` say which
factors were borrowed and from where. Expanded into an ordinary System (hw.spec) before planning.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ..errors import SpecError
from .spec import Strict, System, _Tops

QUICK_KEYS = {"device", "tops", "dram", "family", "engine", "count", "link", "sources", "cores"}
DEFAULT_FACTORS: dict[str, Any] = {"compute_efficiency": 0.5, "prefill_compute_efficiency": None, "op_overhead_s": 2e-6,
                   "dram_efficiency": 0.75, "activation_precision": "fp16", "weight_only": []}


class QuickDram(Strict):
    bandwidth_gb_per_s: float = Field(gt=0, description="peak DRAM bandwidth, GB/s")
    capacity_gib: float = Field(gt=0, description="DRAM capacity, GiB")


class QuickDevice(Strict):
    """The few facts of a device (see the module's docstring)."""

    device: str = Field(min_length=1, max_length=100)
    tops: dict[Literal["int4", "int8", "fp8", "fp16", "bf16", "fp32"], _Tops] = Field(min_length=1)
    dram: QuickDram
    family: str | None = Field(None, description="a preset or a calibration family whose fitted factors to borrow")
    engine: str | None = Field(None, max_length=100, description="the inference engine: recorded in the description; "
                                                                  "without a family, it picks the one family "
                                                                  "measured under it")
    count: int = Field(1, ge=1, le=64, strict=True)
    link: str = Field("ethernet-1g", description="each device's uplink to the switch when count > 1")
    cores: int | None = Field(None, ge=1, le=1024, strict=True,
                              description="optional: the CPU cores whose peak `tops` adds up (a record on fewer threads "
                                          "reaches that share of it)")
    sources: dict[Literal["tops", "dram", "engine", "cores"], str] = Field(
        default_factory=dict, description="optional: where each fact comes from (a preset cites every number)")

    @field_validator("device")
    @classmethod
    def _name(cls, v: str) -> str:
        if not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError(f"{v!r}: use letters, digits, '-', '_' or '.'")
        return v


def is_quick(data: object) -> bool:
    return isinstance(data, dict) and "device" in data and "host" not in data


def _unknown_family(family: str) -> SpecError:
    from .families import CLASSES, FAMILIES
    from .load import preset_names

    close = difflib.get_close_matches(family, preset_names() + list(FAMILIES) + list(CLASSES), n=2, cutoff=0.5)
    return SpecError(f"family {family!r} is neither a preset, a calibration family nor a class"
                     + (f"; did you mean {' or '.join(close)}?" if close else "")
                     + f" (families: {', '.join(FAMILIES)}; classes: {', '.join(CLASSES)}; `chipfuse presets` lists "
                       "presets)")


def _borrowed(q: QuickDevice) -> tuple[dict[str, Any], str]:
    """The factors a device takes from its family (a preset, a calibration family or a class), or the defaults,
    and where they came from."""
    from .families import CLASSES, FAMILIES, fitted_factors
    from .load import load_system, preset_names

    if q.family is None:
        if q.engine is None:
            return dict(DEFAULT_FACTORS), "defaults (assumed: no family given)"
        fams = [f for f, row in fitted_factors()["families"].items() if q.engine.lower() in row.get("engines", [])]
        if len(fams) != 1:
            why = (f"the engine {q.engine!r} was measured in several families ({', '.join(fams)}): name one with "
                   "`family:`" if fams else f"no family was measured under the engine {q.engine!r}")
            return dict(DEFAULT_FACTORS), f"defaults (assumed: no family given; {why})"
        q = q.model_copy(update={"family": fams[0]})
        f, origin = _borrowed(q)
        return f, f"{origin}, the only family measured under the engine {q.engine!r}"

    if q.family in FAMILIES or q.family in CLASSES:
        table = fitted_factors()
        section, what = (("families", "family") if q.family in FAMILIES else ("classes", "class"))
        row = table[section].get(q.family)
        if row is None:
            return dict(DEFAULT_FACTORS), f"defaults (assumed: the {what} {q.family!r} has no fitted factors yet)"
        f = dict(DEFAULT_FACTORS)
        f.update({k: row[k] for k in ("compute_efficiency", "prefill_compute_efficiency", "op_overhead_s",
                                      "dram_efficiency", "activation_precision", "weight_only") if k in row})
        f["weight_only"] = [p for p in f["weight_only"] if p not in q.tops]
        origin = (f"the {q.family} family's fit" if section == "families"
                  else f"the typical {q.family} family ({', '.join(row.get('families', []))})")
        return f, origin + " in hw/fitted_factors.yaml (`chipfuse calibrate --apply`)"
    if q.family not in preset_names():
        raise _unknown_family(q.family)
    s = load_system(q.family)
    dt = s.die_type(s.die_names[0])
    mem = dt.memory.own or s.host.dram
    usable = [p for p in dt.weight_only if p not in q.tops]
    return ({"compute_efficiency": dt.compute_efficiency, "prefill_compute_efficiency": dt.prefill_compute_efficiency,
             "op_overhead_s": dt.op_overhead_s,
             "dram_efficiency": mem.efficiency, "activation_precision": dt.activation_precision,
             "weight_only": usable}, f"preset {q.family} (fitted by `chipfuse calibrate`)")


def expand(q: QuickDevice) -> System:
    """The System of a quick device (a host SoC whose engine reads the device's DRAM), or a cluster of them."""
    f, origin = _borrowed(q)
    act = f["activation_precision"] if f["activation_precision"] in q.tops else next(iter(q.tops))
    dram = {"type": "LPDDR5", "bus_width_bits": 64, "data_rate_mtps": 6400, "capacity_gib": q.dram.capacity_gib,
            "efficiency": f["dram_efficiency"], "bandwidth_gb_per_s": q.dram.bandwidth_gb_per_s}
    die_type = {"description": f"{q.device}: the engine's compute ({', '.join(f'{k} {v:g}' for k, v in q.tops.items())} "
                               "TOPS)",
                "tops": dict(q.tops), "weight_only": f["weight_only"], "compute_efficiency": f["compute_efficiency"],
                "prefill_compute_efficiency": f["prefill_compute_efficiency"],
                "op_overhead_s": f["op_overhead_s"], "activation_precision": act}
    reserved = min(1.0, q.dram.capacity_gib / 8)
    what = (f"{q.device}" + (f" x {q.count} over {q.link}" if q.count > 1 else "")
            + (f", engine {q.engine}" if q.engine else "")
            + f"; borrowed compute efficiency {f['compute_efficiency']:g}, DRAM efficiency {f['dram_efficiency']:g}, "
              + (f"prefill compute efficiency {f['prefill_compute_efficiency']:g}, "
                 if f["prefill_compute_efficiency"] else "")
              + f"{f['op_overhead_s'] * 1e6:g} us per layer, activations in {act} from {origin}")
    sources = {"die_types.engine": f"quick device: TOPS as given ({q.sources.get('tops', 'source not stated')}); "
                                   f"factors from {origin}",
               "host.dram": f"quick device: {q.dram.bandwidth_gb_per_s:g} GB/s and {q.dram.capacity_gib:g} GiB as given "
                            f"({q.sources.get('dram', 'source not stated')}); efficiency from {origin}"}
    host = {"name": q.device, "cpu": {"cores": q.cores or 4, "core_type": "unknown", "freq_ghz": 2.0, "gflops_fp32": 50.0},
            "dram": dram, "reserved_gib": reserved, "overhead_per_token_s": 1e-4}
    if q.count == 1:
        die_type["memory"] = {"shared": {"capacity_gib": q.dram.capacity_gib - reserved, "bandwidth_share": 1.0}}
        data: dict[str, Any] = {"name": q.device, "description": what, "host": host, "die_types": {"engine": die_type},
                                "dies": [{"name": "engine", "type": "engine"}],
                                "links": [{"between": ["host", "engine"], "kind": "on-chip"}], "sources": sources}
    else:
        die_type["memory"] = {"own": {**dram, "capacity_gib": q.dram.capacity_gib - reserved}}
        port = _port(q.link)
        host["ports"] = [port]
        data = {"name": f"{q.device}-x{q.count}", "description": what, "host": host, "die_types": {"engine": die_type},
                "boards": {"count": q.count, "prefix": "d", "board": {"dies": [{"name": "engine", "type": "engine"}]},
                           "uplink": {"from": "engine", "kind": q.link}, "switch": "switch"},
                "links": [{"between": ["host", "d0.engine"], "kind": "on-chip"}], "sources": sources}
    return System.model_validate(data)


def _port(link: str) -> dict:
    if link.startswith("ethernet-"):
        return {"kind": "ethernet", "ethernet": link.removeprefix("ethernet-"), "count": 1}
    if link.startswith("wifi-"):
        return {"kind": "wifi", "wifi": link, "count": 1}
    raise SpecError(f"link {link!r}: a cluster of devices joins over ethernet-1g, ethernet-2.5g, ethernet-10g, "
                    "wifi-5 or wifi-6")


def parse_quick(data: dict, source: str) -> System:
    """A quick-device mapping checked and expanded; every problem one SpecError naming the field."""
    from ..errors import format_validation_error

    extra = set(data) - QUICK_KEYS
    if extra:
        close = {k: difflib.get_close_matches(str(k), sorted(QUICK_KEYS), n=1) for k in extra}
        hints = ", ".join(f"{k}" + (f" (did you mean {c[0]}?)" if c else "") for k, c in close.items())
        raise SpecError(f"{source}: unknown key(s) {hints}; a device file has {', '.join(sorted(QUICK_KEYS))}")
    try:
        q = QuickDevice.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, err, "device description")) from None
    try:
        return expand(q)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, err, "device description")) from None


__all__ = ["QuickDevice", "is_quick", "parse_quick", "expand"]
