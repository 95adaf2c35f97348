"""The command line: plan writes its JSON, presets lists systems and models, errors are one message."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from chipfuse.cli.main import app

runner = CliRunner()


def test_plan_llama2_7b_on_two_dies_writes_a_fitting_plan(tmp_path):
    out = tmp_path / "out.json"
    r = runner.invoke(app, ["plan", "--model", "llama-2-7b", "--system", "talk-heavy-2die-pcie",
                            "--precision", "int4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["fits"] is True and len(d["stages"]) == 2
    assert d["prediction"]["decode_tokens_per_s"] > 0 and d["prediction"]["ttft_s"] > 0
    assert "memory-bound" in r.output and "tokens/s" in r.output


def test_overflow_is_a_message_not_a_traceback():
    r = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "plan", "--model", "llama-2-70b",
                        "--system", "talk-light-pcie"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "does not fit" in r.stderr and "over by" in r.stderr


def test_bad_system_file_is_a_message(tmp_path):
    f = tmp_path / "sys.yaml"
    f.write_text("name: x\nhost: {}\ndie_types: {}\ndies: []\n")
    r = runner.invoke(app, ["plan", "--model", "smollm2", "--system", str(f)])
    assert r.exit_code == 2
    assert str(f) in r.output and "host.name" in r.output


def test_presets_json_lists_systems_and_models():
    r = runner.invoke(app, ["presets", "--json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    names = {s["name"] for s in d["systems"]}
    assert "talk-heavy-2die-pcie" in names
    s = next(s for s in d["systems"] if s["name"] == "talk-heavy-2die-pcie")
    assert s["dies"] == 2 and s["links"] and s["die_memory_gib"] == [8.0, 8.0]
    assert len(d["models"]) >= 15


def test_target_rate_reports_the_bandwidth_it_needs():
    r = runner.invoke(app, ["plan", "-m", "llama-3.2-3b", "-s", "talk-heavy-2die-pcie", "--target-tokens-per-s", "10"])
    assert r.exit_code == 0 and "10 tokens/s reads" in r.output


def test_quantized_checkpoint_sets_the_plans_recipe_and_a_mismatch_is_a_message(tmp_path):
    import torch

    from chipfuse.quant.checkpoint import save_quantized
    from chipfuse.quant.formats import Recipe, get_format
    from chipfuse.quant.quantize import quantize_int4

    ckpt = tmp_path / "codes.safetensors"
    recipe = Recipe(get_format("int4-g64"), get_format("int8"), ((5, "int8"),))
    save_quantized(ckpt, {"layers.0.o_proj": quantize_int4(torch.randn(8, 64), 64, False)}, recipe,
                   {"layers": 30, "method": "gptq", "model": "smollm2"})
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--quantized", str(ckpt), "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    m = d["models"][0]
    assert m["precision"] == "int4-g64" and m["block_formats"] == [[5, "int8"]] and m["quantized_weights"] == str(ckpt)
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--quantized", str(ckpt), "--precision", "int8"])
    assert r.exit_code == 2 and "holds int4-g64+head int8+1 mixed codes" in r.output
    bad = tmp_path / "not-codes.safetensors"
    bad.write_bytes(b"hello")
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--quantized", str(bad)])
    assert r.exit_code == 2 and str(bad) in r.output and "not a chipfuse quantized checkpoint" in r.output


def test_quantize_rate_target_needs_a_system():
    r = runner.invoke(app, ["quantize", "--target-tokens-per-s", "30"])
    assert r.exit_code == 2 and "--system and --target-tokens-per-s go together" in r.output
