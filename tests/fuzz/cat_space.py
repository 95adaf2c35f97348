"""Fuzz category: design-space YAML files for `chipfuse explore`, mutated from a real one.

Each case is the bytes of a space file: YAML-text mutations (weird numbers, truncation, deep nesting,
non-UTF-8 bytes, the wrong top level, alias bombs) or structure mutations (weird values anywhere, dropped
or unknown keys, empty or huge option lists, impossible links, memories, counts and precisions). `check`
sweeps it for SmolLM2-135M as `chipfuse explore` does: a clear refusal, or a result whose every figure is
finite and non-negative and whose reported points meet the target.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import strategies as st

from .harness import bad_numbers, mutate_anywhere, yaml_mutant, yaml_text_op

NAME = "space YAML"
WEIRD_VALUES = (float("inf"), float("nan"), -1, 0, 1e-300, 10**20, 1e300, True, None, "x", [], {}, [0], [65],
                [1, 1], "talk-4die-d2d", "no-such-preset", {"kind": "usb"}, {"own": {}}, 2**63, "int3")
WEIRD_TOKENS = (".inf", ".nan", "-1", "0", "1e400", "true", "null", '"12"', "[]", "{}", "1" + "0" * 400, "~")
TARGET = "decode>=1,power<=1000"

BASE = """\
name: fuzz
socs:
  a55-d2d: talk-4die-d2d
  own:
    name: a small SoC
    cpu: {cores: 4, core_type: cortex-a55, freq_ghz: 1.8, gflops_fp32: 57.6}
    dram: {type: LPDDR4X, bus_width_bits: 32, data_rate_mtps: 4266, capacity_gib: 8, efficiency: 0.7}
    traffic: {display_width_px: 3840, display_height_px: 2160, refresh_hz: 60}
    ports: [{kind: d2d}, {kind: pcie, gen: 3, lanes: 2, count: 2}, {kind: usb, usb: usb3.2-gen1, count: 2}]
    static_w: 1.5
die_types:
  medium: {tops: {int4: 64, int8: 32, fp16: 8}, area_mm2: 40, process_nm: 12, power: {static_w: 0.8}}
die_counts: [1, 2, 4]
links:
  d2d: {host: {kind: d2d-pcb}, dies: {kind: d2d-package}, topology: ring, package: true}
  usb: {host: {kind: usb, usb: usb3.2-gen1}, topology: star}
memories:
  lpddr5-8g: {own: {type: LPDDR5, bus_width_bits: 64, data_rate_mtps: 6400, capacity_gib: 8}}
  shared-2g: {shared: {capacity_gib: 2}}
packaging: [organic-2d, interposer-2.5d]
precisions: [int4, int8]
workload: {context: 1024, prompt_tokens: 128}
"""


def _anywhere(d: dict, rnd: random.Random) -> None:
    mutate_anywhere(d, rnd, WEIRD_VALUES)


def _options_op(d: dict, rnd: random.Random) -> None:
    op = rnd.choice(["empty", "counts", "many_counts", "link", "memory", "precision", "die", "typo", "workload",
                     "splits", "models"])
    if op == "empty":
        d[rnd.choice(["socs", "die_types", "die_counts", "links", "memories", "precisions", "packaging"])] = \
            rnd.choice([[], {}])
    elif op == "counts":
        d["die_counts"] = rnd.choice([[3], [0], [-2], [64], [2.5], ["4"], [1, 1], [True]])
    elif op == "many_counts":
        d["die_counts"] = list(range(1, rnd.choice([9, 17, 65])))
    elif op == "link":
        d["links"]["x"] = rnd.choice([{"host": {"kind": "d2d-package"}, "topology": "star"},
                                      {"host": {"kind": "pcie", "gen": 9, "lanes": 2}, "topology": "star"},
                                      {"host": {"kind": "pcie"}, "topology": "chain"},
                                      {"host": {"kind": "ethernet-1g"}, "dies": {"kind": "wifi-6"}, "topology": "ring"},
                                      {"host": {"kind": "d2d-pcb", "between": ["host", "die0"]}, "topology": "star"},
                                      {"host": {"kind": "usb", "usb": "usb4", "bandwidth_gb_per_s": 1e-12},
                                       "topology": "star"}])
    elif op == "memory":
        d["memories"]["x"] = rnd.choice([{"shared": {"capacity_gib": 1e9}}, {"own": {"type": "LPDDR5"}},
                                         {"own": {"type": "LPDDR5", "bus_width_bits": 64, "data_rate_mtps": 6400,
                                                  "capacity_gib": 1e-9}}, {"own": {}, "shared": {}},
                                         {"shared": {"capacity_gib": 1, "bandwidth_share": 2}}])
    elif op == "precision":
        d["precisions"] = rnd.choice([["int3"], ["fp32", "fp32"], ["INT4"], [""], ["int4-g128-sym", "fp8"]])
    elif op == "die":
        d["die_types"]["x"] = rnd.choice([{"tops": {}}, {"tops": {"int8": 1e-9}, "area_mm2": 1e6},
                                          {"tops": {"int8": 1}, "memory": {"shared": {"capacity_gib": 1}}},
                                          {"tops": {"fp16": 1e9}, "compute_efficiency": 1},
                                          {"tops": {"int4": 1}, "area_mm2": 90000}])
    elif op == "typo":
        key = rnd.choice(list(d))
        d[key + rnd.choice(["s", "x", "_"])] = d.pop(key)
    elif op == "workload":
        d["workload"] = rnd.choice([{"context": 0}, {"context": 10**7}, {"context": 16, "prompt_tokens": 64},
                                    {"kv_precision": "int2"}, {"batch": 4}])
    elif op == "splits":
        d["splits"] = rnd.choice([["hybrid"], [], ["tensor"], ["tensor", "tensor", "pipeline"]])
    else:
        d["models"] = rnd.choice([["no-such-model"], ["/etc/passwd"], [5], ["smollm2-135m"] * 3])


def _plausible(d: dict, rnd: random.Random) -> None:
    """An edit a user might make: other counts, capacities, rates, precisions or workload."""
    op = rnd.choice(["counts", "capacity", "tops", "precisions", "workload", "display", "share", "fanless"])
    if op == "counts":
        d["die_counts"] = rnd.choice([[1], [2, 3], [4], [1, 2, 3, 4], [8]])
    elif op == "capacity":
        d["memories"]["lpddr5-8g"]["own"]["capacity_gib"] = rnd.choice([0.01, 0.25, 1, 64])
    elif op == "tops":
        d["die_types"]["medium"]["tops"]["int8"] = rnd.choice([0.001, 1, 1000])
    elif op == "precisions":
        d["precisions"] = rnd.choice([["fp32"], ["fp16", "int4-g128-sym"], ["fp8-e5m2"], ["bf16", "int8"]])
    elif op == "workload":
        d["workload"] = rnd.choice([{"context": 1, "prompt_tokens": 1}, {"context": 8192, "prompt_tokens": 8192},
                                    {"context": 2048, "kv_precision": "fp32"}])
    elif op == "display":
        d["socs"]["own"]["traffic"] = rnd.choice([{"display_width_px": 7680, "display_height_px": 4320,
                                                   "refresh_hz": 240}, {"other_gb_per_s": 11.0}, {}])
    elif op == "share":
        d["memories"]["shared-2g"]["shared"]["bandwidth_share"] = rnd.choice([1e-6, 0.5, 1.0])
    else:
        d["fanless_w"] = rnd.choice([0.5, 5, 1000])


TOPS = ["[]", "0", "null", "''", "socs: 5", "socs: {}", "", "- 1\n- 2", "!!python/object:os.system x"]


def _text_op(text: str, rnd: random.Random) -> str:
    return yaml_text_op(text, rnd, WEIRD_TOKENS, ("die_counts: [1, 2, 4]", "die_counts"), TOPS)


@st.composite
def _case(draw) -> bytes:
    return yaml_mutant(draw, BASE, [_plausible, _plausible, _plausible, _options_op, _options_op, _anywhere], _text_op)


def strategy():
    return _case()


def check(case: bytes) -> str:
    """Sweep the space file for SmolLM2-135M like `chipfuse explore` (one process, no plots)."""
    from chipfuse import api

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_bytes(case)
        res = api.explore(path, ["smollm2-135m"], target=TARGET, workers=1, plots=False, require_met=False)
    data = res.to_json()
    points = [*res.front, *res.cheapest]
    if bad_numbers([p.__dict__ for p in points]) or bad_numbers(data["configurations"]):
        return "impossible"
    if any(not (p.decode_tokens_per_s >= 1 and p.power_w <= 1000 and p.cost_usd >= 0) for p in points):
        return "impossible"
    if res.meeting and not points:
        return "impossible"
    return "ok"
