"""docs/python-api.md's examples run as written (in order, one namespace), so the page and the API agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_an_example_for_every_api_function():
    from chipfuse import api

    text = "".join(blocks())
    for name in ("load_system", "load_model", "alias_of", "presets", "plan", "predict", "load_plan",
                 "required_bandwidth_bytes_per_s", "quantize_report", "mixed_precision", "open_device", "calibrate",
                 "trace", "scaling", "plot_scaling", "cost", "place", "explore", "plan_finetune", "finetune",
                 "merge_adapter"):
        assert f"api.{name}(" in text, name
        assert callable(getattr(api, name))


@pytest.mark.slow
def test_python_api_doc_examples_run():
    ns: dict = {}
    for i, code in enumerate(blocks()):
        exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), ns)  # noqa: S102 - our own documentation
