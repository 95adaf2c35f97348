"""Dies sharing the host's DRAM: the plan says what the display and the other masters cost in tokens/s."""

from __future__ import annotations

from pathlib import Path

import pytest

from chipfuse import api

EXAMPLE = Path(__file__).parents[2] / "examples" / "medium-shared-d2d.yaml"


def test_the_display_costs_tokens_when_the_dram_is_the_limit():
    p = api.plan("llama-3.2-1b", EXAMPLE, "int4", context=2048)
    sd = p.prediction.shared_dram
    assert sd is not None and sd.display == "1920 x 1080 at 60 Hz"
    assert sd.display_gb_per_s == pytest.approx(1920 * 1080 * 4 * 60 / 1e9)
    here = p.prediction.decode_tokens_per_s
    assert sd.decode_tokens_per_s_alone > here > sd.decode_tokens_per_s_4k60
    # memory-bound: the rate follows the DRAM left to the die (8.96 GB/s usable, less the display and 1 GB/s)
    usable = 32 / 8 * 3200e6 * 0.7
    left = usable - sd.display_gb_per_s * 1e9 - 1e9
    assert here / sd.decode_tokens_per_s_alone == pytest.approx(left / usable, rel=0.05)


def test_a_link_slower_than_the_dram_hides_the_display_and_own_dram_has_no_such_line():
    p = api.plan("llama-3.2-1b", "talk-medium-shared-pcie", "int4", context=2048)
    sd = p.prediction.shared_dram
    assert sd is not None and sd.decode_tokens_per_s_alone == pytest.approx(p.prediction.decode_tokens_per_s)
    assert api.plan("llama-3.2-1b", "talk-4die-d2d", "int4", context=2048).prediction.shared_dram is None


def test_a_dram_a_4k60_display_would_fill_plans_and_says_it_would_not_decode(tmp_path):
    """A device whose usable DRAM bandwidth (0.5 GB/s x its family's efficiency) is less than a 4K60 display's 2 GB/s
    still plans: the what-if line says 0 tokens/s with that display, instead of the whole plan being refused for an
    infinite time (and numpy's divide-by-zero warnings reaching the user)."""
    import warnings

    f = tmp_path / "slow.yaml"
    f.write_text("device: slow-board\ntops: {fp32: 0.8, int8: 1.6}\ndram: {bandwidth_gb_per_s: 0.5, capacity_gib: 16}\n"
                 "engine: llama.cpp\ncores: 6\nfamily: x86 CPU\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        p = api.plan("smollm2-135m", f, "int4", context=512)
    sd = p.prediction.shared_dram
    assert sd is not None and sd.decode_tokens_per_s_4k60 == 0.0
    assert p.prediction.decode_tokens_per_s > 0
    assert sd.decode_tokens_per_s_alone == pytest.approx(p.prediction.decode_tokens_per_s)
