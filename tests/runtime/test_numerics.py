"""Runtime numerics: FP32 matches transformers on the same GGUF; the default run answers Paris."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def test_fp32_logits_match_transformers_on_the_same_gguf(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    from chipfuse.frontends import load_model_config
    from chipfuse.runtime.reference import reference_model
    from chipfuse.runtime.stage import Segment

    cfg = load_model_config(smollm2_gguf)
    ours = reference_model(smollm2_gguf, cfg, "fp32", "fp32", context=256, kv_precision="fp32")
    ids = torch.tensor([1, 504, 3458, 314, 1345, 282, 4649, 47, 2, 198, 57, 3575])
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    # prefill: logits of the last position; then two decode steps through the KV cache
    got = [ours.forward(ids[:8], [Segment(0, 0, 8)])[0]]
    for i in (8, 9):
        got.append(ours.forward(ids[i:i + 1], [Segment(0, i, 1)])[0])
    for g, r in zip(got, ref[7:10]):
        assert ((g - r).abs().max() / r.abs().max()).item() < 1e-3


def test_default_run_answers_paris(tmp_path):
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "run", "--json", str(out), "--max-tokens", "24"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert "Paris" in d["text"]
    assert len(d["plan"]["stages"]) == 4
    for k in ("ttft_s", "decode_tokens_per_s"):
        assert d["measured"][k] > 0 and d["predicted"][k] > 0
    # every figure says what it is for: the plan's prediction is for the target system, the speed table for
    # this machine; one request is served, so the plan is for batch 1; piped output keeps its full width
    assert "predicted for talk-4die-d2d" in r.stdout and "x batch 1," in r.stdout
    assert "speed on THIS machine" in r.stdout and "measured here" in r.stdout and "predicted here" in r.stdout
    assert d["plan"]["workload"]["batch"] == 1 and "…" not in r.stdout
    assert "starting the dies" in r.stderr  # progress lines when piped
