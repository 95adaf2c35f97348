"""The compiled decode path gives what the Python path gives, for every format and KV precision."""

import pytest
import torch

from chipfuse.runtime import fastpath

pytestmark = pytest.mark.skipif(fastpath.load() is None, reason="no C++ toolchain to build the decode path")


def _folder(tmp_path, model_type):
    import transformers

    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[model_type]
    cfg = cls[0](vocab_size=300, hidden_size=128, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rope_theta=10000.0,
                 tie_word_embeddings=False)
    torch.manual_seed(0)
    cls[1](cfg).eval().save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


@pytest.mark.parametrize("model_type,precision,kv", [
    ("llama", "fp32", "fp32"), ("llama", "int4-g32", "fp16"), ("llama", "int4-g64-sym", "bf16"),
    ("llama", "int8", "fp16"), ("llama", "bf16", "bf16"), ("llama", "fp8-e4m3", "fp16"),
    ("qwen2", "int8", "fp32"), ("qwen3", "fp32", "fp16")])
def test_compiled_decode_matches_python_path(tmp_path, model_type, precision, kv):
    from chipfuse.runtime.device import resolve_model
    from chipfuse.runtime.reference import reference_model
    from chipfuse.runtime.stage import Segment

    path, cfg = resolve_model(_folder(tmp_path, model_type))
    fast = reference_model(path, cfg, precision, "fp32", context=64, kv_precision=kv)
    slow = reference_model(path, cfg, precision, "fp32", context=64, kv_precision=kv)
    slow._fast_tried = True  # never build the compiled path: the Python path throughout
    ids = torch.randint(0, 300, (20,))
    for m in (fast, slow):  # two sequences: prompts of 7 and 12 tokens
        m.forward(ids[:7], [Segment(0, 0, 7)])
        m.forward(ids[7:19], [Segment(1, 0, 12)])
    for step in range(6):  # both sequences decode together, at different positions
        tok = ids[step: step + 2]
        segs = [Segment(0, 7 + step, 1), Segment(1, 12 + step, 1)]
        a, b = fast.forward(tok, segs), slow.forward(tok, segs)
        scale = b.abs().max()
        assert ((a - b).abs().max() / scale).item() < 1e-4, step  # only the order of float sums differs
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert fast._fast is not None and slow._fast is None
    # the caches they wrote agree as well
    for (ka, va), (kb, vb) in zip(fast.cache[1], slow.cache[1]):
        assert torch.allclose(ka.float(), kb.float(), atol=2e-2) and torch.allclose(va.float(), vb.float(), atol=2e-2)


@pytest.mark.parametrize("n,k,t", [(7, 37, 1), (64, 576, 2), (130, 200, 3)])
def test_int8_decode_kernel_equals_fp32_on_the_held_codes(n, k, t):
    """The compiled INT8 GEMV (any N, K, including tails) computes x @ (q * s)^T in FP32."""
    from chipfuse.quant.formats import get_format
    from chipfuse.runtime.kernels import make_linear

    g = torch.Generator().manual_seed(n)
    lin = make_linear(torch.randn(n, k, generator=g), get_format("int8"))
    x = torch.randn(t, k, generator=g)
    want = x.double() @ (lin.q.double() * lin.s.double()[:, None]).t()
    got = fastpath.load().mm_bytes(x, lin.q, lin.s, 1.0)
    assert got.dtype == torch.float32 and got.shape == (t, n)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(lin(x), got)  # decode-sized calls go through it


@pytest.mark.parametrize("name", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_decode_kernel_widens_every_code_exactly(name):
    """Every finite FP8 code (subnormals and negatives included), widened by moving bits, equals
    PyTorch's float8 -> float conversion; a whole layer sums in FP32."""
    from chipfuse.quant.formats import get_format
    from chipfuse.runtime.kernels import make_linear

    dtype = getattr(torch, get_format(name).dtype)
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    codes[~torch.isfinite(codes)] = 0.0  # NaN/inf codes: our quantizer never writes them
    w = codes.reshape(16, 16).to(dtype)
    held = fastpath.load().mm_bytes(torch.eye(16), w, w, 1.0).t()  # column j of the identity reads weight column j
    assert torch.equal(held, w.float())
    g = torch.Generator().manual_seed(3)
    lin = make_linear(torch.randn(67, 99, generator=g), get_format(name))
    x = torch.randn(2, 99, generator=g)
    want = x.double() @ (lin.w.double() * lin.scale).t()
    assert torch.allclose(lin(x).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_decode_kernel_equals_fp32_on_the_held_values(dtype):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(45, 83, generator=g).to(dtype)  # N, K not multiples of the vector widths
    x = torch.randn(3, 83, generator=g)
    got = fastpath.load().mm_bytes(x, w, w, 1.0)
    assert torch.allclose(got.double(), x.double() @ w.double().t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lpad,pad", [(0, 0), (32, 0), (0, 64)])
def test_a_shards_int4_cut_sums_a_prompt_as_it_sums_each_token(lpad, pad):
    """A tensor shard's o / down cut (Int4Partial): a prompt's rows (one fp32 GEMM on the cut expanded once) give
    the same unrounded sums as each row alone (the decode GEMV), and both the cut's dequantised values."""
    from chipfuse.quant.formats import get_format
    from chipfuse.quant.quantize import quantize_int4
    from chipfuse.runtime.kernels import Int4Partial

    g = torch.Generator().manual_seed(lpad + pad)
    n, k = 48, 128
    codes = quantize_int4(torch.randn(n, lpad + k + pad, generator=g), 32, False)
    lin = Int4Partial(codes, get_format("int4-g32"), k, lpad)
    x = torch.randn(20, k, generator=g)
    prompt = lin(x)
    rows = torch.cat([lin(x[i:i + 1]) for i in range(len(x))])
    w = ((codes.q.float().view(n, -1, 32) - 8) * codes.scale.to(torch.bfloat16).float()[..., None]
         + codes.zero.to(torch.bfloat16).float()[..., None]).reshape(n, -1)[:, lpad: lpad + k]
    want = x.to(torch.bfloat16).double() @ w.double().t()
    assert prompt.dtype == torch.float32 and prompt.shape == (20, n)
    assert torch.allclose(prompt, rows, rtol=1e-5, atol=1e-5)
    assert torch.allclose(prompt.double(), want, rtol=1e-5, atol=1e-4)
