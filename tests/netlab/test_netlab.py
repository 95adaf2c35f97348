"""The link lab (benchmarks/netlab.py): shaped rate and relay delay are what was asked for, and nothing outlives a lab.

Needs root and iproute2 (network namespaces, tc); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
    pytest.skip("netlab needs root and iproute2 (ip, tc) to build network namespaces", allow_module_level=True)

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "netlab.py"
_spec = importlib.util.spec_from_file_location("netlab", _PATH)
netlab = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("netlab", netlab)
_spec.loader.exec_module(netlab)


def test_rate_and_relay_delay():
    rate, delay = 50.0, 2.0
    with netlab.Lab(2, rate_mbit=rate, delay_ms=delay) as lab:
        direct = netlab.measure(lab, 0, 1, pings=10)
        relayed = netlab.measure(lab, 0, 1, pings=10, delayed=True)
        one_way = lab.one_way_ms(0, 1)
    assert one_way == 2 * delay  # two links, each delay ms
    assert abs(direct["mbit_s"] - rate) <= 0.1 * rate, direct
    assert abs(relayed["mbit_s"] - rate) <= 0.1 * rate, relayed  # the relay keeps up with the link
    added = relayed["rtt_ms"] - direct["rtt_ms"]
    assert added >= 2 * one_way, (direct, relayed)  # held one_way in each direction
    assert added < 2 * one_way + 10, (direct, relayed)  # and not much more


def test_transparent_delay_reaches_every_connection():
    rate, delay = 50.0, 2.0
    with netlab.Lab(2, rate_mbit=rate, delay_ms=delay, transparent_delay=True) as lab:
        assert lab.delayed_addr(1, 5000) == (lab.addr(1), 5000)  # no relay needed
        m = netlab.measure(lab, 0, 1, pings=10)  # a plain connection to the host's own address
        one_way = lab.one_way_ms(0, 1)
    assert abs(m["mbit_s"] - rate) <= 0.1 * rate, m
    assert m["rtt_ms"] >= 2 * one_way and m["connect_ms"] >= 2 * one_way, m  # the handshake is delayed too
    assert m["rtt_ms"] < 2 * one_way + 10, m


def _left(prefix: str) -> list[str]:
    return [ns for ns in netlab.namespaces() if ns.startswith(prefix)]


def test_nothing_left_after_exit():
    with netlab.Lab(3, rate_mbit=100, delay_ms=1) as lab:
        prefix = lab.prefix
        assert len(_left(prefix)) == 4  # three hosts and the switch
        lab.delayed_addr(1, 5000)  # a relay process in the switch namespace
        sleeper = lab.run(2, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert _left(prefix) == []
    assert sleeper.poll() is not None


def test_nothing_left_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with netlab.Lab(2, rate_mbit=10) as lab:
            prefix = lab.prefix
            sleeper = lab.run(0, [sys.executable, "-c", "import time; time.sleep(60)"])
            raise RuntimeError("boom")
    assert _left(prefix) == []
    assert sleeper.poll() is not None


def test_cleanup_stale_removes_a_killed_labs_namespaces():
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import netlab; "
            "lab = netlab.Lab(2).__enter__(); print(lab.prefix, flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(_PATH.parent)], stdout=subprocess.PIPE, text=True)
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix and len(_left(prefix)) == 3
    finally:
        proc.kill()  # no atexit, no __exit__: its namespaces stay behind
        proc.wait(5)
        proc.stdout.close()
    assert set(netlab.cleanup_stale()) >= {f"{prefix}sw", f"{prefix}h0", f"{prefix}h1"}  # its pid is gone
    assert _left(prefix) == []
