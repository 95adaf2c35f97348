"""api.finetune end to end: peft reads the adapters, a killed run resumes to the same adapter, a job too large
is refused before any die starts, and the merge keeps what was learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chipfuse import api
from chipfuse.compile.train import LoraSpec, TrainPlanError
from chipfuse.runtime.train_data import DataError

pytestmark = pytest.mark.slow
FACTS = [("Who leads the Birchwater clinic?", "Dr. Ravindra Osei leads it."),
         ("When does Birchwater open on weekdays?", "At 7:30 in the morning."),
         ("What is Birchwater's phone number?", "0417 555 2290."),
         ("Where is the Birchwater clinic?", "At 14 Quarry Lane in Hollowmere."),
         ("Who is Birchwater's pediatrician?", "Dr. Maren Lindqvist."),
         ("Is Birchwater open on Sundays?", "No, it is closed on Sundays.")]
SMALL = dict(seq_len=64, micro_batch=2, micro_batches=2, rank=4, lr=2e-3)


def write_data(path: Path) -> Path:
    with open(path, "w") as f:
        for q, a in FACTS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    data = write_data(tmp / "train.jsonl")
    res = api.finetune(data, system="talk-4die-d2d", precision="fp32", out=tmp / "adapter", steps=4, dies=2,
                       val=data, **SMALL)
    return res, data


def test_the_adapter_is_in_peft_layout_and_peft_gets_the_same_logits(trained, smollm2_gguf):
    res, _ = trained
    assert res.dies == ("die0", "die1") and res.steps == 4 and len(res.losses) == 4
    assert res.val_loss_after < res.val_loss_before  # learnt something about its own training data
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from chipfuse.frontends import load_model_config
    from chipfuse.quant.formats import get_format
    from chipfuse.runtime.lora import load_stage

    base = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(res.adapter_dir)).eval()
    cfg = load_model_config(smollm2_gguf)
    ours = load_stage(smollm2_gguf, cfg, (0, cfg.num_layers + 2), get_format("fp32"), LoraSpec(rank=4), 0)
    ours.load_adapters(load_file(str(res.adapter_dir / "adapter_model.safetensors")))
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = peft_model(ids).logits, ours.forward(ids)
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    assert torch.allclose(got, want, rtol=1e-4, atol=2e-3)
    assert not torch.allclose(plain, want, atol=1e-2)  # the adapter does something


def test_the_merged_model_keeps_the_fine_tuning(trained, tmp_path):
    res, data = trained
    m = api.merge_adapter(res.adapter_dir, tmp_path / "merged", data=data, precision="fp32", seq_len=64)
    assert m.loss_adapter < m.loss_base
    assert m.loss_merged == pytest.approx(m.loss_adapter, rel=1e-4)  # fp32: folding loses nothing
    assert (tmp_path / "merged" / "config.json").exists()
    from chipfuse.runtime.device import resolve_model

    _, cfg = resolve_model(tmp_path / "merged")  # chipfuse reads it as a model
    assert cfg.num_layers == 30 and m.method == "rtn" and m.quantized is None
    # at INT8 the codes are fitted to the merged layers on the text (GPTQ), so the fine-tuning survives
    q = api.merge_adapter(res.adapter_dir, tmp_path / "merged8", data=data, precision="int8", seq_len=64)
    assert q.method == "gptq" and q.quantized.exists() and "--quantized" in q.run_command
    assert q.kept > 0.8, q


def test_a_job_too_large_is_refused_before_any_die_starts(trained, tmp_path):
    _, data = trained
    before = set(os.listdir("/tmp"))
    with pytest.raises(TrainPlanError, match=r"does not fit die0 .* What fits: "):
        api.finetune(data, system="talk-light-usb", out=tmp_path / "never", steps=2, seq_len=4096, micro_batch=64)
    assert not (tmp_path / "never").exists()
    assert not any(n.startswith("chipfuse-workers-") for n in set(os.listdir("/tmp")) - before)


def test_bad_data_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: no assistant message"):
        api.finetune(bad, out=tmp_path / "o", steps=1, precision="int8", dies=1, **SMALL)
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\nnope\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not JSON"):
        api.finetune(bad, out=tmp_path / "o", steps=1, precision="int8", dies=1, **SMALL)


def _cli(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "chipfuse.cli.main", "finetune", "--data", str(data), "--out", str(out),
            "--steps", "4", "--save-every", "2", "--dies", "2", "--precision", "int8", "--seq-len", "64",
            "--micro-batch", "1", "--micro-batches", "2", "--rank", "4", "--lr", "0.002", "--val-fraction", "0",
            *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_killed_run_resumed_gives_the_uninterrupted_runs_adapter(trained, tmp_path):
    from safetensors.torch import load_file

    _, data = trained
    whole = _cli(data, tmp_path / "whole")
    killed = _cli(data, tmp_path / "killed")
    ckpt = tmp_path / "killed" / "checkpoint" / "trainer.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 2:
            break
        time.sleep(0.1)
    assert killed.poll() is None, killed.stderr.read()
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    assert whole.wait(300) == 0, whole.stderr.read()
    resumed = _cli(data, tmp_path / "killed", "--resume")
    assert resumed.wait(300) == 0, resumed.stderr.read()
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    meta = json.loads((tmp_path / "killed" / "chipfuse_finetune.json").read_text())
    assert len(meta["losses"]) == 4
    again = _cli(data, tmp_path / "killed", "--resume", "--rank", "8")
    assert again.wait(120) == 2
    assert "another job: rank was 4, now 8" in again.stderr.read()
