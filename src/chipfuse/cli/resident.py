"""The resident launcher: one process that imports torch and chipfuse once, then forks a ready child per request.

    chipfuse launcher start [--idle-minutes 30]    # then every `chipfuse ...` starts forked from it
    chipfuse launcher status | stop

A request is either a whole command (the client in cli/entry.py hands over its stdin, stdout and stderr,
argv, working folder and environment; the child runs the command on them and the launcher returns its
exit status) or the dies' launcher for a Device (runtime/resident.py). Signals the client receives are
passed on to its child; a client that goes away takes its child with it. The launcher leaves by itself
after its idle time, when its socket is removed, or on `stop`. Only processes of the same user may
connect (checked by the socket's peer credentials), and only for the same installed code (the key).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from ..runtime import resident as wire

# imported before serving, so a forked child has them all (cli.main and cli.ui are not: their consoles
# look at the child's own terminal when the child imports them)
PRELOAD = ("torch", "torch.distributed", "numpy", "safetensors.torch", "tokenizers", "jinja2", "jinja2.sandbox",
           "jinja2.ext", "yaml", "pydantic", "pydantic.type_adapter", "typer", "typer._click.decorators", "click",
           "rich.console", "rich.table", "rich.progress", "rich.live", "rich._emoji_codes", "chipfuse.api",
           "chipfuse.hw.load", "chipfuse.hw.quick", "chipfuse.hw.spec", "chipfuse.compile.compiler",
           "chipfuse.sim.predict", "chipfuse.sim.tensor", "chipfuse.quant.gguf_mix", "chipfuse.runtime.worker",
           "chipfuse.runtime.device", "chipfuse.runtime.executor", "chipfuse.runtime.tokenizer",
           "chipfuse.runtime.stage", "chipfuse.runtime.sampling", "chipfuse.runtime.probe")
KILL_AFTER_S = 5.0  # a child asked to stop (SIGTERM) is killed after this


@dataclass
class _Conn:
    sock: socket.socket
    pid: int | None = None
    term_at: float | None = None  # when the child was sent SIGTERM because its client left


@dataclass
class _State:
    started: float = field(default_factory=time.time)
    preload_s: float = 0.0
    requests: int = 0
    last_active: float = field(default_factory=time.monotonic)
    env: dict[str, str] = field(default_factory=dict)
    stopping: bool = False
    wake: tuple[int, ...] = ()  # the SIGCHLD wake-up pipe (a child closes it)


def preload() -> float:
    """Import what every command and die needs, and map the compiled decode kernel; seconds taken."""
    import importlib

    t0 = time.perf_counter()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from ..runtime import fastpath

    fastpath.load()
    import ctypes  # noqa: F401 - the child's prctl
    import gc

    gc.collect()
    gc.freeze()  # what is loaded now is never collected: a child's collections do not touch (and copy) its pages
    return time.perf_counter() - t0


def thread_count() -> int:
    """Python threads of this process: a launcher must have one, or a fork could copy a lock another held. (The
    native pool OpenBLAS starts when numpy loads is idle and registers fork handlers; the dies' launcher in
    runtime.worker forks with it too.)"""
    import threading

    return threading.active_count()


def serve(idle_s: float) -> int:
    """Load, listen and fork on request until idle for `idle_s`, stopped, or the socket is gone. Exit status."""
    for k, v in wire.import_time_env({}).items():  # the dies' OpenMP settings, before torch loads
        os.environ.setdefault(k, v)
    st = _State()
    st.preload_s = preload()
    st.env = dict(os.environ)
    key = wire.code_key()
    path = wire.socket_path(key)
    if len(str(path)) > wire.SOCKET_PATH_MAX:
        print(f"chipfuse launcher: the socket path {path} is longer than {wire.SOCKET_PATH_MAX} characters; "
              "set CHIPFUSE_CACHE to a shorter folder", file=sys.stderr)
        return 2
    if thread_count() != 1:
        print(f"chipfuse launcher: {thread_count()} Python threads after loading; forking would be unsafe", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    if wire.connect(path) is not None:
        print(f"chipfuse launcher: another launcher already listens on {path}", file=sys.stderr)
        return 1
    try:
        path.unlink()  # a socket file left by a launcher that was killed
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o177)  # the socket file: read and write for this user only
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    inode = path.stat().st_ino
    signal.signal(signal.SIGTERM, lambda *a: setattr(st, "stopping", True))
    print(f"chipfuse launcher: pid {os.getpid()}, listening on {path}, loaded in {st.preload_s:.1f} s", flush=True)
    try:
        _loop(listener, path, inode, st, idle_s)
    finally:
        listener.close()
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except FileNotFoundError:
            pass
    try:  # a clean exit: the log (kept when a start fails, for its message) goes with the socket
        path.with_suffix(".log").unlink()
    except FileNotFoundError:
        pass
    return 0


def _loop(listener: socket.socket, path, inode: int, st: _State, idle_s: float) -> None:
    import select

    conns: dict[int, _Conn] = {}  # by socket fd
    children: dict[int, _Conn] = {}  # by pid
    stop_deadline: float | None = None
    # a child's exit wakes the select at once (its client waits for the status): SIGCHLD writes to this pipe
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    st.wake = (wake_r, wake_w)
    while True:
        now = time.monotonic()
        if st.stopping and stop_deadline is None:
            stop_deadline = now + KILL_AFTER_S
            for pid in children:
                _signal(pid, signal.SIGTERM)
        if stop_deadline is not None and (not children or now > stop_deadline):
            for pid in children:
                _signal(pid, signal.SIGKILL)
            return
        if not children and not conns and now - st.last_active > idle_s:
            return
        try:
            if path.stat().st_ino != inode:
                return
        except FileNotFoundError:
            return
        r, _, _ = select.select([wake_r, listener, *[c.sock for c in conns.values()]], [], [], 0.2)
        for s in r:
            if s == wake_r:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass
                continue
            if s is listener:
                try:
                    sock, _ = listener.accept()
                except OSError:
                    continue
                if wire._peer_uid(sock) != os.getuid():
                    sock.close()
                    continue
                conns[sock.fileno()] = _Conn(sock)
                continue
            conn = conns[s.fileno()]
            try:
                msg, fds = wire.recv_msg(s)
            except OSError:
                msg, fds = None, []
            if msg is None:  # the client left: its child goes too
                if conn.pid is not None and conn.pid in children:
                    _signal(conn.pid, signal.SIGTERM)
                    conn.term_at = time.monotonic()
                    conns.pop(s.fileno())
                else:
                    conns.pop(s.fileno()).sock.close()
                continue
            st.last_active = time.monotonic()
            if conn.pid is not None:  # a running child's client passes on a signal
                sig = msg.get("signal")
                if isinstance(sig, int) and sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    _signal(conn.pid, sig)
                for fd in fds:
                    os.close(fd)
                continue
            reply = _request(msg, fds, st, listener, conns, s)
            if "pid" in reply:
                conn.pid = int(reply["pid"])
                children[conn.pid] = conn
                st.requests += 1
            try:
                wire.send_msg(s, reply)
            except OSError:
                pass
            if "pid" not in reply:
                conns.pop(s.fileno()).sock.close()
        _reap(children, conns, st)
        for pid, conn in list(children.items()):  # children whose clients left and that ignore SIGTERM
            if conn.term_at is not None and time.monotonic() - conn.term_at > KILL_AFTER_S:
                _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(children: dict[int, _Conn], conns: dict[int, _Conn], st: _State) -> None:
    """Collect exited children and tell each one's client its exit status (Popen's convention)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        st.last_active = time.monotonic()
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if conn.term_at is None:
            try:
                wire.send_msg(conn.sock, {"exit": code})
            except OSError:
                pass
            conns.pop(conn.sock.fileno(), None)
        conn.sock.close()


def _request(msg: dict, fds: list[int], st: _State, listener, conns: dict[int, _Conn], sock) -> dict:
    """Answer one request: status, stop, or fork a child for `cli` / `launch`. The reply to send."""
    kind = msg.get("kind")
    if kind == "status":
        for fd in fds:
            os.close(fd)
        return {"ok": True, "launcher_pid": os.getpid(), "started": st.started, "preload_s": round(st.preload_s, 3),
                "requests": st.requests, "threads": thread_count(), "key": wire.code_key()}
    if kind == "stop":
        for fd in fds:
            os.close(fd)
        st.stopping = True
        return {"ok": True, "launcher_pid": os.getpid()}
    want = {"cli": 3, "launch": 2}.get(kind)
    argv, env, cwd = msg.get("argv"), msg.get("env"), msg.get("cwd")
    why = None
    if want is None:
        why = f"unknown request kind {kind!r}"
    elif len(fds) != want:
        why = f"a {kind} request carries {want} descriptors, got {len(fds)}"
    elif not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        why = "argv must be a list of strings"
    elif not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        why = "env must map strings to strings"
    elif not isinstance(cwd, str):
        why = "cwd must be a string"
    elif st.stopping:
        why = "the launcher is stopping"
    else:
        why = wire.env_mismatch(env, st.env)
    if why is not None:
        for fd in fds:
            os.close(fd)
        return {"refused": why}
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            listener.close()
            for c in conns.values():
                c.sock.close()
            signal.set_wakeup_fd(-1)
            for fd in st.wake:
                os.close(fd)
            code = _child(kind, argv, env, cwd, fds)
        except BaseException as err:  # noqa: BLE001 - the client must get an exit status, whatever happened
            try:
                print(f"chipfuse launcher child: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return {"pid": pid}


def _child(kind: str, argv: list[str], env: dict[str, str], cwd: str, fds: list[int]) -> int:
    """In the forked child: take the requester's descriptors, folder and environment, run, return the status."""
    _die_with_launcher()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if kind == "launch":  # stdout: a pipe to the host; stderr: the launcher log
        null = os.open(os.devnull, os.O_RDWR)
        targets = [null, fds[0], fds[1]]
    else:
        targets = fds
    for i, fd in enumerate(targets):
        os.dup2(fd, i)
    for fd in {*fds, *targets} - {0, 1, 2}:
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _fresh_streams(env)
    if kind == "launch":
        from ..runtime import worker

        worker.main(argv)
        return 0
    sys.argv = ["chipfuse", *argv]
    from .main import app

    try:
        app(args=argv, prog_name="chipfuse")
        code: object = 0
    except SystemExit as e:
        code = e.code
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr, flush=True)
    return 1


def _fresh_streams(env: dict[str, str]) -> None:
    """sys.stdin/stdout/stderr on the new descriptors 0-2, buffered as a fresh interpreter would (line-buffered
    on a terminal), in the encoding the client's environment asks for."""
    import io

    enc, _, errors = (env.get("PYTHONIOENCODING") or "").partition(":")
    enc = enc or "utf-8"
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        tty = os.isatty(fd)
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        buf = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(buf, encoding=enc, errors=errors or ("backslashreplace" if fd == 2 else "strict"),
                                  line_buffering=tty or fd == 2, write_through=fd == 2)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _die_with_launcher() -> None:
    """Ask Linux to send us SIGTERM if the launcher dies first (a killed launcher leaves no children)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------ management
@dataclass(frozen=True)
class LauncherStatus:
    """A resident launcher for this code: its pid, socket, uptime, import time and requests served."""

    pid: int
    socket: str
    up_s: float
    preload_s: float
    requests: int


def status() -> LauncherStatus | None:
    """The launcher for the installed code, if one answers (None otherwise)."""
    path = wire.socket_path()
    sock = wire.connect(path)
    if sock is None:
        return None
    try:
        rep = wire.ask(sock, {"kind": "status"}, timeout_s=5.0)
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        sock.close()
    if not rep.get("ok"):
        return None
    return LauncherStatus(int(rep["launcher_pid"]), str(path), round(time.time() - float(rep["started"]), 1),
                          float(rep["preload_s"]), int(rep["requests"]))


def stale() -> list[str]:
    """Socket files of launchers for other code (an older install) in the cache folder."""
    current = wire.socket_path().name
    try:
        return sorted(str(p) for p in wire.cache_folder().glob("resident-*.sock") if p.name != current)
    except OSError:
        return []


def start(idle_minutes: float, timeout_s: float = 600.0) -> tuple[LauncherStatus, bool]:
    """Start a launcher for this code in the background (unless one is up) and wait until it answers.
    Returns its status and whether it was started now. Raises LauncherError naming what went wrong."""
    import subprocess

    from ..errors import ChipfuseError

    if not wire.enabled():
        raise ChipfuseError("the resident launcher is off (CHIPFUSE_RESIDENT=0) or needs Linux")
    if not 0 < idle_minutes <= 7 * 24 * 60:
        raise ChipfuseError(f"--idle-minutes {idle_minutes:g}: give a time in minutes between 0 and one week (10080)")
    now = status()
    if now is not None:
        return now, False
    path = wire.socket_path()
    if len(str(path)) > wire.SOCKET_PATH_MAX:
        raise ChipfuseError(f"the launcher's socket {path} would be longer than {wire.SOCKET_PATH_MAX} characters; "
                            "set CHIPFUSE_CACHE to a shorter folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chipfuse.cli.resident", "--idle-minutes", str(idle_minutes)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()
            raise ChipfuseError(f"the launcher exited with status {proc.returncode}"
                                f"{': ' + tail[-1] if tail else ''} (log: {log})")
        now = status()
        if now is not None:
            return now, True
        time.sleep(0.1)
    proc.kill()
    raise ChipfuseError(f"the launcher did not answer within {timeout_s:.0f} s (log: {log})")


def stop(timeout_s: float = 15.0) -> int | None:
    """Stop the launcher for this code (its running children get SIGTERM); its pid, or None if none was up."""
    sock = wire.connect()
    if sock is None:
        return None
    try:
        rep = wire.ask(sock, {"kind": "stop"}, timeout_s=5.0)
    finally:
        sock.close()
    pid = int(rep.get("launcher_pid", 0))
    deadline = time.monotonic() + timeout_s
    while pid and time.monotonic() < deadline and wire.process_alive(pid):
        time.sleep(0.05)
    return pid


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m chipfuse.cli.resident", description="the resident launcher")
    ap.add_argument("--idle-minutes", type=float, default=30.0)
    a = ap.parse_args(argv)
    sys.exit(serve(a.idle_minutes * 60.0))


if __name__ == "__main__":
    main()
