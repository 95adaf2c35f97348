"""Shared fixtures: small systems built in code, so tests do not depend on preset values."""

from __future__ import annotations

import copy
import os

import pytest

from chipfuse.hw.load import parse_system

# a resident launcher the developer left running must not serve the tests' commands and dies (its tests,
# tests/cli/test_resident.py, start their own and opt in)
os.environ["CHIPFUSE_RESIDENT"] = "0"

BASE = {
    "name": "test-system",
    "host": {
        "name": "test SoC",
        "cpu": {"cores": 4, "core_type": "cortex-a55", "freq_ghz": 1.8, "gflops_fp32": 57.6},
        "dram": {"type": "LPDDR4X", "bus_width_bits": 32, "data_rate_mtps": 3200, "capacity_gib": 4},
        "ports": [{"kind": "pcie", "gen": 3, "lanes": 4, "count": 4}],
    },
    "die_types": {
        "npu": {
            "tops": {"int4": 64, "int8": 32, "fp16": 8, "bf16": 8, "fp32": 1},
            "memory": {"own": {"type": "LPDDR5", "bus_width_bits": 64, "data_rate_mtps": 6400, "capacity_gib": 8}},
        }
    },
    "dies": [{"name": "die0", "type": "npu"}],
    "links": [{"between": ["host", "die0"], "kind": "pcie", "gen": 3, "lanes": 4}],
}


def make_system(n_dies: int = 1, capacity_gib: float = 8, topology: str = "chain", **die_overrides):
    """A host with n identical dies: chain (host-d0-d1-...) or star (every die on the host)."""
    d = copy.deepcopy(BASE)
    d["die_types"]["npu"]["memory"]["own"]["capacity_gib"] = capacity_gib
    d["die_types"]["npu"].update(die_overrides)
    d["dies"] = [{"name": f"die{i}", "type": "npu"} for i in range(n_dies)]
    links = [{"between": ["host", "die0"], "kind": "pcie", "gen": 3, "lanes": 4}]
    for i in range(1, n_dies):
        a = "host" if topology == "star" else f"die{i - 1}"
        links.append({"between": [a, f"die{i}"], "kind": "pcie", "gen": 3, "lanes": 4})
    d["links"] = links
    d["host"]["ports"][0]["count"] = max(4, n_dies)
    return parse_system(d, "test")


@pytest.fixture
def system_factory():
    return make_system


@pytest.fixture
def base_system() -> dict:
    """A valid one-die system description as a plain mapping, to break in tests."""
    return copy.deepcopy(BASE)


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF (fetched into the cache on first use)."""
    from chipfuse.frontends.model_files import default_gguf

    return default_gguf()
