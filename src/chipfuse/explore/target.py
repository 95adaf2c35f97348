"""Targets a sweep must meet, written as on the command line: "decode>=10,power<=10,cost<=150"."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from ..errors import SpecError

# metric -> (Figures field, unit, what it is)
METRICS = {
    "decode": ("decode_tokens_per_s", "tokens/s", "decode speed of one stream"),
    "ttft": ("ttft_s", "s", "time to first token"),
    "power": ("power_w", "W", "average power while decoding"),
    "peak": ("peak_power_w", "W", "peak power"),
    "energy": ("j_per_token", "J/token", "energy per generated token"),
    "cost": ("cost_usd", "USD", "bill of materials"),
}
_TERM = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|>|<)\s*([^\s]+)\s*$")


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    value: float

    @property
    def field(self) -> str:
        return METRICS[self.metric][0]

    @property
    def unit(self) -> str:
        return METRICS[self.metric][1]

    def holds(self, x):
        """Whether x (a number, or an array of them elementwise) is within the bound."""
        return {">=": x >= self.value, "<=": x <= self.value, ">": x > self.value, "<": x < self.value}[self.op]

    def shortfall(self, x: float) -> float:
        """How far x misses, as a share of the bound (0 when it holds)."""
        if self.holds(x):
            return 0.0
        return abs(x - self.value) / abs(self.value) if self.value else math.inf

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_target(text: str | None) -> tuple[Bound, ...]:
    """The bounds of a target string; a SpecError naming the bad term and the known metrics."""
    if text is None or not text.strip():
        return ()
    out = []
    for term in text.split(","):
        m = _TERM.match(term)
        if not m:
            raise SpecError(f"--target {term.strip()!r}: write METRIC>=NUMBER or METRIC<=NUMBER, e.g. "
                            f"decode>=10,power<=10 (metrics: {', '.join(METRICS)})")
        name, op, num = m.group(1).lower(), m.group(2), m.group(3)
        if name not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS), n=1)
            raise SpecError(f"--target {term.strip()!r}: unknown metric {name!r}"
                            + (f"; did you mean {close[0]}?" if close else "")
                            + " (" + "; ".join(f"{k}: {v[2]}, {v[1]}" for k, v in METRICS.items()) + ")")
        try:
            value = float(num)
        except ValueError:
            raise SpecError(f"--target {term.strip()!r}: {num!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise SpecError(f"--target {term.strip()!r}: give a finite, non-negative number")
        out.append(Bound(name, op, value))
    return tuple(out)


__all__ = ["Bound", "METRICS", "parse_target"]
