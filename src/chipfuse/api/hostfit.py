"""Fit a probed host spec on one real run, so the runtime agrees with its own plan (`chipfuse probe`).

The probe's micro-benchmarks time kernels alone; a real decode step also pays for what they leave out: a
die's kernels at the stage's shapes and cache, the Python between them, a worker woken from its wait for
each hop, and the host's own per-token work. One short traced run of the embedded model on ONE die measures
those (api.measured): the die's decode compute against the spec's gives a speed factor for its streaming
rate and per-layer cost, its link spans the hop latency, the rest of the step the host's per-token cost, and the time to first token a
prefill efficiency. Runs on more dies (and tensor groups) are then predicted from that spec, never fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hw.spec import System

FIT_PROMPT = "Tell me a story about a lighthouse keeper and the sea."
FIT_TOKENS = 48  # decode steps timed (after a warm-up request)
FIT_CONTEXT = 160  # prompt (~50 tokens with the chat template) + the tokens generated


@dataclass(frozen=True)
class HostFit:
    """What the 1-die run measured and the factors it set (speed: measured compute against the spec's)."""

    die_speed: float  # factor on the die's DRAM efficiency and per-layer cost (its decode speed)
    prefill_efficiency: float  # the die's prefill compute efficiency after the fit
    hop_latency_s: float  # one hand-over between processes (a die woken from its wait)
    host_per_token_s: float  # the host's work per generated token
    measured_decode_tokens_per_s: float
    predicted_decode_tokens_per_s_before: float
    measured_ttft_s: float
    predicted_ttft_s_before: float
    prompt_tokens: int


def resize(system: System, n: int) -> System:
    """A probed system cut to its first `n` dies, chained as the probe chains them (host -> die0 -> ... -> host)."""
    from ..hw.load import parse_system

    data = system.model_dump(mode="json", exclude_none=True)
    if not 1 <= n <= len(data["dies"]):
        raise ValueError(f"the probe describes {len(data['dies'])} dies, not {n}")
    dies = data["dies"][:n]
    names = [d["name"] for d in dies]
    proto = data["links"][0]

    def link(a: str, b: str) -> dict:
        return {**proto, "between": [a, b]}

    links = [link("host", names[0])] + [link(a, b) for a, b in zip(names, names[1:])]
    if n > 1:
        links.append(link(names[-1], "host"))
    host = {**data["host"], "ports": [{"kind": "d2d", "count": 2 if n > 1 else 1}]}
    return parse_system({**data, "name": f"{data['name']}-{n}", "host": host, "dies": dies, "links": links,
                         "packages": []}, f"{data['name']} cut to {n} dies")


def _with_fit(data: dict, speed: float, prefill_eff: float | None, hop_s: float, host_s: float) -> dict:
    out = {**data, "die_types": {}}
    for name, dt in data["die_types"].items():
        dt = dict(dt)
        mem = {**dt["memory"], "own": {**dt["memory"]["own"]}}
        mem["own"]["efficiency"] = round(min(1.0, mem["own"]["efficiency"] * speed), 4)
        dt["memory"] = mem  # decode streams weights: its speed is the DRAM side's and the per-layer cost's
        dt["op_overhead_s"] = round(dt.get("op_overhead_s", 0.0) / speed, 9)  # (TOPS stay as measured: the
        # prefill's many-token steps get their own efficiency below)
        if prefill_eff is not None:
            dt["prefill_compute_efficiency"] = round(prefill_eff, 4)
        out["die_types"][name] = dt
    out["links"] = [{**lk, "latency_us": round(hop_s * 1e6, 1)} for lk in data["links"]]
    out["host"] = {**data["host"], "overhead_per_token_s": round(host_s, 7)}
    out["sources"] = {**data.get("sources", {}), "fit": f"decode speed x{speed:.3f}, hop {hop_s * 1e6:.0f} us, host "
                      f"{host_s * 1e6:.0f} us per token, fitted on a traced 1-die run of the embedded model"}
    return out


def fit_on_run(system: System, threads: int | None, on_status=lambda m: None) -> tuple[System, HostFit]:
    """Run the embedded model on the first die of `system` (traced) and return the system with the fitted
    factors applied to every die, link and the host, and what was measured."""
    from ..compile.compiler import compile_plan
    from ..hw.load import parse_system
    from ..runtime.device import Device, resolve_model
    from .measured import measured_trace

    data = system.model_dump(mode="json", exclude_none=True)
    one = resize(system, 1)
    _, cfg = resolve_model(None)
    on_status("a traced 1-die run of the embedded model")
    plan = compile_plan(cfg, one, "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=48)
    with Device(plan, None, threads=threads, trace=True) as dev:
        ids = dev.tokenizer.apply_chat_template([{"role": "user", "content": FIT_PROMPT}], add_generation_prompt=True,
                                                tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids)
        list(dev.submit(ids, 4, stop_ids=set()))  # warm-up: first calls, allocations (its prefill is not used)
        g = dev.submit(ids, FIT_TOKENS, stop_ids=set())
        list(g)
        rec = dev.recording()
    plan = compile_plan(cfg, one, "int4", context=FIT_CONTEXT, batch=1, prompt_tokens=len(ids))
    tr = measured_trace(plan, rec)
    die = plan.stages[0].die
    compute_s = sum(s.dur_s for s in tr.decode.track_spans(die) if s.kind == "compute")
    links = [s for s in tr.decode.spans if s.kind == "transfer" and " -> " in s.track]
    hop_s = sum(s.dur_s for s in links) / max(1, len(links))
    host_s = max(0.0, tr.decode.length_s - compute_s - sum(s.dur_s for s in links))
    speed = plan.prediction.stages[0].decode_s / compute_s
    before = plan.prediction
    # the prefill: the die's compute efficiency for many-token steps, so the predicted time to first token is the
    # measured one (a few fixed-point rounds: the other parts of the TTFT do not depend on it)
    eff = 1.0
    fitted = _with_fit(data, speed, eff, hop_s, host_s)
    for _ in range(4):
        p = compile_plan(cfg, resize(parse_system(fitted, "fit"), 1), "int4", context=FIT_CONTEXT, batch=1,
                         prompt_tokens=len(ids)).prediction
        eff = min(1.0, max(1e-3, eff * p.ttft_s / g.ttft_s))
        fitted = _with_fit(data, speed, eff, hop_s, host_s)
    fit = HostFit(round(speed, 4), round(eff, 4), hop_s, host_s, g.decode_tokens_per_s or 0.0,
                  before.decode_tokens_per_s, g.ttft_s or 0.0, before.ttft_s, len(ids))
    return parse_system(fitted, "chipfuse probe (fitted on a 1-die run)"), fit
