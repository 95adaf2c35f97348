"""The prepared-weights cache: a warm stage holds exactly the cold one's tensors; bad or stale files are rebuilt."""

import os

import pytest
import torch

from chipfuse.quant.formats import get_format
from chipfuse.runtime import file_cache, prepared
from chipfuse.runtime.stage import Segment, StageModel
from chipfuse.runtime.weights import open_weights, wanted_names


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-layer Llama folder (untied) and a tied Qwen2 one, made with transformers."""
    import transformers

    out = {}
    for kind, tied in (("llama", False), ("qwen2", True)):
        cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
        cfg = cls[0](vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied, rope_theta=10000.0)
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(kind)
        cls[1](cfg).eval().save_pretrained(folder, safe_serialization=True)
        out[kind] = folder
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHIPFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CHIPFUSE_NO_CACHE", raising=False)
    return tmp_path / "cache" / "prepared"


def _stage(folder, blocks, layer, head, built=None):
    """prepared.stage for blocks of a tiny model: (model, "hit"/"miss"/"off")."""
    from chipfuse.runtime.device import resolve_model

    path, cfg = resolve_model(folder)
    blocks = (blocks[0], cfg.num_layers + 2 if blocks[1] is None else blocks[1])
    fmt, head_fmt = get_format(layer), get_format(head)
    overrides = {1: get_format("int8")}  # a per-block format: layer 1 held at int8

    def build():
        if built is not None:
            built.append(blocks)
        w = open_weights(path, cfg).load(wanted_names(cfg, range(*blocks)))
        return StageModel(cfg, w, blocks, fmt, 64, "fp16", head_fmt, layer_formats=overrides)

    return prepared.stage(path, cfg, blocks, fmt, head_fmt, overrides, None, 64, "fp16", build)


def _run(model, inp):
    """Prefill 7 tokens then decode 3, Python path and compiled path as the stage chooses."""
    outs = [model.forward(inp[:7], [Segment(0, 0, 7)])]
    for i in range(3):
        outs.append(model.forward(inp[7 + i: 8 + i], [Segment(0, 7 + i, 1)]))
    return outs


@pytest.mark.parametrize("kind,blocks,layer,head", [
    ("llama", (0, None), "int4-g32", "int8"), ("llama", (0, 2), "int8", "int4-g32"),
    ("llama", (2, None), "fp8-e4m3", "fp8-e5m2"), ("qwen2", (0, None), "bf16", "int8"),
    ("qwen2", (0, 3), "fp16", "fp32"), ("qwen2", (0, None), "int4-g64-sym", "bf16")])
def test_warm_stage_holds_the_same_tensors_and_computes_the_same(tiny, cache, kind, blocks, layer, head):
    cold, how = _stage(tiny[kind], blocks, layer, head)
    assert how == "miss" and len(list(cache.glob("*.safetensors"))) == 1
    warm, how = _stage(tiny[kind], blocks, layer, head)
    assert how == "hit"
    a, la = cold.prepared_state()
    b, lb = warm.prepared_state()
    assert la == lb and a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k
    assert warm.resident_weight_bytes() == cold.resident_weight_bytes()
    inp = torch.randint(0, 300, (10,)) if blocks[0] == 0 else torch.randn(10, 64)
    for x, y in zip(_run(cold, inp), _run(warm, inp)):
        assert torch.equal(x, y)


def test_corrupt_cache_file_is_rebuilt_with_a_warning(tiny, cache):
    _stage(tiny["llama"], (0, None), "int4-g32", "int8")
    (f,) = cache.glob("*.safetensors")
    good = f.read_bytes()
    for bad in (good[: len(good) // 2], b"\x00" * 64, good[:8] + b"{not json" + good[17:]):
        f.write_bytes(bad)
        built = []
        with pytest.warns(UserWarning, match="ignoring cached prepared weights"):
            _, how = _stage(tiny["llama"], (0, None), "int4-g32", "int8", built)
        assert how == "miss" and built and f.stat().st_size == len(good)  # rewritten whole
    _, how = _stage(tiny["llama"], (0, None), "int4-g32", "int8")
    assert how == "hit"


def test_changed_source_or_format_misses_the_cache(tiny, cache):
    _stage(tiny["llama"], (0, None), "int4-g32", "int8")
    assert _stage(tiny["llama"], (0, None), "int4-g32", "int8")[1] == "hit"
    assert _stage(tiny["llama"], (0, None), "int4-g64", "int8")[1] == "miss"  # other format: other key
    (st,) = tiny["llama"].glob("*.safetensors")
    before = file_cache.source_fingerprint(tiny["llama"])
    s = st.stat()
    os.utime(st, ns=(s.st_atime_ns, s.st_mtime_ns + 1_000_000))  # same bytes, touched: treated as new
    try:
        assert file_cache.source_fingerprint(tiny["llama"]) != before
        assert _stage(tiny["llama"], (0, None), "int4-g32", "int8")[1] == "miss"
    finally:
        os.utime(st, ns=(s.st_atime_ns, s.st_mtime_ns))


def test_fingerprint_sees_the_ends_of_a_file_with_the_same_size_and_mtime(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"a" * (3 << 20))
    s = p.stat()
    a = file_cache.file_fingerprint(p)
    p.write_bytes(b"a" * ((3 << 20) - 1) + b"b")
    os.utime(p, ns=(s.st_atime_ns, s.st_mtime_ns))
    assert file_cache.file_fingerprint(p) != a


def test_no_cache_env_disables_it(tiny, cache, monkeypatch):
    monkeypatch.setenv("CHIPFUSE_NO_CACHE", "1")
    built = []
    assert _stage(tiny["llama"], (0, None), "int8", "int8", built)[1] == "off"
    assert _stage(tiny["llama"], (0, None), "int8", "int8", built)[1] == "off"
    assert len(built) == 2 and not cache.exists()


def test_cache_files_are_written_atomically(tmp_path):
    """A writer that dies half way leaves neither a file under the final name nor a temporary one."""
    dest = tmp_path / "prepared" / "x.safetensors"

    def half(tmp):
        tmp.write_bytes(b"half a file")
        raise KeyboardInterrupt  # as if killed mid-write

    with pytest.raises(KeyboardInterrupt):
        file_cache.atomic_write(dest, half)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    file_cache.atomic_write(dest, lambda tmp: tmp.write_bytes(b"whole"))
    assert dest.read_bytes() == b"whole" and list(dest.parent.iterdir()) == [dest]
    assert dest.stat().st_mode & 0o044  # readable like any cache file, not mkstemp's 0600


def test_unwritable_cache_only_warns(tiny, cache, monkeypatch):
    def refuse(dest, write):
        raise PermissionError("read-only")

    monkeypatch.setattr(prepared, "atomic_write", refuse)
    with pytest.warns(UserWarning, match="could not cache"):
        model, how = _stage(tiny["llama"], (0, None), "int8", "int8")
    assert how == "miss" and model.layers


@pytest.mark.slow
def test_device_tokens_identical_cold_and_warm(smollm2_gguf, tmp_path, monkeypatch, system="talk-4die-d2d"):
    """Real workers, an empty cache: cold start (miss), warm start (hit) and no cache (dies started one
    interpreter each) give the same greedy tokens."""
    from chipfuse.api import open_device
    from chipfuse.frontends.model_files import cache_dir

    real = cache_dir()
    tmp = tmp_path / "cache"
    tmp.mkdir()
    for sub in ("ext", "tokenizers"):  # share the compiled kernel and tokenizer; only the weights start empty
        if (real / sub).exists():
            (tmp / sub).symlink_to(real / sub)
    monkeypatch.setenv("CHIPFUSE_CACHE", str(tmp))
    monkeypatch.setenv("CHIPFUSE_SMOLLM2_GGUF", str(smollm2_gguf))
    prompt = "The three primary colours are"
    runs = {}
    for label in ("cold", "warm", "off"):
        if label == "off":  # no cache, and one interpreter per die instead of the forking launcher
            monkeypatch.setenv("CHIPFUSE_NO_CACHE", "1")
            monkeypatch.setenv("CHIPFUSE_FORK_WORKERS", "0")
        with open_device(system, context=256) as dev:
            g = dev.submit(prompt, 12, stop_ids=set())
            list(g)
            runs[label] = (g.tokens, [i["cache"] for i in dev.worker_info])
    n = len(runs["cold"][1])
    assert runs["cold"][1] == ["miss"] * n and runs["warm"][1] == ["hit"] * n and runs["off"][1] == ["off"] * n
    assert runs["cold"][0] == runs["warm"][0] == runs["off"][0]
    assert len(list((tmp / "prepared").glob("*.safetensors"))) == n


@pytest.mark.parametrize("pad", range(0, 64, 7))
def test_cached_tensors_sit_where_the_packed_kernels_can_load_them(tiny, cache, pad):
    """The file's header length moves every tensor's offset; whatever it is, the loaded tensors are aligned and the
    INT8 packed GEMM (which crashed on an odd address) runs on a prefill-sized input."""
    from chipfuse.frontends import load_model_config

    cfg = load_model_config(tiny["llama"])
    w = open_weights(tiny["llama"], cfg).load(wanted_names(cfg, range(0, 5)))
    fmt = get_format("int8")
    model = StageModel(cfg, w, (0, 5), fmt, 64, "fp16")
    key = {"pad": "x" * pad}
    path = cache / f"aligned{pad}.safetensors"
    cache.mkdir(parents=True, exist_ok=True)
    prepared.save(model, path, key)
    warm = prepared.load(path, key, cfg, (0, 5), fmt, 64, "fp16", None)
    for layer in warm.layers:
        for lin in layer.linears():
            assert all(t.data_ptr() % prepared.ALIGN_BYTES == 0 for t in lin.state().values() if t.dim())
    ids = torch.arange(40) % cfg.vocab_size
    assert torch.equal(warm.forward(ids, [Segment(0, 0, 40)]), model.forward(ids, [Segment(0, 0, 40)]))
