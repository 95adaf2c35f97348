"""`chipfuse place` end to end on the built-in OCR models and SmolLM2: a placement that meets the demands, one
that cannot (the message says which demand, by how much, and what would meet it), and bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chipfuse import api
from chipfuse.errors import ChipfuseError
from chipfuse.plan.placement import load_placement

EXAMPLE = Path(__file__).parents[2] / "examples" / "hospital.yaml"


def test_the_hospital_example_is_placed_and_every_demand_met(tmp_path):
    res = api.place(EXAMPLE, "talk-4die-d2d")
    assert res.met and res.method == "milp" and res.lam >= 1
    for m in res.models:
        assert m.served >= m.demand * res.lam * (1 - 1e-6)
    assert all(d.busy <= 1 + 1e-6 and d.used_bytes <= d.memory_bytes for d in res.dies)
    res.placement.save(tmp_path / "p.json")
    back = load_placement(tmp_path / "p.json")
    assert back == res.placement
    served = {m.name: 0.0 for m in res.models}
    for dep in back.deployments:
        served[dep.model] += dep.rate
        assert dep.kind in ("cv", "llm") and (dep.kind == "llm" or dep.pieces[-1].end > dep.pieces[0].start)
    assert served == pytest.approx({m.name: m.served for m in res.models}, rel=1e-9)
    assert api.plot_placement(res, tmp_path / "p.png").stat().st_size > 5000
    # power: static plus each model's energy per item at its rate; at the demanded rates for the fanless verdict
    joules = dict(res.energy_j_per_item)
    assert all(j > 0 for j in joules.values())
    assert res.power_at_served_w == pytest.approx(res.static_w + sum(m.served * joules[m.name] for m in res.models))
    assert res.power_at_demand_w == pytest.approx(res.static_w + sum(m.demand * joules[m.name] for m in res.models))
    assert res.fanless == (res.power_at_demand_w <= res.fanless_w)


def test_demands_that_cannot_be_met_say_which_by_how_much_and_what_would_meet_them(tmp_path):
    w = yaml.safe_load(EXAMPLE.read_text())
    w["models"][0]["rate"] = 60  # pages per second: far beyond four dies
    path = tmp_path / "heavy.yaml"
    path.write_text(yaml.safe_dump(w))
    with pytest.raises(api.DemandError) as e:
        api.place(path, "talk-4die-d2d", require_met=True)
    text = str(e.value)
    assert "det: 60 frames/s asked" in text and "short by" in text
    assert "more dies like" in text or "another die like" in text
    assert "instead of" in text  # a lower precision, solved
    assert "a lower rate: det at" in text and "(and cls, rec, which it feeds)" in text
    lam = e.value.result.lam
    assert 0 < lam < 1
    cli = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "place", "-w", str(path), "-s", "talk-4die-d2d"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 3 and "cannot all be met" in cli.stderr and "Traceback" not in cli.stderr


def test_an_onnx_file_with_an_unknown_op_and_a_model_too_big_for_any_die(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from cv_helpers import small_cnn

    odd = small_cnn(tmp_path / "odd.onnx", extra_op="Celu")
    w = tmp_path / "w.yaml"
    w.write_text(yaml.safe_dump({"models": [{"name": "odd", "onnx": str(odd), "rate": 1}]}))
    with pytest.raises(ChipfuseError, match="ops chipfuse cannot cost or run: Celu x1"):
        api.place(w, "talk-4die-d2d")
    w.write_text(yaml.safe_dump({"models": [{"name": "big", "llm": "llama-2-70b", "precision": "fp16", "rate": 1}]}))
    with pytest.raises(ChipfuseError, match="big: no way to run on talk-4die-d2d.*Try a lower precision"):
        api.place(w, "talk-4die-d2d")
    w.write_text("models:\n  - name: det\n    onnx: ocr-det\n    rate: -2\n")
    cli = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "place", "-w", str(w), "-s", "talk-4die-d2d"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "models[0].rate: Input should be greater than or equal to 0.000001" in cli.stderr


def test_placement_files_that_are_not_placements(tmp_path):
    from chipfuse.errors import SpecError

    bad = tmp_path / "p.json"
    for text, message in [("{not json", "not JSON"), ("[1, 2]", "not a placement"),
                          ('{"schema": "chipfuse.plan"}', "not a placement"),
                          ('{"schema": "chipfuse.placement", "version": 1}', "invalid placement")]:
        bad.write_text(text)
        with pytest.raises(SpecError, match=message):
            load_placement(bad)
    cli = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "run", "--placement", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "invalid placement" in cli.stderr and "Traceback" not in cli.stderr
    cli = subprocess.run([sys.executable, "-m", "chipfuse.cli.main", "run", "-w", str(tmp_path / "none.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "none.yaml" in cli.stderr and "Traceback" not in cli.stderr
