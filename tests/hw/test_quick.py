"""A device from a handful of facts plans like the full system file it stands for, and says what it borrowed."""

from __future__ import annotations

import pytest

from chipfuse.compile.compiler import compile_plan
from chipfuse.errors import SpecError
from chipfuse.frontends import load_model_config
from chipfuse.hw.load import load_system

FIVE_LINES = """\
device: orange-pi-5-plus
tops: {int8: 0.8448, fp16: 0.4224, fp32: 0.2112}
dram: {bandwidth_gb_per_s: 33.792, capacity_gib: 16}
family: rk3588
engine: llama.cpp
"""


def _decode(system, model: str = "llama-2-7b", precision: str = "q4_0") -> float:
    return compile_plan(load_model_config(model), system, precision, context=2048, prompt_tokens=256,
                        split="pipeline").prediction.decode_tokens_per_s


def test_a_device_described_in_five_lines_plans_as_its_preset_does(tmp_path):
    """The RK3588's spec-sheet facts with its family's fitted factors predict what the hand-written preset does."""
    p = tmp_path / "device.yaml"
    p.write_text(FIVE_LINES)
    assert len(FIVE_LINES.strip().splitlines()) == 5
    s = load_system(p)
    rk = load_system("rk3588")
    ce = rk.die_type(rk.die_names[0]).compute_efficiency
    assert f"borrowed compute efficiency {ce:g}" in s.description and "preset rk3588" in s.description
    assert _decode(s) == pytest.approx(_decode(load_system("rk3588")), rel=0.01)


def test_a_cluster_of_n_devices_over_a_named_link(tmp_path):
    p = tmp_path / "cluster.yaml"
    p.write_text("device: rpi5\ntops: {int8: 0.6144, fp16: 0.3072, fp32: 0.1536}\n"
                 "dram: {bandwidth_gb_per_s: 17.064, capacity_gib: 8}\nfamily: Arm SBC CPU\ncount: 4\n"
                 "link: ethernet-1g\n")
    s = load_system(p)
    assert len(s.dies) == 4 and sum(lk.kind == "ethernet-1g" for lk in s.links) == 4
    assert "the Arm SBC CPU family's fit in hw/fitted_factors.yaml" in s.description
    assert _decode(s) == pytest.approx(_decode(load_system("cluster-4x-rpi5-1gbe")), rel=0.01)


def test_without_a_family_the_defaults_are_said_to_be_assumed(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("device: npu\ntops: {int8: 26}\ndram: {bandwidth_gb_per_s: 51.2, capacity_gib: 8}\n")
    s = load_system(p)
    assert "defaults (assumed: no family given)" in s.description
    assert _decode(s, "llama-3.2-1b", "int8") > 0


@pytest.mark.parametrize("text, words", [
    ("device: x\ntops: {int8: 1}\ndram: {bandwidth_gb_per_s: 3, capacity_gib: 1}\nfamly: rk3588\n",
     "famly (did you mean family?)"),
    ("device: x\ntops: {int8: 1}\ndram: {bandwidth_gb_per_s: 3, capacity_gib: 1}\nfamily: rk358\n", "did you mean rk3588"),
    ("device: x\ntops: {int8: 1}\ndram: {bandwidth_gb_per_s: 3, capacity_gib: 1}\ncount: 2\nlink: usb\n",
     "a cluster of devices joins over ethernet-1g"),
    ("device: x\ntops: {int9: 1}\ndram: {bandwidth_gb_per_s: 3, capacity_gib: 1}\n", "tops"),
    ("device: x\ntops: {int8: 1}\ndram: {bandwidth_gb_per_s: -3, capacity_gib: 1}\n", "dram.bandwidth_gb_per_s"),
    ("device: x y\ntops: {int8: 1}\ndram: {bandwidth_gb_per_s: 3, capacity_gib: 1}\n", "device"),
])
def test_a_bad_device_file_is_one_message(tmp_path, text, words):
    p = tmp_path / "d.yaml"
    p.write_text(text)
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_system(p)


def test_without_a_family_an_engine_measured_in_one_family_borrows_that_family(tmp_path):
    """RKLLM was measured on Rockchip NPUs only: five lines naming the engine borrow that family's fit and say so;
    llama.cpp runs in many families, so naming it alone keeps the defaults and says which families to choose from."""
    p = tmp_path / "npu.yaml"
    p.write_text("device: my-rk-board\ntops: {int8: 6}\ndram: {bandwidth_gb_per_s: 33.8, capacity_gib: 8}\n"
                 "engine: RKLLM\n")
    s = load_system(p)
    assert "Rockchip NPU (RKLLM) family's fit" in s.description and "only family measured under" in s.description
    named = tmp_path / "named.yaml"
    named.write_text(p.read_text() + "family: Rockchip NPU (RKLLM)\n")
    assert _decode(s, "qwen2.5-1.5b", "int8") == pytest.approx(_decode(load_system(named), "qwen2.5-1.5b", "int8"))
    p.write_text(p.read_text().replace("RKLLM", "llama.cpp"))
    s = load_system(p)
    assert "defaults (assumed: no family given; the engine 'llama.cpp' was measured in several families" in s.description
    p.write_text(p.read_text().replace("llama.cpp", "my-own-engine"))
    assert "no family was measured under the engine 'my-own-engine'" in load_system(p).description
