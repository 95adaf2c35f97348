"""Mixed precision: one format per layer, the least total KL divergence within a byte budget.

Per-layer sensitivities (KL against FP32 with only that layer quantized) are treated as
additive; the choice is a multiple-choice knapsack solved exactly as a MILP (HiGHS through
`scipy.optimize.milp`). The measured KL of the resulting mixed model is reported beside the
estimate, since the additivity is an approximation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import ChipfuseError


def assign(kl: np.ndarray, nbytes: np.ndarray, budget_bytes: float) -> list[int]:
    """Index of the chosen format for each layer. kl, nbytes: [layers, formats]."""
    n, m = kl.shape
    c = kl.ravel()
    rows = np.zeros((n, n * m))
    for i in range(n):
        rows[i, i * m:(i + 1) * m] = 1
    cons = [LinearConstraint(rows, 1, 1), LinearConstraint(nbytes.ravel()[None, :], -np.inf, budget_bytes)]
    res = milp(c, constraints=cons, integrality=np.ones(n * m), bounds=Bounds(0, 1))
    if res.status != 0 or res.x is None:
        smallest = float(nbytes.min(axis=1).sum())
        raise ChipfuseError(f"no per-layer assignment fits {budget_bytes:,.0f} bytes of layer weights; the smallest "
                            f"candidates need {smallest:,.0f} (add a smaller format or raise --budget-bytes)")
    x = res.x.reshape(n, m)
    return [int(np.argmax(x[i])) for i in range(n)]
