"""`api.explore` and `chipfuse explore`: the files a user gets, the front's designs planned again in full,
and the messages for a target nobody meets, a space where nothing can be built, and bad options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chipfuse import api
from chipfuse.cli.main import app
from chipfuse.compile.compiler import compile_plan
from chipfuse.errors import SpecError
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system

SMALL = Path(__file__).parents[1] / "explore" / "space_small.yaml"
MODELS = ["smollm2-135m", "qwen2.5-0.5b"]


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore")
    return api.explore(SMALL, MODELS, target="decode>=20,power<=10", out_dir=out, workers=1), out


def test_it_writes_every_point_the_fronts_the_plots_and_the_designs(explored):
    res, out = explored
    with open(out / "points.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == res.configurations
    assert sum(r["meets"] == "yes" for r in rows) == res.meeting > 0
    assert all(r["rejected"] for r in rows if r["meets"] == "no")  # every rejected point says why
    with open(out / "pareto.csv", encoding="utf-8") as f:
        front = list(csv.DictReader(f))
    assert len(front) == len(res.front) and all(r["pareto"] == "yes" for r in front)
    for name in ("pareto", "roofline", "memory"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:500]
    assert json.loads((out / "summary.json").read_text())["meeting"] == res.meeting


def test_the_fronts_designs_plan_again_to_the_same_figures(explored):
    """Each front point's system file, planned by the full planner, predicts what the sweep reported."""
    res, out = explored
    for p in res.front[:6]:
        name = next(f for f in res.files if f.endswith(".yaml") and f"{p.dies}x{p.die_type}-{p.memory}-{p.link}" in f
                    and p.soc in Path(f).name)
        plan = compile_plan(load_model_config(p.model), load_system(name), p.precision, context=1024,
                            prompt_tokens=128, split=p.split)
        assert plan.prediction.decode_tokens_per_s == pytest.approx(p.decode_tokens_per_s, rel=1e-9)
        assert plan.prediction.energy.power_w == pytest.approx(p.power_w, rel=1e-9)


def test_the_cheapest_per_model_meets_the_target_and_is_cheapest(explored):
    res, out = explored
    with open(out / "points.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["meets"] == "yes"]
    for p in res.cheapest:
        assert p.decode_tokens_per_s >= 20 and p.power_w <= 10
        assert p.cost_usd == pytest.approx(min(float(r["cost_usd"]) for r in rows if r["model"] == p.model), rel=1e-5)
    for c in res.covering:
        assert {m for m, _, _ in c.precisions} == set(MODELS)


def test_a_target_nobody_meets_names_the_closest_point_and_by_how_much(tmp_path):
    with pytest.raises(api.TargetError) as e:
        api.explore(SMALL, MODELS, target="decode>=5000,power<=10", out_dir=tmp_path, workers=1)
    msg = str(e.value)
    assert "no configuration meets decode>=5000,power<=10" in msg
    assert "The closest:" in msg and "misses decode>=5000 by" in msg and "(meets power<=10)" in msg
    assert e.value.result.meeting == 0 and (tmp_path / "points.csv").exists()  # the table is still written


def test_a_space_where_nothing_can_be_built_says_why(tmp_path):
    d = yaml.safe_load(SMALL.read_text())
    d["links"] = {"usb": d["links"]["usb"]}
    d["die_counts"] = [3, 4]  # both SoCs have two USB ports
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(api.TargetError, match=r"none of the .* can even be built.*usb links at the host"):
        api.explore(p, MODELS, target="decode>=1", workers=1)


def test_no_model_is_a_clear_error():
    with pytest.raises(SpecError, match="no model to explore"):
        api.explore(SMALL, [], workers=1)


def test_an_accuracy_report_adds_a_fourth_objective_for_its_model(tmp_path):
    rep = {"model": "smollm2-135m", "rows": [{"format": "int8", "kl": 0.001}, {"format": "fp16", "kl": 0.0},
                                             {"format": "int4-g32", "kl": 0.05}]}
    (tmp_path / "q.json").write_text(json.dumps(rep))
    res = api.explore(SMALL, MODELS, target="decode>=20", workers=1, accuracy=tmp_path / "q.json", plots=False)
    mine = [p for p in res.front if p.model == "smollm2-135m"]
    assert mine and all(p.accuracy is not None for p in mine)
    assert {p.precision for p in mine} >= {"fp16"}  # the most accurate format stays on the front
    assert all(p.accuracy is None for p in res.front if p.model != "smollm2-135m")
    rep["model"] = "llama-2-7b"
    (tmp_path / "q.json").write_text(json.dumps(rep))
    with pytest.raises(SpecError, match="measured llama-2-7b, which is none of the models explored"):
        api.explore(SMALL, MODELS, workers=1, accuracy=tmp_path / "q.json")


def test_the_cli_reports_and_exits_cleanly(tmp_path):
    r = CliRunner().invoke(app, ["explore", "--space", str(SMALL), "-m", "smollm2-135m", "--target", "decode>=20",
                                 "--workers", "1", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert "cheapest per model meeting the target" in r.output and "why the others were rejected" in r.output
    assert json.loads((tmp_path / "s.json").read_text())["configurations"] > 0


@pytest.mark.parametrize("args, words", [
    (["--target", "decod>=10"], "did you mean decode"),
    (["--target", "decode>=1e9"], "The closest:"),
    (["--workers", "0"], "--workers 0"),
    (["--out", "/nonexistent/dir/x"], "does not exist"),
])
def test_the_cli_refuses_with_one_message(args, words):
    r = CliRunner().invoke(app, ["explore", "--space", str(SMALL), "-m", "smollm2-135m", *args])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output
