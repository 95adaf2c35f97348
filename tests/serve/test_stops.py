"""Stop strings over a stream: what is released is the answer up to the stop string completed first (the one
whose last character comes earliest; the earlier-starting on a tie), however the text was cut into pieces, and
nothing past it is ever sent (hypothesis)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from chipfuse.serve.app import _Stops

ALPHABET = "ab \n."


@example(text=".aa", cuts=[2], stops=["a", ".aa"])  # "a" completes before ".aa" would: cut or not, it ends it
@given(text=st.text(ALPHABET, max_size=60), cuts=st.lists(st.integers(0, 60), max_size=12),
       stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=4))
def test_the_released_text_is_the_answer_up_to_the_first_stop(text, cuts, stops):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    s = _Stops(stops)
    out, stopped = "", False
    for p in pieces:
        got, hit = s.push(p)
        out += got
        if hit:
            stopped = True
            break
    if not stopped:
        out += s.flush()
    hits = [(i + len(x), i) for x, i in ((x, text.find(x)) for x in stops) if i >= 0]
    if hits:
        assert stopped and out == text[: min(hits)[1]]
    else:
        assert not stopped and out == text
