"""`chipfuse plan --trace` and `chipfuse scale`: the files they write and what they print."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from chipfuse.cli.main import app

runner = CliRunner()


def test_plan_trace_writes_perfetto_json_and_prints_a_gantt_per_die(tmp_path):
    out = tmp_path / "trace.json"
    plan_json = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "-m", "llama-3.2-3b", "-s", "talk-4die-d2d", "--split", "pipeline",
                            "--trace", str(out), "--json", str(plan_json)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    plan = json.loads(plan_json.read_text())
    assert abs(doc["otherData"]["decode_step_us"] / (plan["prediction"]["decode_step_s"] * 1e6) - 1) < 1e-6
    assert {e["ph"] for e in doc["traceEvents"]} == {"M", "X"}
    lines = r.output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("one decode step"))
    bars = lines[start + 1:start + 7]
    assert [ln.split("|")[0].strip() for ln in bars] == ["die0", "die1", "die2", "die3", "links", "host"]
    assert all(len(ln.split("|")[1]) == 60 for ln in bars)
    assert "█" in bars[0] and "·" in bars[0]
    assert "bottleneck: weights bandwidth" in r.output and str(out) in r.output and "perfetto" in r.output


def test_plan_trace_of_a_tensor_group_shows_its_allreduces(tmp_path):
    r = runner.invoke(app, ["plan", "-m", "llama-3.2-3b", "-s", "talk-4die-d2d", "--split", "tensor",
                            "--trace", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    assert "all-reduce" in r.output.split("one decode step")[1]


def test_trace_path_is_checked_before_planning(tmp_path):
    r = runner.invoke(app, ["plan", "-m", "smollm2", "-s", "talk-4die-d2d", "--trace",
                            str(tmp_path / "missing" / "t.json")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_scale_prints_one_row_per_die_count_and_mode_and_writes_plot_and_json(tmp_path):
    png, js = tmp_path / "s.png", tmp_path / "s.json"
    r = runner.invoke(app, ["scale", "-m", "llama-3.2-3b", "-s", "talk-4die-d2d", "--context", "1024",
                            "--plot", str(png), "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "will another die help?" in r.output and "efficiency" in r.output
    for words in ("pipeline", "tensor", "hybrid", "100%", "weights bandwidth", "fastest:"):
        assert words in r.output, words
    assert png.read_bytes()[:4] == b"\x89PNG"
    d = json.loads(js.read_text())
    assert [(x["dies"], x["mode"]) for x in d["rows"]][:3] == [(1, "pipeline"), (2, "pipeline"), (2, "tensor")]
    assert d["rows"][0]["efficiency"] == 1.0


def test_scale_shows_points_that_do_not_fit():
    r = runner.invoke(app, ["scale", "-m", "llama-2-13b", "-s", "talk-4die-d2d", "--precision", "int8",
                            "--modes", "pipeline"])
    assert r.exit_code == 0, r.output
    assert "does not fit" in r.output and "chipfuse plan --split MODE --dies K" in r.output


def test_scale_bad_options_are_one_message(tmp_path):
    r = runner.invoke(app, ["scale", "-m", "smollm2", "-s", "talk-4die-d2d", "--modes", "pipeline,sideways"])
    assert r.exit_code == 2 and "--modes pipeline,sideways: choose among pipeline, tensor, hybrid" in r.output
    r = runner.invoke(app, ["scale", "-m", "smollm2", "-s", "talk-4die-d2d", "--dies", "7"])
    assert r.exit_code == 2 and "--dies 7" in r.output
    r = runner.invoke(app, ["scale", "-m", "smollm2", "-s", "talk-4die-d2d", "--plot", str(tmp_path / "no" / "s.png")])
    assert r.exit_code == 2 and "does not exist" in r.output
