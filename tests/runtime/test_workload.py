"""A placement on emulated dies: one device for every model of the workload. A vision model replicated on two dies
and split over them gives the interpreter's own outputs whichever way a request goes; an LLM replica answers
on its die while frames stream beside it; a short paced run measures every model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import make_system  # noqa: E402
from cv_helpers import small_cnn  # noqa: E402

from chipfuse import api  # noqa: E402
from chipfuse.errors import ChipfuseError  # noqa: E402
from chipfuse.frontends.onnx_model import load_onnx  # noqa: E402
from chipfuse.plan.placement import Deployment, Piece  # noqa: E402
from chipfuse.runtime.cv import CVProgram  # noqa: E402
from chipfuse.runtime.workload import WorkloadDevice  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workload")
    cnn = small_cnn(tmp / "cnn.onnx")
    sysfile = tmp / "two.yaml"
    sysfile.write_text(yaml.safe_dump(make_system(2).model_dump(mode="json", exclude_none=True)))
    w = tmp / "w.yaml"
    w.write_text(yaml.safe_dump({"name": "mix", "models": [
        {"name": "cnn", "onnx": str(cnn), "frame": [1, 3, 32, 32], "precision": "fp32", "rate": 50},
        {"name": "chat", "llm": "smollm2", "precision": "int4", "rate": 5, "prompt_tokens": 32, "output_tokens": 8,
         "batch": 2}]}))
    placed = api.place(w, sysfile)
    # every way of running the CNN, so that requests take each: whole on die0, whole on die1, split over both
    n = len(load_onnx(cnn, frame_shape=(1, 3, 32, 32)).nodes)
    deps = [d for d in placed.placement.deployments if d.model == "chat"]
    deps += [Deployment(model="cnn", kind="cv", label=f"whole on {d}", dies=[d], pieces=[Piece(die=d, start=0, end=n)],
                         precision="fp32", rate=10.0) for d in ("die0", "die1")]
    deps.append(Deployment(model="cnn", kind="cv", label="split", dies=["die0", "die1"],
                           pieces=[Piece(die="die0", start=0, end=4), Piece(die="die1", start=4, end=n)],
                           precision="fp32", rate=10.0))
    placement = placed.placement.model_copy(update={"deployments": deps})
    with WorkloadDevice(placement) as dev:
        yield {"dev": dev, "cnn": cnn, "placement": placement}


def test_every_way_a_vision_request_goes_gives_the_interpreters_output(setup):
    dev = setup["dev"]
    model = load_onnx(setup["cnn"], frame_shape=(1, 3, 32, 32))
    frames = [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(9)]
    futures = [dev.submit("cnn", f) for f in frames]
    for f, x in zip(futures, frames):
        want = CVProgram(model).run({"x": torch.from_numpy(x)})["y"].numpy()
        assert np.array_equal(f.result(60)["y"], want)
    done = [r.done for r in dev.routes["cnn"]]
    assert sum(done) == 9 and all(done), done  # nine requests submitted at once: every way took some


def test_the_llm_answers_on_its_die_while_frames_stream(setup):
    dev = setup["dev"]
    from chipfuse.runtime.tokenizer import load_tokenizer
    from chipfuse.runtime.workload import llm_weights

    tok = load_tokenizer(llm_weights("smollm2"))
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
    answers = [dev.submit("chat", list(ids), max_tokens=12, stop=[tok.eos_token_id]) for _ in range(3)]
    frames = [dev.submit("cnn", np.zeros((1, 3, 32, 32), np.float32)) for _ in range(6)]
    texts = [tok.decode(a.result(120)["tokens"].tolist()) for a in answers]
    assert all("Paris" in t for t in texts) and len(set(texts)) == 1  # batched together, the same greedy answer
    assert all(f.result(60)["y"].shape == (1, 5) for f in frames)
    with pytest.raises(ChipfuseError, match="does not fit the context"):
        dev.submit("chat", list(range(10)), max_tokens=10_000).result(60)
    with pytest.raises(ChipfuseError, match="no model 'nope'"):
        dev.submit("nope", [1])


def test_a_short_paced_run_measures_every_model(setup):
    res = api.run_workload(device=setup["dev"], seconds=3, load=0.5)
    rows = {r.model: r for r in res.rows}
    assert set(rows) == {"cnn", "chat"}
    assert rows["cnn"].requests > 0 and rows["cnn"].measured > 0 and rows["cnn"].errors == 0
    assert rows["chat"].offered == pytest.approx(0.5 * rows["chat"].predicted)
    with pytest.raises(ChipfuseError, match="--seconds"):
        api.run_workload(device=setup["dev"], seconds=0)
