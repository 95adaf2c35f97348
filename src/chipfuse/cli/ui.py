"""Terminal output that stays honest when piped: full-width tables, progress lines instead of spinners."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress

from ..units import fmt_duration

PIPED_WIDTH = 200  # columns for output that is not a terminal: wide enough that no figure is cut


def _console(stderr: bool) -> Console:
    """A console on stdout or stderr (looked up at print time, so test runners can capture it); when the
    stream is not a terminal (and COLUMNS is unset) it is wide, so tables are not cut."""
    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if tty or "COLUMNS" in os.environ else PIPED_WIDTH
    return Console(stderr=stderr, width=width)


console = _console(stderr=False)
err_console = _console(stderr=True)


def interactive() -> bool:
    """Whether live displays (spinners, bars) can redraw in place; otherwise we print progress lines."""
    return err_console.is_terminal


def _stamp(t0: float, text: str) -> None:
    """One progress line on stderr, with the seconds since `t0` (monotonic)."""
    err_console.print(f"[{time.monotonic() - t0:6.1f} s] {text}", markup=False, highlight=False)


class _LineStatus:
    """Status messages as plain lines on stderr, each once, with the time since the start."""

    def __init__(self, message: str):
        self.t0 = time.monotonic()
        self.last = None
        self.update(message)

    def update(self, message: str) -> None:
        if message != self.last:
            self.last = message
            _stamp(self.t0, message)


@contextmanager
def status(message: str):
    """A spinner on a terminal; timestamped lines on stderr when piped. Yields an object with `.update(msg)`."""
    if interactive():
        with err_console.status(message) as st:
            yield st
    else:
        yield _LineStatus(message)


class Steps:
    """Progress over a known number of steps (the API's `Progress`): a bar on a terminal, a line every few
    seconds when piped. Use as a context manager; the API calls `start` once it knows the step count."""

    def __init__(self, every_s: float = 5.0):
        self.total, self.done, self.description, self.every_s = 0, 0, "", every_s
        self._bar: Progress | None = None
        self._t0 = self._shown = self._started = time.monotonic()

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif exc[0] is None and self.total:
            _stamp(self._t0, f"done: {self.done}/{self.total} steps")

    def start(self, total: int, description: str) -> None:
        """Work of `total` steps begins."""
        self.total, self.description, self.done = total, description, 0
        self._started = time.monotonic()
        if interactive():
            self._bar = Progress(console=err_console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(description, total=total)
        else:
            self._line(force=True)

    def describe(self, description: str) -> None:
        """Name the step now running."""
        self.description = description
        if self._bar is not None:
            self._bar.update(self._task, description=description)
        else:
            self._line()

    def advance(self, n: int = 1, description: str | None = None) -> None:
        """Mark `n` steps done (and optionally name the next)."""
        self.done += n
        if description is not None:
            self.description = description
        if self._bar is not None:
            self._bar.update(self._task, advance=n, description=self.description)
        else:
            self._line()

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._shown >= self.every_s:
            self._shown = now
            if not self.total:
                _stamp(self._t0, self.description)
                return
            left = ""
            if 0 < self.done < self.total:
                left = f", about {fmt_duration((now - self._started) / self.done * (self.total - self.done))} left"
            _stamp(self._t0, f"{self.done}/{self.total} {self.description}{left}")
