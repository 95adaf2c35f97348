"""The resident launcher's wire and its client side: find it, ask it to fork a process, follow that process.

A resident launcher (`chipfuse launcher start`; the server is cli/resident.py) is one process that has
imported torch and the rest of chipfuse once and then forks, on request, either a whole `chipfuse`
command (the CLI's client hands over its terminal) or the dies' launcher (runtime.worker.launch). A
forked child starts with every import done: on 2 cores that import was most of a warm start.

The launcher listens on a Unix socket in the cache folder whose name carries a key of the installed
code (version, interpreter, every source file's size and time), so a launcher left from other code
is never used. Messages are JSON, one per SOCK_SEQPACKET datagram, file descriptors beside them.
Nothing here imports torch: this is what the CLI's client runs before anything else.
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import sys
import time
import zlib
from pathlib import Path

MAX_MSG_BYTES = 1 << 20  # one request (argv, cwd, environment) is a few KiB
MAX_FDS = 4
SOCKET_PATH_MAX = 100  # AF_UNIX paths hold 107 bytes on Linux; a longer cache folder means no launcher
# variables read when torch and OpenMP load (import time), so a child of a launcher started with other
# values would not run as a fresh process would: such a request is refused and runs in a fresh process
IMPORT_TIME_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "DNNL_", "ONEDNN_", "TORCH", "PYTORCH_",
                        "ATEN_", "LD_", "PYTHON", "CUDA", "MALLOC_")
IGNORED_ENV = ("PYTHONIOENCODING",)  # applied per child when it makes its own streams
# the dies' OpenMP settings (why: executor.worker_env), unless the environment sets its own
DIE_OMP_DEFAULTS = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "3000"}


def enabled() -> bool:
    """Whether to use a resident launcher when one is up (CHIPFUSE_RESIDENT=0 never does)."""
    return sys.platform.startswith("linux") and os.environ.get("CHIPFUSE_RESIDENT", "1").lower() not in (
        "0", "no", "off", "false")


def code_key() -> str:
    """A digest of the code a launcher runs: chipfuse's version, this interpreter, and every source file's size
    and modification time (an edited or reinstalled chipfuse gets a new key, so an old launcher is not used)."""
    from .. import __version__

    root = Path(__file__).resolve().parents[1]
    parts = [f"{__version__}\0{os.path.realpath(sys.executable)}\0{sys.prefix}\0{root}"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".cpp", ".yaml")):
                st = os.stat(os.path.join(dirpath, name))
                parts.append(f"{dirpath}/{name}\0{st.st_size}\0{st.st_mtime_ns}")
    data = "\n".join(parts).encode()  # two 32-bit checksums, not hashlib: loading OpenSSL costs the client ~20 ms
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


def cache_folder() -> Path:
    from ..paths import cache_dir

    return cache_dir()


def socket_path(key: str | None = None) -> Path:
    """Where the launcher for this code listens."""
    return cache_folder() / f"resident-{key or code_key()}.sock"


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that take effect when torch loads, with the dies' defaults (executor.worker_env)."""
    out = {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in IGNORED_ENV}
    for k, v in DIE_OMP_DEFAULTS.items():
        out.setdefault(k, v)
    return out


def env_mismatch(theirs: dict[str, str], ours: dict[str, str]) -> str | None:
    """Why a process with environment `theirs` cannot be a child of a launcher loaded under `ours`, or None."""
    a, b = import_time_env(theirs), import_time_env(ours)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not differ:
        return None
    shown = ", ".join(f"{k}={a.get(k, '(unset)')} (launcher: {b.get(k, '(unset)')})" for k in differ[:3])
    return f"the launcher was started with other values of variables read when torch loads: {shown}"


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------------- wire
def send_msg(sock: socket.socket, obj: dict, fds: list[int] = ()) -> None:
    data = json.dumps(obj).encode()
    if len(data) > MAX_MSG_BYTES:
        raise ValueError(f"message of {len(data)} bytes is over the launcher's {MAX_MSG_BYTES}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_msg(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the descriptors sent with it; (None, []) when the peer has gone."""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_MSG_BYTES, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        for fd in fds:
            os.close(fd)
        return {"bad": True}, []
    return obj, list(fds)


def connect(path: Path | None = None, timeout_s: float = 2.0) -> socket.socket | None:
    """A connection to the launcher for this code, or None if none is listening (or it is not ours)."""
    if not enabled():
        return None
    try:
        path = path or socket_path()
    except OSError:
        return None
    if len(str(path)) > SOCKET_PATH_MAX or not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
        uid = _peer_uid(s)
        if uid != os.getuid():  # only a launcher of our own user may run our commands
            s.close()
            return None
    except OSError:
        s.close()
        return None
    s.settimeout(None)
    return s


def _peer_uid(s: socket.socket) -> int:
    import struct

    creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def ask(sock: socket.socket, request: dict, fds: list[int] = (), timeout_s: float = 30.0) -> dict:
    """Send one request and return the launcher's first answer ({"pid": N}, {"refused": why} or {"ok": ...})."""
    send_msg(sock, request, fds)
    r, _, _ = select.select([sock], [], [], timeout_s)
    if not r:
        raise TimeoutError(f"the resident launcher did not answer within {timeout_s:.0f} s")
    reply, extra = recv_msg(sock)
    for fd in extra:
        os.close(fd)
    if reply is None:
        raise ConnectionError("the resident launcher closed the connection")
    return reply


class ResidentProcess:
    """A process the launcher forked for us, seen through Popen's poll / wait / kill / returncode / stdout.

    Its exit status (Popen's convention: -signal or the code) arrives on the connection when the launcher
    reaps it; if we close the connection first, the launcher ends the process."""

    def __init__(self, sock: socket.socket, pid: int, stdout=None):
        self._sock, self.pid, self.stdout = sock, pid, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                import subprocess

                raise subprocess.TimeoutExpired(f"resident child pid {self.pid}", timeout)
            self._read(left if left is not None else 1.0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                send_msg(self._sock, {"signal": int(signum)})
            except OSError:
                pass

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass

    def _read(self, timeout_s: float) -> None:
        try:
            r, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
            if not r:
                return
            msg, fds = recv_msg(self._sock)
        except (OSError, ValueError):
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:  # the launcher itself went away: its children went with it
            self.returncode = -9
        elif "exit" in msg:
            self.returncode = int(msg["exit"])
        if self.returncode is not None:
            self._sock.close()


def launch_workers(argv: list[str], env: dict[str, str], log: Path) -> ResidentProcess | None:
    """The dies' launcher (`python -m chipfuse.runtime.worker ARGV`) forked by the resident launcher, its stdout
    a pipe to us and its stderr `log`; None when no launcher for this code is up or it cannot take this env."""
    sock = connect()
    if sock is None:
        return None
    r, w = os.pipe()
    err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        reply = ask(sock, {"kind": "launch", "argv": argv, "env": env, "cwd": os.getcwd()}, [w, err])
    except (OSError, TimeoutError, ValueError):
        reply = {"refused": "no answer"}
    finally:
        os.close(w)
        os.close(err)
    if "pid" not in reply:
        os.close(r)
        sock.close()
        return None
    return ResidentProcess(sock, int(reply["pid"]), stdout=os.fdopen(r, "r"))
