"""Workload files: every mistake is named by its path and says what would fix it."""

from __future__ import annotations

import pytest

from chipfuse.errors import SpecError
from chipfuse.frontends.workload import load_workload, parse_workload

GOOD = {"name": "w", "models": [{"name": "det", "onnx": "ocr-det", "rate": 2},
                                {"name": "rec", "onnx": "ocr-rec", "fed_by": {"model": "det", "per_item": 12}},
                                {"name": "chat", "llm": "smollm2", "rate": 20, "precision": "int4"}]}


def _with(**change):
    import copy

    d = copy.deepcopy(GOOD)
    for path, value in change.items():
        i, field = path.split("__")
        d["models"][int(i)][field] = value
    return d


def test_a_good_workload_gives_each_model_its_demand():
    w = parse_workload(GOOD, "w.yaml")
    assert [w.demand(m.name) for m in w.models] == [2, 24, 20]
    assert [m.unit for m in w.models] == ["frames", "frames", "tokens"]


@pytest.mark.parametrize("data, message", [
    (_with(**{"0__rate": -1}), r"models\[0\]\.rate: Input should be greater than or equal to 0.000001"),
    (_with(**{"0__rate": float("nan")}), r"models\[0\]\.rate: .*finite"),
    (_with(**{"0__rate": True}), r"models\[0\]\.rate"),
    (_with(**{"0__rate": 10 ** 400}), r"models\[0\]\.rate: .*finite"),  # too large for a float (fuzzing found it)
    (_with(**{"1__fed_by": {"model": "det", "per_item": 10 ** 400}}), r"per_item: .*finite"),
    (_with(**{"1__fed_by": {"model": "dett", "per_item": 2}}), r"fed_by names 'dett'.*did you mean 'det'"),
    (_with(**{"0__llm": "smollm2"}), r"exactly one of `onnx`"),
    (_with(**{"2__precision": "int3"}), r"precision 'int3' is not one of"),
    (_with(**{"1__precision": "int4"}), r"precision 'int4' is not one of fp32, fp16, bf16, int8"),
    (_with(**{"0__frame": [1, 3, 0, 5]}), r"frame is \[batch, channels, height, width\]"),
    (_with(**{"0__rat": 3}), r"models\[0\]\.rat: unknown field"),
    (_with(**{"1__rate": 5}), r"exactly one of `rate`"),
    ({"models": []}, r"models: List should have at least 1 item"),
    ({"models": [GOOD["models"][0], GOOD["models"][0]]}, r"unique: det repeated"),
    ({"models": [{"name": "a", "onnx": "x.onnx", "fed_by": {"model": "b", "per_item": 1}},
                 {"name": "b", "onnx": "x.onnx", "fed_by": {"model": "a", "per_item": 1}}]}, r"loop: a <- b <- a"),
    ([1, 2], r"a YAML mapping with `models:`"),
])
def test_mistakes_are_named(data, message):
    with pytest.raises(SpecError, match=message):
        parse_workload(data, "w.yaml")


def test_files_that_are_not_workloads(tmp_path):
    bad = tmp_path / "w.yaml"
    bad.write_bytes(b"models: [\n  - {name: x\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_workload(bad)
    bad.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(SpecError):
        load_workload(bad)
    with pytest.raises(SpecError):
        load_workload(tmp_path)
