"""The cost model against hand-computed cases: dies per wafer, yield, a good die, a package, a system's lines."""

from __future__ import annotations

import math

import pytest

from chipfuse.hw import cost
from chipfuse.hw.load import load_system


def test_dies_per_wafer_by_hand():
    # 300 mm wafer, 100 mm2 die: pi*150^2/100 - pi*300/sqrt(200) = 706.86 - 66.64 = 640.2 -> 640
    assert cost.dies_per_wafer(100) == 640
    # 40 mm2: pi*22500/40 = 1767.15; pi*300/sqrt(80) = 105.37; 1661.78 -> 1661
    assert cost.dies_per_wafer(40) == 1661
    assert cost.dies_per_wafer(70_000) == 0  # bigger than the wafer
    with pytest.raises(ValueError):
        cost.dies_per_wafer(0)


def test_yield_by_hand():
    # D0 0.1 /cm2, 100 mm2 = 1 cm2, alpha 3: (1 + 0.1/3)^-3 = 0.9063
    assert cost.die_yield(100, 0.1, 3.0) == pytest.approx((1 + 0.1 / 3) ** -3, rel=1e-12)
    assert cost.die_yield(100, 0.1, 3.0) == pytest.approx(0.90631, abs=1e-5)
    # large alpha tends to Poisson's exp(-D0 A)
    assert cost.die_yield(100, 0.1, 1e9) == pytest.approx(math.exp(-0.1), rel=1e-6)
    assert cost.die_yield(400, 0.1) < cost.die_yield(100, 0.1)  # bigger dies yield worse


def test_a_good_die_and_a_package_by_hand():
    p = cost.PROCESSES[12]  # $3,984 a wafer, D0 0.1
    good = 1661 * (1 + 0.1 * 0.4 / 3) ** -3
    die = 3984 / good + cost.TEST_USD_PER_DIE
    assert cost.good_die_usd(40, p) == pytest.approx(die, rel=1e-12)
    # four such dies on an organic substrate: (4 dies + $5 + 4 x $0.5) / 0.995^4
    assert cost.package_usd([die] * 4, "organic-2d") == pytest.approx((4 * die + 5 + 2) / 0.995 ** 4, rel=1e-12)
    # 2.5D: (4 dies + $20 + 4 x $1.5) / 0.98^4, dearer
    assert cost.package_usd([die] * 4, "interposer-2.5d") == pytest.approx((4 * die + 20 + 6) / 0.98 ** 4)
    assert cost.package_usd([die] * 4, "interposer-2.5d") > cost.package_usd([die] * 4, "organic-2d")


def test_a_system_costs_the_sum_of_its_lines_each_with_a_source():
    r = cost.system_cost(load_system("talk-4die-d2d"))
    assert r.bom_usd == pytest.approx(sum(line.usd for line in r.lines))
    assert all(line.source for line in r.lines)
    items = [line.item for line in r.lines]
    assert any(i.startswith("package npu4 (4 dies, organic-2d)") for i in items)
    assert sum(1 for i in items if "DRAM LPDDR5 8 GiB" in i) == 4
    one = cost.system_cost(load_system("talk-light-d2d"))
    assert one.bom_usd < r.bom_usd


def test_the_talks_development_figures():
    soc, pkg, pcb = cost.development_paths()
    assert soc.usd == (10e6, 20e6) and soc.months == 18 and pkg.months == 6 and pcb.months == 1


def test_chipfuse_cost_writes_its_lines(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "cost.json"
    r = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "cost", "-s", "talk-4die-d2d", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["bom_usd"] == pytest.approx(sum(x["usd"] for x in data["lines"]))
    assert [d["months"] for d in data["development"]] == [18, 6, 1]
    bad = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "cost", "-s", "no-such-system"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown system" in bad.stderr
