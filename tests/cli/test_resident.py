"""The resident launcher: a command forked from it behaves as a fresh process (same output, files, exit status),
its dies are forked from it too, Ctrl-C reaches the command, and a client that dies takes its command with it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from chipfuse.paths import cache_dir
from chipfuse.runtime import resident as wire

pytestmark = pytest.mark.slow

PRESETS = Path(__file__).resolve().parents[2] / "src" / "chipfuse" / "hw" / "presets"


def cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`chipfuse ARGS` as the console script runs it (cli.entry: through the launcher when one is up)."""
    return subprocess.run([sys.executable, "-m", "chipfuse.cli.entry", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def wait_for(cond, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def requests_served(env: dict[str, str]) -> int:
    return int(cli(["launcher", "status"], env).stdout.split(" request(s)")[0].rsplit(",", 1)[1])


@pytest.fixture(scope="module")
def launcher():
    """A launcher of our own in a short cache folder (the socket path must stay short) that shares the user's
    cache of models, prepared weights and the compiled kernel, so its dies start warm."""
    cache = Path(tempfile.mkdtemp(prefix="cfr-", dir="/tmp"))
    for sub in ("ext", "models", "prepared", "configs", "tokenizers"):
        real = cache_dir() / sub
        real.mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(real)
    env = {**os.environ, "CHIPFUSE_CACHE": str(cache), "CHIPFUSE_RESIDENT": "1"}
    r = cli(["launcher", "start", "--idle-minutes", "10"], env)
    assert r.returncode == 0, r.stderr
    assert "launcher started" in r.stdout
    pid = int(r.stdout.split("pid ")[1].split(",")[0])
    yield env, pid
    cli(["launcher", "stop"], env)
    shutil.rmtree(cache, ignore_errors=True)


def test_a_forwarded_command_writes_what_a_fresh_process_writes(launcher, tmp_path):
    env, _ = launcher
    before = requests_served(env)
    args = ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--json", "plan.json"]  # relative: the client's folder
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    forked = cli(args, env, cwd=tmp_path / "a")
    fresh = cli(args, {**env, "CHIPFUSE_RESIDENT": "0"}, cwd=tmp_path / "b")
    assert requests_served(env) == before + 1
    assert forked.returncode == fresh.returncode == 0
    assert forked.stdout.replace("/a/", "/b/") == fresh.stdout
    assert (tmp_path / "a" / "plan.json").read_text() == (tmp_path / "b" / "plan.json").read_text()
    bad = ["plan", "-m", "smollm2", "-s", "no-such-board"]
    forked, fresh = cli(bad, env), cli(bad, {**env, "CHIPFUSE_RESIDENT": "0"})
    assert forked.returncode == fresh.returncode == 2
    assert forked.stderr == fresh.stderr and "no-such-board" in forked.stderr and "Traceback" not in forked.stderr


def test_run_streams_the_same_answer_from_dies_the_launcher_forked(launcher, tmp_path):
    env, pid = launcher
    before = requests_served(env)
    args = ["run", "-s", "talk-4die-d2d", "--max-tokens", "6", "--probe", str(PRESETS / "talk-4die-d2d.yaml")]
    forked = cli([*args, "--json", str(tmp_path / "run.json")], env)
    assert forked.returncode == 0, forked.stderr
    assert requests_served(env) == before + 2  # the command, then the dies' launcher it asked for
    startup = json.loads((tmp_path / "run.json").read_text())["startup"]
    assert startup["resident"] is True and startup["ready_s"] > 0
    fresh = cli(args, {**env, "CHIPFUSE_RESIDENT": "0"})
    answer = [line for line in forked.stdout.splitlines() if line.startswith("assistant:")]
    assert answer and answer == [line for line in fresh.stdout.splitlines() if line.startswith("assistant:")]
    assert wait_for(lambda: children_of(pid) == [], 15)  # command, dies' launcher and dies all reaped


def _serve(env: dict[str, str], port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "chipfuse.cli.entry", "serve", "-s", "talk-light-d2d", "--port",
                          str(port), "--slots", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    assert wait_for(healthy, 180), p.stderr.read() if p.poll() is not None else "not healthy in 180 s"
    return p


def test_ctrl_c_reaches_the_forked_command(launcher):
    env, pid = launcher
    from chipfuse.runtime.executor import free_port

    p = _serve(env, free_port())
    assert children_of(pid)  # the server runs in the launcher's child, not in the client
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (0, 130), err
    assert "Traceback" not in err
    assert wait_for(lambda: children_of(pid) == [], 15)


def test_a_killed_client_takes_its_command_with_it(launcher):
    env, pid = launcher
    from chipfuse.runtime.executor import free_port

    port = free_port()
    p = _serve(env, port)
    p.kill()
    p.wait(timeout=10)
    assert wait_for(lambda: children_of(pid) == [], 30)  # the server and its dies are gone
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_an_environment_torch_reads_at_load_is_run_in_a_fresh_process(launcher):
    env, _ = launcher
    before = requests_served(env)
    r = cli(["--version"], {**env, "OMP_NUM_THREADS": "1" if env.get("OMP_NUM_THREADS") != "1" else "2"})
    assert r.returncode == 0 and r.stdout.startswith("chipfuse ")
    assert "resident launcher was not used" in r.stderr and "OMP_NUM_THREADS" in r.stderr
    assert requests_served(env) == before


def test_stop_removes_the_socket_and_commands_run_here_again(launcher):
    env, pid = launcher
    sock = Path(env["CHIPFUSE_CACHE"]) / f"resident-{wire.code_key()}.sock"
    assert sock.exists()
    r = cli(["launcher", "stop"], env)
    assert r.returncode == 0 and f"pid {pid}" in r.stdout
    assert wait_for(lambda: not wire.process_alive(pid), 15)
    assert not sock.exists()
    assert "no launcher is up" in cli(["launcher", "status"], env).stdout
    r = cli(["--version"], env)
    assert r.returncode == 0 and r.stdout.startswith("chipfuse ") and not r.stderr


def test_the_wire_refuses_what_it_cannot_take():
    ours = {"PATH": "/bin"}
    assert wire.env_mismatch({"PATH": "/usr/bin", "HOME": "/x"}, ours) is None  # not read at load
    why = wire.env_mismatch({"OMP_NUM_THREADS": "3"}, ours)
    assert "OMP_NUM_THREADS=3" in why and "(unset)" in why
    assert wire.env_mismatch({"OMP_WAIT_POLICY": "ACTIVE"}, ours) is None  # the dies' default either way
    key = wire.code_key()
    assert len(key) == 16 and key == wire.code_key()


def test_bad_launcher_settings_are_one_message(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from chipfuse.cli.main import app

    monkeypatch.setenv("CHIPFUSE_RESIDENT", "1")
    monkeypatch.setenv("CHIPFUSE_CACHE", str(tmp_path / "c"))
    for bad in ("0", "-3", "nan", "inf", "20000"):
        r = CliRunner().invoke(app, ["launcher", "start", "--idle-minutes", bad])
        assert r.exit_code == 2 and f"--idle-minutes {float(bad):g}" in r.output, (bad, r.output)
    monkeypatch.setenv("CHIPFUSE_CACHE", str(tmp_path / ("x" * 120)))
    r = CliRunner().invoke(app, ["launcher", "start"])
    assert r.exit_code == 2 and "set CHIPFUSE_CACHE to a shorter folder" in r.output
    monkeypatch.setenv("CHIPFUSE_RESIDENT", "0")
    r = CliRunner().invoke(app, ["launcher", "start"])
    assert r.exit_code == 2 and "CHIPFUSE_RESIDENT=0" in r.output
    assert not list(tmp_path.rglob("*.sock"))
