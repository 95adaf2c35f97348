"""Unit constants: everything inside chipfuse is SI (bytes, seconds, FLOP, joules, watts)."""

KiB = 1024
MiB = 1024**2
GiB = 1024**3
GB = 1e9
TERA = 1e12
US = 1e-6
PJ = 1e-12


def fmt_bytes(n: float) -> str:
    """Human-readable binary size: 1.50 GiB."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_rate(bytes_per_s: float) -> str:
    """Bandwidth in GB/s (decimal, as vendors state it)."""
    return f"{bytes_per_s / GB:.1f} GB/s"


def fmt_duration(s: float) -> str:
    """A time in the unit that reads best: 850 us, 12.3 ms, 4.56 s, 2.5 min."""
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    return f"{s / 60:.1f} min"
