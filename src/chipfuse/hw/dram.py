"""DRAM standards: the data rates each type allows, so a typo in a spec is caught.

Ranges are the JEDEC-published speed grades (JESD209-4 LPDDR4/4X, JESD209-5 LPDDR5/5X,
JESD79-4 DDR4, JESD79-5 DDR5, JESD250 GDDR6, JESD235/238 HBM) with a little headroom for
vendor overclocked parts (GDDR6X is Micron's, up to 24 Gbps per pin).
"""

# type -> (min MT/s, max MT/s) per pin
DRAM_RATE_MTPS: dict[str, tuple[float, float]] = {
    "LPDDR4": (1600, 4266),
    "LPDDR4X": (1600, 4266),
    "LPDDR5": (3200, 6400),
    "LPDDR5X": (6400, 10700),
    "DDR4": (1600, 3600),
    "DDR5": (3200, 8800),
    "GDDR6": (12000, 20000),
    "GDDR6X": (19000, 24000),
    "HBM2": (1600, 2400),
    "HBM2E": (2400, 3600),
    "HBM3": (4800, 6400),
}


def peak_bandwidth_bytes_per_s(bus_width_bits: int, data_rate_mtps: float) -> float:
    """Peak DRAM bandwidth: bus width in bytes times transfers per second."""
    return bus_width_bits / 8 * data_rate_mtps * 1e6


def die_read_bytes_per_s(peak_bytes_per_s: float, efficiency: float, other_bytes_per_s: float = 0.0,
                         share: float = 1.0, cap_bytes_per_s: float = float("inf")) -> float:
    """The rate a die reads DRAM at: the usable rate (peak x efficiency) less other masters' traffic,
    times the die's share of what is left, capped by the slowest off-chip link on its way.
    The system spec (System.die_bandwidth_bytes_per_s) and the calibration's fit both use it."""
    return min(max(peak_bytes_per_s * efficiency - other_bytes_per_s, 0.0) * share, cap_bytes_per_s)
