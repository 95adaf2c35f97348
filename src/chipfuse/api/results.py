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
    fit: object | None = None  # api.hostfit.HostFit: what the runs of the embedded model measured and set (None: --no-fit)


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
    predicted_ttft_s: float | None  # None where the model does not describe this host's run (see `note`)
    predicted_decode_tokens_per_s: float | None
    memory: tuple[dict, ...]
    note: str = ""
    trace: TraceResult | None = None  # the measured timeline, when the run was traced
    startup: dict = field(default_factory=dict)  # seconds per start-up phase (Device.startup_report) and
    # "resident": whether the dies were forked by a resident launcher (`chipfuse launcher start`)

    def to_json(self) -> dict:
        return {"plan": self.plan.model_dump(mode="json", by_alias=True), "prompt": self.prompt, "text": self.text,
                "tokens": list(self.tokens), "finish_reason": self.finish_reason,
                "measured": {"ttft_s": self.ttft_s, "decode_tokens_per_s": self.decode_tokens_per_s},
                "predicted": {"ttft_s": self.predicted_ttft_s, "decode_tokens_per_s": self.predicted_decode_tokens_per_s},
                "memory": list(self.memory), "trace": str(self.trace.path) if self.trace else None,
                "startup": dict(self.startup)}


@dataclass(frozen=True)
class PresetList:
    """`presets`: the preset systems and catalogue models, each a mapping of its main facts."""

    systems: tuple[dict, ...]
    models: tuple[dict, ...]

    def to_json(self) -> dict:
        return {"systems": list(self.systems), "models": list(self.models)}


@dataclass(frozen=True)
class TraceResult:
    """`trace`: a plan's prefill and decode step laid out in time (Chrome / Perfetto JSON), and their lengths."""

    path: Path | None  # where the trace-event JSON was written (None: not written)
    title: str
    ttft_s: float  # the prefill's length: the prediction's time to first token
    decode_step_s: float  # the decode step's length: the prediction's decode_step_s
    round_trip_s: float  # one micro-batch around the pipeline (the step itself when one is in flight)
    micro_batches: int
    events: int  # trace events in the JSON
    bottleneck: str  # what the decode step is spent on most, in words
    shares: tuple[tuple[str, float], ...]  # seconds of the decode step per category
    notes: tuple[str, ...]
    trace: object  # sim.trace.Trace

    def gantt(self, width: int = 60) -> list:
        """The decode step as text bars (sim.trace.GanttRow): one per die, then the links and the host."""
        from ..sim.trace import gantt

        return gantt(self.trace.decode, width)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ScalingRow:
    """One point of `scaling`: the first `dies` dies of the system, split as `mode` (None figures: does not fit)."""

    dies: int  # dies offered: the first k of the compiler's route order
    mode: str  # pipeline, tensor or hybrid
    groups: tuple[tuple[str, ...], ...]  # the plan's pipeline positions (a die, or a tensor group), () if none
    decode_tokens_per_s: float | None  # aggregate over the batch
    decode_tokens_per_s_per_request: float | None
    ttft_s: float | None
    decode_step_s: float | None
    efficiency: float | None  # tokens/s / (dies x tokens/s of the baseline per die)
    bottleneck: str | None  # weights bandwidth, compute, link latency, link bandwidth or host
    bottleneck_share: float | None  # of the decode step
    bottleneck_words: str | None
    reason: str | None  # the predictor's words for the slowest position's first die
    shares: tuple[tuple[str, float], ...] = ()  # seconds of the decode step per bottleneck category
    prefill_bottleneck: str | None = None  # what the time to first token is spent on most, in words
    problem: str | None = None  # why it does not fit

    @property
    def used_dies(self) -> int:
        return sum(len(g) for g in self.groups)


@dataclass(frozen=True)
class ScalingReport:
    """`scaling`: predicted speed for 1..N dies of a system and each split mode, with the bottleneck in words."""

    model: str
    system: str
    precision: str
    objective: str
    context: int
    batch: int
    prompt_tokens: int
    baseline_dies: int | None  # efficiency is relative to this many dies (1 if one die holds the model)
    baseline_tokens_per_s: float | None  # the fastest fitting plan on baseline_dies
    rows: tuple[ScalingRow, ...]
    notes: tuple[str, ...] = ()  # the predictor's notes on these plans, each once

    def row(self, dies: int, mode: str) -> ScalingRow | None:
        return next((r for r in self.rows if r.dies == dies and r.mode == mode), None)

    def best(self) -> ScalingRow | None:
        """The fastest fitting point (aggregate tokens/s; on a tie the fewest dies)."""
        fits = [r for r in self.rows if r.decode_tokens_per_s is not None]
        return max(fits, key=lambda r: (r.decode_tokens_per_s, -r.dies), default=None)

    def to_json(self) -> dict:
        return {"model": self.model, "system": self.system, "precision": self.precision,
                "objective": self.objective, "context": self.context, "batch": self.batch,
                "prompt_tokens": self.prompt_tokens, "baseline_dies": self.baseline_dies,
                "baseline_tokens_per_s": self.baseline_tokens_per_s, "notes": list(self.notes),
                "rows": [{**asdict(r), "groups": [list(g) for g in r.groups]} for r in self.rows]}
