"""The run recorder: off costs nothing and keeps nothing; on it is bounded; clock offsets from round trips."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chipfuse.runtime import recorder
from chipfuse.runtime.recorder import Interval, Recorder, clock_offset


def test_a_disabled_recorder_keeps_nothing():
    rec = Recorder(False)
    rec.add("compute", 1, 0.0, 1.0)
    assert rec.rows == [] and rec.to_json() == {"rows": [], "dropped": 0}


def test_the_recorder_is_bounded_and_counts_what_it_dropped(monkeypatch):
    monkeypatch.setattr(recorder, "MAX_EVENTS", 3)
    rec = Recorder(True, now=lambda: 5.0)
    for k in range(5):
        rec.add("compute", k, float(k))
    assert [r.mb for r in rec.rows] == [0, 1, 2] and rec.dropped == 2
    assert rec.rows[0] == Interval("compute", 0, 0.0, 5.0)  # no end given: the clock's now
    assert Interval.from_list(rec.to_json()["rows"][1]) == rec.rows[1]


@given(offset=st.floats(-100.0, 100.0), trips=st.lists(st.tuples(st.floats(1e-5, 1e-2), st.floats(0, 1)),
                                                      min_size=1, max_size=8))
def test_clock_offset_is_within_half_the_shortest_round_trip(offset, trips):
    """The peer answers at some point inside each round trip (fraction `f` of it): the estimate is within the
    stated uncertainty of the true offset, and that uncertainty is half the shortest trip."""
    samples, t = [], 1000.0
    for rtt, f in trips:
        samples.append((t, t + f * rtt + offset, t + rtt))
        t += 1.0
    est, unc = clock_offset(samples)
    assert abs(est - offset) <= unc + 1e-9
    assert abs(unc - min(r for r, _ in trips) / 2) < 1e-9


def test_no_round_trip_means_an_unknown_clock():
    assert clock_offset([]) == (0.0, float("inf"))
