"""Sampling is a function of the request's settings alone: any temperature and top_p the server admits gives a
token of the vocabulary, and a vanishing temperature gives the greedy one."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chipfuse.runtime.sampling import SamplingParams, sample

temperatures = st.one_of(st.floats(min_value=0.0, max_value=2.0), st.sampled_from([5e-324, 2.2250738585e-313, 1e-30]))
top_ps = st.one_of(st.floats(min_value=1e-38, max_value=1.0, exclude_min=False), st.just(1.0))


@settings(max_examples=200, deadline=None)
@given(temperatures, top_ps, st.integers(0, 50), st.integers(0, 2**31))
def test_any_admitted_setting_gives_a_token(t, top_p, top_k, seed):
    logits = torch.randn(97, generator=torch.Generator().manual_seed(seed)) * 30
    tok = sample(logits, SamplingParams(temperature=t, top_p=top_p, top_k=top_k, seed=seed),
                 torch.Generator().manual_seed(seed))
    assert 0 <= tok < 97


@given(st.sampled_from([5e-324, 2.2250738585e-313, 1e-30, 1e-12]), st.integers(0, 2**31))
def test_a_vanishing_temperature_is_greedy(t, seed):
    logits = torch.randn(97, generator=torch.Generator().manual_seed(seed))
    assert sample(logits, SamplingParams(temperature=t), torch.Generator().manual_seed(seed)) == int(logits.argmax())
