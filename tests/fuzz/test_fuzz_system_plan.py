"""Fuzz system YAML, plan JSON, workload YAML, space YAML and fine-tuning data files: no traceback, no hang, no impossible figures."""

from __future__ import annotations

import pytest

from . import cat_plan, cat_space, cat_system, cat_traindata, cat_workload
from .harness import run_category

# a numpy warning (a division by zero, an overflow) on a bad input reaches the user as noise beside a wrong figure:
# inside a case it raises, and the harness counts it as a traceback with the input that caused it
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


@pytest.mark.parametrize("mod", [cat_system, cat_plan, cat_workload, cat_space, cat_traindata], ids=lambda m: m.NAME)
def test_bad_files_are_refused_cleanly(mod):
    rep = run_category(mod, n=150, timeout_s=20)
    shown = "\n\n".join(f"[{k}]\n" + "\n---\n".join(v) for k, v in rep.examples.items())
    assert rep.counts["traceback"] == rep.counts["hang"] == rep.counts["impossible"] == 0, (
        f"{rep.name}: {dict(rep.counts)}\n{shown}")
    assert rep.counts["ok"] > 0 and rep.counts["refused"] > 0, f"{rep.name}: {dict(rep.counts)}"
