"""Fuzzed model inputs (config.json files and GGUF headers): every one is accepted with sane figures
or refused with one clear message; none gives a traceback, hangs or plans impossible figures."""

import pytest

from . import cat_config, cat_gguf, harness

# a numpy warning (a division by zero, an overflow) on a bad input reaches the user as noise beside a wrong figure:
# inside a case it raises, and the harness counts it as a traceback with the input that caused it
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.mark.parametrize("mod", [cat_config, cat_gguf], ids=["config.json", "gguf"])
def test_fuzzed_model_inputs_are_refused_or_sane(mod):
    rep = harness.run_category(mod, n=150, timeout_s=20)
    bad = {k: rep.counts[k] for k in ("traceback", "hang", "impossible")}
    shown = "\n\n".join(f"[{k}] {e}" for k, v in rep.examples.items() for e in v)
    assert bad == {"traceback": 0, "hang": 0, "impossible": 0}, f"{rep.name}: {dict(rep.counts)}\n{shown}"
    assert rep.counts["ok"] > 0 and rep.counts["refused"] > 0, dict(rep.counts)
