"""The frozen result types the Python API returns (the CLI renders them; scripts read their fields)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

GRID_NOTE = ("Reference: the FP32 weights dequantized from the model file. SmolLM2's GGUF is Q4_1 (asymmetric INT4, "
             "groups of 32), so int4-g32 sits exactly on the file's own grid and shows almost no loss; compare "
             "methods at g64/g128 and symmetric INT4. The embedding and LM head are int8 whenever the layers are int4.")


@dataclass(frozen=True)
class FormatAccuracy:
    """One format's cost: bytes, and accuracy against the FP32 reference on the evaluation text."""

    format: str
    recipe: str
    method: str  # "rtn" (round to nearest) or "gptq"
    weight_bytes: int
    bits_per_weight: float
    perplexity: float
    kl: float
    top1: float


@dataclass(frozen=True)
class LayerSensitivity:
    """KL against FP32 with only this layer quantized."""

    layer: int
    perplexity: float
    kl: float
    top1: float


@dataclass(frozen=True)
class QuantizeReport:
    """`quantize_report`: accuracy per format (and per layer, if asked), with the grid caveat."""

    model: str
    windows: int
    window_tokens: int
    rows: tuple[FormatAccuracy, ...]
    sensitivity: tuple[LayerSensitivity, ...] = ()
    sensitivity_format: str | None = None
    saved: Path | None = None  # GPTQ codes written here
    saved_recipe: str | None = None
    note: str = GRID_NOTE

    def gptq_gains(self) -> dict[str, float]:
        """Per format with both methods: the fraction by which GPTQ lowers KL against round-to-nearest."""
        out = {}
        for r in self.rows:
            if r.method == "gptq":
                rtn = next(x for x in self.rows if x.format == r.format and x.method == "rtn")
                out[r.format] = 1 - r.kl / rtn.kl if rtn.kl else 0.0
        return out

    def to_json(self) -> dict:
        return {"model": self.model, "note": self.note, "windows": self.windows, "window_tokens": self.window_tokens,
                "rows": [asdict(r) for r in self.rows], "sensitivity": [asdict(s) for s in self.sensitivity]}


@dataclass(frozen=True)
class MixedReport:
    """`mixed_precision`: one format per layer with the least estimated KL within a byte budget, measured."""

    model: str
    method: str
    recipe: object  # quant.formats.Recipe
    per_layer: tuple[str, ...]
    weight_bytes: float
    budget_bytes: float
    estimated_kl: float
    measured: dict = field(default_factory=dict)  # perplexity, kl, top1 of the mixed model
    sensitivity_kl: tuple[tuple[float, ...], ...] = ()
    candidates: tuple[str, ...] = ()
    budget_reason: str | None = None  # how a rate target became the budget
    target_system: str | None = None
    target_tokens_per_s: float | None = None
    predicted_tokens_per_s: float | None = None
    saved: Path | None = None
    note: str = GRID_NOTE

    def to_json(self) -> dict:
        return {"model": self.model, "note": self.note,
                "mixed": {"per_layer": list(self.per_layer), "bytes": self.weight_bytes,
                          "budget_bytes": self.budget_bytes, "estimated_kl_sum": self.estimated_kl, **self.measured,
                          "sensitivity_kl": [list(r) for r in self.sensitivity_kl],
                          "candidates": list(self.candidates)}}


@dataclass(frozen=True)
class ProbeReport:
    """`probe`: this machine as a system of emulated dies, and the raw figures measured."""

    system: object  # hw.spec.System
    bandwidth_gb_per_s: float
    int4_kernel_gb_per_s: float
    tops: dict
    layer_overhead_s: float
    hop_latency_s: float
    hop_gb_per_s: float


@dataclass(frozen=True)
class CalibrationReport:
    """`calibrate`: the fitted efficiency factors per device family and their error, as a Markdown table."""

    results: tuple
    skipped: tuple
    measurements: int
    markdown: str
    updated_presets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """`run`: one prompt answered on the dies, with measured speed beside the model's prediction for this host."""

    plan: object  # plan.Plan
    prompt: str
    prompt_tokens: int
    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    ttft_s: float | None
    decode_tokens_per_s: float | None
    predicted_ttft_s: float
    predicted_decode_tokens_per_s: float
    memory: tuple[dict, ...]

    def to_json(self) -> dict:
        return {"plan": self.plan.model_dump(mode="json", by_alias=True), "prompt": self.prompt, "text": self.text,
                "tokens": list(self.tokens), "finish_reason": self.finish_reason,
                "measured": {"ttft_s": self.ttft_s, "decode_tokens_per_s": self.decode_tokens_per_s},
                "predicted": {"ttft_s": self.predicted_ttft_s, "decode_tokens_per_s": self.predicted_decode_tokens_per_s},
                "memory": list(self.memory)}


@dataclass(frozen=True)
class PresetList:
    """`presets`: the preset systems and catalogue models, each a mapping of its main facts."""

    systems: tuple[dict, ...]
    models: tuple[dict, ...]

    def to_json(self) -> dict:
        return {"systems": list(self.systems), "models": list(self.models)}
