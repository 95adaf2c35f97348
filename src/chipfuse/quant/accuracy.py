"""What each format costs in accuracy: perplexity, KL divergence and top-1 agreement against FP32.

The reference is the model's FP32 weights as read from its file (for the default SmolLM2 GGUF,
the dequantized Q4_1 weights). Each format is applied to every layer's linear weights and to the
embedding/LM head by the recipe the runtime uses (int4 layers keep an int8 head); the metrics
are computed on `quant/data/evaluation.txt`, text written for this project.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..frontends.config import ModelConfig
from .formats import Recipe, get_format
from .quantize import fake_quantize

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shipped_text(name: str) -> str:
    """`calibration` or `evaluation` text, without its header line."""
    text = (resources.files("chipfuse") / "quant" / "data" / f"{name}.txt").read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if not line.startswith("# chipfuse"))


def windows(tok, text: str, size: int, limit: int | None = None) -> list[list[int]]:
    ids = tok.encode(text, add_special_tokens=False)
    out = [ids[i: i + size] for i in range(0, len(ids) - size + 1, size)]
    return out[:limit] if limit else out


def quantized_weights(weights: dict[str, torch.Tensor], cfg: ModelConfig, recipe: Recipe,
                      layers: set[int] | None = None, replace: dict[str, torch.Tensor] | None = None) -> dict:
    """FP32 tensors holding exactly what the recipe keeps (quantize, then dequantize).

    `layers` limits quantization to those layers (for sensitivity); `replace` supplies weights a
    calibration-based method already quantized."""
    out = dict(weights)
    for i in range(cfg.num_layers):
        if layers is not None and i not in layers:
            continue
        fmt = recipe.for_block(i + 1)
        for n in LINEARS:
            key = f"layers.{i}.{n}"
            out[key] = replace[key] if replace and key in replace else fake_quantize(weights[key], fmt)
    if layers is None:
        out["embed"] = fake_quantize(weights["embed"], recipe.head)
        if "lm_head" in weights:
            out["lm_head"] = fake_quantize(weights["lm_head"], recipe.head)
    return out


def next_token_nll(logp: torch.Tensor, ids: list[int]) -> float:
    """Summed negative log-likelihood of ids[1:] under log-probabilities logp [len(ids), V]."""
    return float(-logp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum())


class Scorer:
    """FP32 reference next-token distributions over the evaluation windows, computed once."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, torch.Tensor], wins: list[list[int]]):
        self.cfg, self.wins = cfg, wins
        self.ctx = max(len(w) for w in wins)
        ref = self._model(weights)
        self.ref_logp = [F.log_softmax(self._logits(ref, w), -1) for w in wins]

    def _model(self, weights):
        from ..runtime.stage import StageModel

        fp32 = get_format("fp32")
        return StageModel(self.cfg, weights, (0, self.cfg.num_layers + 2), fp32, self.ctx, "fp32", fp32)

    @torch.inference_mode()
    def _logits(self, model, ids: list[int]) -> torch.Tensor:
        from ..runtime.stage import Segment

        model.free(0)
        out = model.forward(torch.tensor(ids), [Segment(0, 0, len(ids))], all_logits=True)
        model.free(0)
        return out

    def score(self, weights: dict[str, torch.Tensor], windows_used: int | None = None) -> dict[str, float]:
        """Perplexity, mean KL(FP32 || q) per token, and top-1 agreement with FP32."""
        model = self._model(weights)
        nll = kl = agree = n = 0.0
        for w, ref in list(zip(self.wins, self.ref_logp))[:windows_used]:
            logp = F.log_softmax(self._logits(model, w), -1)
            nll += next_token_nll(logp, w)
            kl += float((ref.exp() * (ref - logp)).sum())
            agree += float((ref.argmax(-1) == logp.argmax(-1)).sum())
            n += len(w)
        ntok = sum(len(w) - 1 for w in self.wins[:windows_used])
        return {"perplexity": math.exp(nll / ntok), "kl": kl / n, "top1": agree / n}


@dataclass
class FormatRow:
    format: str
    recipe: str
    method: str
    weight_bytes: int
    bits_per_weight: float
    perplexity: float
    kl: float
    top1: float


def weight_bytes(cfg: ModelConfig, recipe: Recipe) -> int:
    """Bytes of the whole model in this recipe: the IR's count, the one the planner uses."""
    from ..ir.graph import block_weight_bytes, tied_shared_bytes
    from ..ir.llm import build_llm_graph

    g = build_llm_graph(cfg)
    return int(block_weight_bytes(g, recipe).sum() - tied_shared_bytes(g, recipe, range(g.n_blocks)))


def n_params(cfg: ModelConfig) -> int:
    """Parameters of the whole model (norms included; the tied table once): its FP32 bytes / 4."""
    return weight_bytes(cfg, Recipe.of(get_format("fp32"))) // 4


def to_dict(rows: list[FormatRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def save_json(path: str | Path, payload: dict) -> None:
    import json

    from ..io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
