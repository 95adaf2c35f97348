"""The `chipfuse` command's first step: hand the command to a resident launcher if one is up, else run it here.

This module imports nothing heavy: with a launcher up (`chipfuse launcher start`) a command costs an
interpreter start, a socket connection and a fork, instead of importing torch and chipfuse again.
Without one (or with CHIPFUSE_RESIDENT=0) the command runs in this process as before.
"""

from __future__ import annotations

import os
import signal
import sys

LOCAL_COMMANDS = ("launcher", "worker")  # manage the launcher itself / a hand-started die: always in this process
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def forward(argv: list[str]) -> int | None:
    """Run `chipfuse ARGV` in a child of the resident launcher on our terminal; its exit status, or None when
    no launcher for this code is up or it declined (then a note says why on stderr)."""
    from ..runtime import resident

    sock = resident.connect()
    if sock is None:
        return None
    try:
        reply = resident.ask(sock, {"kind": "cli", "argv": argv, "env": dict(os.environ), "cwd": os.getcwd()},
                             [0, 1, 2])
    except (OSError, TimeoutError, ValueError):
        sock.close()
        return None
    if "pid" not in reply:
        sock.close()
        print(f"note: the resident launcher was not used: {reply.get('refused', reply)}", file=sys.stderr)
        return None
    child = resident.ResidentProcess(sock, int(reply["pid"]))
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    code = child.wait()
    return 128 - code if code < 0 else code  # a child killed by signal N: the shell's 128 + N


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] not in LOCAL_COMMANDS:
        code = forward(argv)
        if code is not None:
            sys.exit(code)
    from .main import app

    app()
if __name__ == "__main__":
    main()
