"""Next-token choice on the host: greedy, or temperature with top-k and top-p, seeded per request."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature >= 0, 0 < top_p <= 1 and top_k >= 0 are required")


def sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """One token id from a [vocab] logits row."""
    if p.temperature == 0:
        return int(logits.argmax())
    x = logits.double()  # float64, so that any positive temperature stays positive; from the top down, so that a
    x = (x - x.max()) / p.temperature  # tiny one gives 0 and -inf (greedy), never inf - inf
    if p.top_k:
        kth = x.topk(min(p.top_k, x.numel())).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, -1)
    if p.top_p < 1.0:
        sp, idx = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < p.top_p  # smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sp[keep])
        probs /= probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))
