"""`chipfuse finetune`, `merge` and `run --adapter` on bad input: one message naming the option or file, exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chipfuse.cli.main import app

runner = CliRunner()


def test_plan_only_shows_every_dies_training_memory_and_the_predicted_step(tmp_path):
    r = runner.invoke(app, ["finetune", "--data", str(tmp_path / "unused.jsonl"), "--plan-only", "--seq-len", "128"])
    assert r.exit_code == 0, r.output
    assert "training memory per die" in r.output and "die3" in r.output and "bubble" in r.output
    assert "trainable values: 2,442,240" in r.output  # rank 8 on the seven projections of SmolLM2's 30 layers


@pytest.mark.parametrize("args, words", [
    (["--rank", "0"], "LoRA rank 0"),
    (["--targets", "q_proj,lm_head"], "target modules"),
    (["--seq-len", "1"], "seq_len 1"),
    (["--micro-batch", "0"], "micro_batch 0"),
    (["--system", "no-such-system"], "no-such-system"),
    (["--model", "llama-2-7b"], "catalogue entry"),
    (["--seq-len", "4096", "--micro-batch", "64", "--system", "talk-light-usb"], "What fits:"),
])
def test_bad_settings_are_one_message(tmp_path, args, words):
    r = runner.invoke(app, ["finetune", "--data", str(tmp_path / "d.jsonl"), "--plan-only", *args])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (b"", "no records"),
    (b'{"text": ""}\n', "non-empty string"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "messages[0] needs a role"),
    (b'[1, 2]\n', "a record is a JSON object"),
])
def test_bad_data_is_named_with_its_line(tmp_path, content, words):
    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_bytes(content)
    r = runner.invoke(app, ["finetune", "--data", str(data), "--steps", "1", "--dies", "1", "--precision", "int8",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["--lr", "-1"], "lr -1"),
    (["--steps", "0"], "steps 0"),
    (["--resume"], "holds no checkpoint"),
])
@pytest.mark.slow
def test_bad_run_settings_are_named(tmp_path, args, words):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n' * 3)
    r = runner.invoke(app, ["finetune", "--data", str(data), "--dies", "1", "--precision", "int8", "--out",
                            str(tmp_path / "o"), "--val-fraction", "0", *args])
    assert r.exit_code == 2, r.output
    assert words in r.output


def test_a_bad_adapter_folder_is_named_before_any_die_starts(tmp_path):
    r = runner.invoke(app, ["run", "--adapter", str(tmp_path / "nope"), "--max-tokens", "2"])
    assert r.exit_code == 2 and "no such folder" in r.output
    r = runner.invoke(app, ["merge", str(tmp_path), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "no adapter_config.json" in r.output
