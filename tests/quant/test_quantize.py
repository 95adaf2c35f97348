"""Quantizers: round trips are exact, errors stay inside each format's bound, packed bytes match the planner."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chipfuse.quant.formats import FORMATS, RUNNABLE, get_format
from chipfuse.quant.quantize import (
    QuantizedInt4,
    dequantize_int4,
    fake_quantize,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
)
from chipfuse.runtime.kernels import make_embedding, make_linear

shapes = st.tuples(st.integers(1, 6), st.sampled_from([32, 64, 96, 128, 192, 256]))


def _weights(shape, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 10**6), st.floats(1e-3, 50), st.sampled_from([32, 64, 128]), st.booleans())
def test_int4_error_within_half_a_step(shape, seed, scale, group, symmetric):
    w = _weights(shape, seed, scale)
    t = quantize_int4(w, group, symmetric)
    assert int(t.q.min()) >= 0 and int(t.q.max()) <= 15
    deq = dequantize_int4(t)[:, : w.shape[1]]
    step = t.scale.repeat_interleave(group, 1)[:, : w.shape[1]]
    assert torch.all((w - deq).abs() <= step / 2 * (1 + 1e-5) + 1e-6)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 10**6), st.floats(1e-3, 50))
def test_int8_error_within_half_a_step(shape, seed, scale):
    w = _weights(shape, seed, scale)
    q, s = quantize_int8(w)
    assert torch.all((w - q.float() * s[:, None]).abs() <= s[:, None] / 2 * (1 + 1e-5))


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 10**6), st.floats(1e-2, 50))
def test_fp8_e4m3_relative_error_bound(shape, seed, scale):
    w = _weights(shape, seed, scale)
    v, s = quantize_fp8(w, get_format("fp8-e4m3"))
    deq = v.float() * s
    normal = (w / s).abs() >= 2.0 ** -6  # e4m3's smallest normal
    # 3 mantissa bits: half an ulp is 2^-4 of the value
    assert torch.all(((w - deq).abs() <= w.abs() * 2.0 ** -4 * (1 + 1e-5))[normal])


def test_asymmetric_g32_reproduces_a_q4_1_grid_exactly():
    """Values already on an asymmetric g32 grid (as in SmolLM2's Q4_1 file) survive unchanged."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=g).float()
    q[:, ::32] = 0
    q[:, 1::32] = 15  # each group spans the full range
    d = torch.rand(8, 2, generator=g) + 0.1
    m = -torch.rand(8, 2, generator=g)
    w = (q.view(8, 2, 32) * d[..., None] + m[..., None]).view(8, 64)
    assert torch.allclose(fake_quantize(w, get_format("int4-g32")), w, atol=1e-6)


def test_two_per_byte_packing_round_trips_exactly():
    w = torch.randn(50, 128)
    for name in ("int4-g32", "int4-g128-sym"):
        f = get_format(name)
        emb = make_embedding(w, f)
        assert emb.packed.dtype == torch.uint8 and emb.packed.shape == (50, 64)
        ids = torch.arange(50)
        assert torch.allclose(emb.lookup(ids), fake_quantize(w, f), atol=2e-3 * w.abs().max())


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16", "fp8-e4m3", "fp8-e5m2", "int8", "int4-g32", "int4-g64", "int4-g128"])
def test_planner_bytes_are_the_bytes_the_runtime_holds(name):
    f = FORMATS[name]
    lin = make_linear(torch.randn(256, 512), f)
    assert lin.resident_bytes == f.matrix_bytes(256, 512)


def test_bits_per_weight():
    assert get_format("int4-g32-sym").bits_per_weight() == pytest.approx(4.5)  # GGUF Q4_0's size
    assert get_format("int4-g32").bits_per_weight() == pytest.approx(5.0)  # Q4_1's size
    assert get_format("int4-g128-sym").bits_per_weight() == pytest.approx(4.125)
    assert get_format("int8").bits_per_weight(4096) == pytest.approx(8 + 16 / 4096)


def _correlated_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # correlated inputs with a few strong channels, as in real activations
    base = torch.randn(2048, 32, generator=g)
    x = base @ torch.randn(32, 256, generator=g) + 0.1 * torch.randn(2048, 256, generator=g)
    x[:, :8] *= 6
    return x, torch.randn(64, 256, generator=g)


@pytest.mark.parametrize("name", ["int4-g128", "int4-g64-sym", "int8"])
def test_gptq_reconstructs_layer_outputs_better_than_rtn(name):
    from chipfuse.quant.gptq import gptq_int4, gptq_quantize
    from chipfuse.quant.quantize import dequantize

    x, w = _correlated_inputs()
    h = x.t() @ x / x.shape[0]
    f = get_format(name)
    err_rtn = ((x @ (fake_quantize(w, f) - w).t()) ** 2).mean()
    deq = gptq_int4(w, h, f) if f.precision == "int4" else dequantize(gptq_quantize(w, h, f))
    err_gptq = ((x @ (deq - w).t()) ** 2).mean()
    assert err_gptq < 0.8 * err_rtn


def test_clipped_int4_grid_never_rounds_worse_than_the_full_range():
    from chipfuse.quant.quantize import dequantize_int4, int4_codes, int4_grid, int4_grid_search

    x, w = _correlated_inputs(2)
    w[:, 5] *= 8  # an outlier column
    cw = (x * x).mean(0)
    for sym in (False, True):
        errs = []
        for scale, zero, low in (int4_grid(w, 64, sym), int4_grid_search(w, 64, sym, cw)):
            g = w.reshape(64, 4, 64)
            q = int4_codes(g, scale[..., None], low[..., None], sym, shift=8 if sym else 0)
            deq = dequantize_int4(QuantizedInt4(q.reshape(64, 256).int(), scale, zero, 64))
            errs.append(float((((w - deq) ** 2) * cw).sum()))
        assert errs[1] <= errs[0]


def test_checkpoint_round_trips_int4_and_int8_codes_exactly(tmp_path):
    from chipfuse.quant.checkpoint import checkpoint_recipe, load_quantized, save_quantized
    from chipfuse.quant.formats import Recipe
    from chipfuse.quant.quantize import QuantizedInt8, quantize_int8

    w = torch.randn(48, 200)
    q4 = quantize_int4(w, 64, False)  # 200 columns: padded to 256
    q8 = QuantizedInt8(*quantize_int8(w))
    recipe = Recipe(get_format("int4-g64"), get_format("int8"), ((2, "int8"),))
    path = tmp_path / "codes.safetensors"
    save_quantized(path, {"layers.0.o_proj": q4, "layers.1.o_proj": q8}, recipe, {"layers": 2})
    back = load_quantized(path)
    assert torch.equal(back["layers.0.o_proj"].q, q4.q) and back["layers.0.o_proj"].group == 64
    assert torch.equal(back["layers.0.o_proj"].scale, q4.scale) and torch.equal(back["layers.0.o_proj"].zero, q4.zero)
    assert torch.equal(back["layers.1.o_proj"].q, q8.q) and torch.equal(back["layers.1.o_proj"].scale, q8.scale)
    assert checkpoint_recipe(path) == recipe


def test_every_family_has_one_codec_and_one_kernel_and_every_format_names_its_kernel_kind():
    """The registry is whole: a format's family finds its codec and kernel, and the layer it builds
    hands the compiled path the kind code the format's entry states."""
    from chipfuse.quant.formats import FAMILIES
    from chipfuse.quant.quantize import CODECS
    from chipfuse.runtime.kernels import KERNELS

    assert set(FAMILIES.values()) == set(CODECS) == set(KERNELS)
    w = torch.randn(16, 96)
    for f in FORMATS.values():
        if f.block is not None:  # llama.cpp's GGUF types: planned and predicted, never held (test_gguf_mix.py)
            assert not f.runnable and f.kind < 0, f.name
            continue
        assert f.dtype and f.kind >= 0, f.name
        assert make_linear(w, f).cpp_spec()[0] == f.kind


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_codes_survive_a_checkpoint_and_dequantize_to_what_the_format_keeps(tmp_path, name):
    from chipfuse.quant.checkpoint import load_quantized, save_quantized
    from chipfuse.quant.formats import Recipe
    from chipfuse.quant.quantize import dequantize, quantize

    f = get_format(name)
    w = _weights((12, 80), 5, 0.1)
    codes = quantize(w, f)
    assert torch.equal(dequantize(codes)[:, :80], fake_quantize(w, f))
    save_quantized(tmp_path / "c.safetensors", {"layers.0.o_proj": codes}, Recipe.of(f), {"model": "t"})
    back = load_quantized(tmp_path / "c.safetensors")["layers.0.o_proj"]
    assert type(back) is type(codes)
    assert torch.equal(dequantize(back), dequantize(codes))
