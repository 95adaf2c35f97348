"""How long API calls report progress: any object with these three methods (the CLI passes a bar)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int, description: str) -> None:
        """Work of `total` steps begins."""

    def describe(self, description: str) -> None:
        """Name the step now running."""

    def advance(self, n: int = 1, description: str | None = None) -> None:
        """`n` steps done (and optionally name the next)."""


class Silent:
    """Progress that goes nowhere: the default for scripts."""

    def start(self, total: int, description: str) -> None:
        pass

    def describe(self, description: str) -> None:
        pass

    def advance(self, n: int = 1, description: str | None = None) -> None:
        pass


def status_of(progress: Progress | None) -> Progress:
    return progress if progress is not None else Silent()
