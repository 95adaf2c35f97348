"""Bad model inputs (found by fuzzing): each gives one SpecError naming the file, the field and the fix,
never a traceback, a hang or a silently wrong model."""

import json
import struct
import time

import pytest

from chipfuse.errors import SpecError
from chipfuse.frontends import alias_of, catalogue, load_model_config, resolve_name
from chipfuse.frontends.config import ModelConfig

QWEN = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}


@pytest.fixture
def write_config(tmp_path):
    """Write a config.json (text, bytes or a mapping changed from QWEN) and return its path."""
    def write(content=None, **changes):
        p = tmp_path / "m" / "config.json"
        p.parent.mkdir(exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            cfg = {**QWEN, **changes}
            p.write_text(json.dumps({k: v for k, v in cfg.items() if v is not ...}))
        return p
    return write


def refused(path, *needles: str) -> str:
    """The SpecError message for loading path, which must name the file and contain every needle."""
    with pytest.raises(SpecError) as e:
        load_model_config(path)
    msg = str(e.value)
    assert str(path) in msg and "Traceback" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


# --- config.json: the file itself -----------------------------------------------------------------

def test_non_utf8_bytes(write_config):
    refused(write_config(b'{"model_type": "llama\xff"}'), "not UTF-8")


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting(write_config, depth):
    refused(write_config("[" * depth + "]" * depth))
    refused(write_config('{"hidden_size": ' + "[" * depth + "]" * depth + "}"))


def test_folder_without_config_json(tmp_path):
    (tmp_path / "empty-model").mkdir()
    refused(tmp_path / "empty-model", "without config.json")
    refused(str(tmp_path / "empty-model"), "without config.json")


def test_huge_file_is_refused_before_reading(write_config):
    refused(write_config(json.dumps(QWEN) + " " * (5 << 20)), "too big", "4,194,304")


@pytest.mark.parametrize("top", ["[]", "[1, 2]", "896", "\"llama\"", "null", "true"])
def test_top_level_not_an_object(write_config, top):
    refused(write_config(top), "top level", "one JSON object")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens(write_config, token):
    refused(write_config(json.dumps(QWEN).replace("896", token)), token, "finite number")


def test_overflowing_number_literals(write_config):
    refused(write_config(json.dumps(QWEN).replace("896", "1e400")), "hidden_size")
    refused(write_config(json.dumps(QWEN).replace("896", "1" + "0" * 5000)))


def test_duplicate_keys(write_config):
    refused(write_config('{"num_hidden_layers": 2, ' + json.dumps(QWEN)[1:]), "num_hidden_layers", "twice")


# --- config.json: field types and values ------------------------------------------------------------

@pytest.mark.parametrize("value", ["896", True, 896.5, 896.0, None, [896], {"v": 896}])
def test_strict_integer_types(write_config, value):
    refused(write_config(hidden_size=value), "hidden_size", "must be an integer from 1 to")


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "vocab_size", "max_position_embeddings", "head_dim"])
@pytest.mark.parametrize("value", [0, -1])
def test_zero_and_negative_sizes(write_config, field, value):
    refused(write_config(**{field: value}), field, "must be an integer from 1")


def test_booleans_are_not_numbers(write_config):
    refused(write_config(num_hidden_layers=True), "num_hidden_layers is True")
    refused(write_config(tie_word_embeddings=1), "tie_word_embeddings", "true or false")


@pytest.mark.parametrize("field,value,limit", [("num_hidden_layers", 10_000, "1,024"),
                                               ("num_hidden_layers", 2**40, "1,024"),
                                               ("hidden_size", 2**40, "131,072"),
                                               ("intermediate_size", 10**7, "1,048,576"),
                                               ("vocab_size", 10**9, "8,388,608"),
                                               ("max_position_embeddings", 10**12, "16,777,216"),
                                               ("head_dim", 10**6, "16,384")])
def test_absurd_sizes_are_refused_at_once_with_the_limit(write_config, field, value, limit):
    t0 = time.perf_counter()
    refused(write_config(**{field: value}), field, limit)
    assert time.perf_counter() - t0 < 1.0


def test_heads_must_divide_hidden_unless_head_dim_is_given(write_config):
    refused(write_config(num_attention_heads=15, num_key_value_heads=3), "not a multiple of num_attention_heads 15",
            "give head_dim")
    assert load_model_config(write_config(num_attention_heads=15, num_key_value_heads=3, head_dim=64)).head_dim == 64


def test_kv_heads(write_config):
    refused(write_config(num_key_value_heads=0), "num_key_value_heads is 0")
    refused(write_config(num_key_value_heads=4), "not a multiple of num_key_value_heads 4")
    assert load_model_config(write_config(num_key_value_heads=None)).num_kv_heads == 14  # null: full attention
    assert load_model_config(write_config(num_key_value_heads=...)).num_kv_heads == 14  # absent: the same
    refused(write_config(num_attention_heads=0), "num_attention_heads is 0")


@pytest.mark.parametrize("window", [0, -4096, "4096", 4096.0, 2**40])
def test_sliding_window_must_be_positive_tokens(write_config, window):
    refused(write_config(model_type="mistral", sliding_window=window), "sliding_window")


def test_layer_types(write_config):
    gemma = {**QWEN, "model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 4096}
    ok = ["sliding_attention", "full_attention"] * 2
    assert load_model_config(write_config(json.dumps({**gemma, "layer_types": ok}))).window(0) == 4096
    refused(write_config(json.dumps({**gemma, "layer_types": ok[:3]})), "layer_types is 3 entries", "4 layers")
    refused(write_config(json.dumps({**gemma, "layer_types": [*ok[:3], "chunked_attention"]})),
            "unknown entries 'chunked_attention'")
    refused(write_config(json.dumps({**gemma, "layer_types": "sliding_attention"})), "layer_types is a string")
    no_window = {k: v for k, v in gemma.items() if k != "sliding_window"}
    refused(write_config(json.dumps({**no_window, "layer_types": ok})), "sliding_window is not given")


@pytest.mark.parametrize("field", ["rope_theta", "rms_norm_eps"])
@pytest.mark.parametrize("value", [0, -1.0, "1e4", True, 1e400])
def test_rope_theta_and_eps_finite_positive(write_config, field, value):
    text = json.dumps({**QWEN, field: value}) if value != 1e400 else json.dumps(QWEN)[:-1] + f', "{field}": 1e400}}'
    refused(write_config(text), field, "finite number above 0")


def test_eps_below_one_and_int_theta_accepted(write_config):
    refused(write_config(rms_norm_eps=1.5), "rms_norm_eps")
    assert load_model_config(write_config(rope_theta=1000000)).rope_theta == 1e6


@pytest.mark.parametrize("text_config", [None, [], "x", 3])
def test_text_config_not_a_mapping(write_config, text_config):
    refused(write_config(json.dumps({"model_type": "gemma3", "text_config": text_config})), "text_config")


@pytest.mark.parametrize("mtype", [3, None, ["llama"], {"a": 1}])
def test_model_type_not_a_string(write_config, mtype):
    refused(write_config(model_type=mtype), "model_type", "must be a string")


def test_model_config_itself_is_strict():
    base = {"name": "m", "family": "llama", "hidden_size": 64, "intermediate_size": 128, "num_layers": 4, "num_heads": 4,
                "num_kv_heads": 2, "head_dim": 16, "vocab_size": 256}
    ModelConfig(**base)
    for bad in ({"num_layers": True}, {"hidden_size": "64"}, {"vocab_size": 256.0}, {"rope_theta": float("nan")},
                {"num_kv_heads": 3}, {"family": "bert"}, {"sliding_window": 0}):
        with pytest.raises(ValueError):
            ModelConfig(**{**base, **bad})


def test_model_config_round_trips_through_json():
    """A plan stores the config as JSON (layer_windows becomes a list); reading it back must work."""
    c = load_model_config("gemma-3-1b")
    assert ModelConfig.model_validate(json.loads(c.model_dump_json())) == c


# --- GGUF -------------------------------------------------------------------------------------------

def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9


def _val(vtype: int, value) -> bytes:
    if vtype == U32:
        return struct.pack("<I", value)
    if vtype == I32:
        return struct.pack("<i", value)
    if vtype == F32:
        return struct.pack("<f", value)
    if vtype == BOOL:
        return struct.pack("<?", value)
    if vtype == STR:
        return _s(value)
    etype, items = value
    return struct.pack("<IQ", etype, len(items)) + b"".join(_val(etype, v) for v in items)


def smollm_kvs() -> dict:
    """SmolLM2-135M's llama metadata: key -> (type, value)."""
    return {"general.architecture": (STR, "llama"), "llama.block_count": (U32, 30), "llama.context_length": (U32, 8192),
            "llama.embedding_length": (U32, 576), "llama.feed_forward_length": (U32, 1536),
            "llama.attention.head_count": (U32, 9), "llama.attention.head_count_kv": (U32, 3),
            "llama.rope.freq_base": (F32, 100000.0), "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
            "tokenizer.ggml.tokens": (ARR, (STR, [f"t{i}" for i in range(40)]))}


def gguf_bytes(kvs: dict | None = None, *, version: int = 3, n_kv: int | None = None, n_tensors: int | None = None,
               raw_kvs: bytes | None = None) -> bytes:
    """A GGUF file by hand (ggml docs/gguf.md): header, metadata, one 32-float tensor, aligned data."""
    kvs = smollm_kvs() if kvs is None else kvs
    body = raw_kvs if raw_kvs is not None else b"".join(_s(k) + struct.pack("<I", t) + _val(t, v)
                                                        for k, (t, v) in kvs.items())
    tensor = _s("token_embd.weight") + struct.pack("<IQIQ", 1, 32, 0, 0)
    head = b"GGUF" + struct.pack("<IQQ", version, 1 if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    out = head + body + tensor
    out += b"\0" * (-len(out) % 32)
    return out + b"\0" * 128


@pytest.fixture
def write_gguf(tmp_path):
    def write(raw: bytes):
        p = tmp_path / "model.gguf"
        p.write_bytes(raw)
        return p
    return write


def test_hand_made_gguf_loads(write_gguf):
    c = load_model_config(write_gguf(gguf_bytes()))
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (30, 576, 9, 3,
                                                                                                    64, 40)


@pytest.mark.parametrize("raw,needle", [
    (b"", "too short"),
    (b"GGUF\x03\x00", "too short"),
    (b"GGML" + gguf_bytes()[4:], "magic"),
    (gguf_bytes(version=1), "version 1 is not supported"),
    (gguf_bytes(version=99), "version 99"),
    (gguf_bytes(n_tensors=2**63), "tensor count"),
    (gguf_bytes(n_kv=2**64 - 1), "metadata entry count"),
    (gguf_bytes(n_kv=11), "tensor #0 '' is unnamed"),
    (gguf_bytes(raw_kvs=struct.pack("<Q", 2**62) + b"x" * 40, n_kv=1), "metadata key #0"),
    (gguf_bytes({"general.architecture": (STR, "llama"), "x": (ARR, (U32, []))}), "general.architecture"),
    (gguf_bytes()[:300], "runs past the end"),
])
def test_corrupt_gguf_headers(write_gguf, raw, needle):
    if needle == "general.architecture":  # an array claiming 2^62 elements: once a hang
        raw = raw.replace(struct.pack("<IQ", U32, 0), struct.pack("<IQ", U32, 2**62))
        needle = "length of array x"
    elif needle == "runs past the end":
        needle = "not a valid GGUF file"
    t0 = time.perf_counter()
    refused(write_gguf(raw), needle)
    assert time.perf_counter() - t0 < 2.0


def test_gguf_string_and_type_corruption(write_gguf):
    kvs = smollm_kvs()
    huge = gguf_bytes(kvs).replace(_s("llama"), struct.pack("<Q", 2**60) + b"llama")
    refused(write_gguf(huge), "general.architecture's string")
    bad_type = gguf_bytes(kvs).replace(_s("llama.block_count") + struct.pack("<I", U32),
                                       _s("llama.block_count") + struct.pack("<I", 77))
    refused(write_gguf(bad_type), "llama.block_count has unknown value type 77")
    nested = {**kvs, "x": (ARR, (ARR, []))}
    raw = gguf_bytes(nested).replace(struct.pack("<IQ", ARR, 0), struct.pack("<IQ", ARR, 2**40))
    refused(write_gguf(raw), "length of array x")


@pytest.mark.parametrize("key,entry,needle", [
    ("llama.block_count", (STR, "30"), "llama.block_count is '30'"),
    ("llama.block_count", (F32, 30.0), "llama.block_count is 30.0"),
    ("llama.block_count", (I32, -30), "llama.block_count is -30"),
    ("llama.block_count", (U32, 10_000), "1,024"),
    ("llama.attention.head_count", (BOOL, True), "llama.attention.head_count is True"),
    ("llama.attention.head_count", (ARR, (U32, [9] * 7)), "7 per-layer values for 30 layers"),
    ("llama.attention.head_count", (ARR, (U32, [9] * 29 + [12])), "per-layer head counts that differ"),
    ("llama.attention.head_count_kv", (U32, 0), "llama.attention.head_count_kv is 0"),
    ("llama.attention.head_count_kv", (U32, 2), "not a multiple of num_key_value_heads 2"),
    ("llama.rope.freq_base", (F32, float("nan")), "llama.rope.freq_base is nan"),
    ("llama.attention.sliding_window", (U32, 0), "llama.attention.sliding_window is 0"),
    ("general.architecture", (U32, 7), "general.architecture"),
    ("tokenizer.ggml.tokens", (STR, "abc"), "tokenizer.ggml.tokens must be an array"),
])
def test_gguf_metadata_of_the_wrong_type_names_the_key(write_gguf, key, entry, needle):
    refused(write_gguf(gguf_bytes({**smollm_kvs(), key: entry})), needle)


def test_empty_head_count_array(write_gguf):
    refused(write_gguf(gguf_bytes({**smollm_kvs(), "llama.attention.head_count": (ARR, (U32, []))})),
            "llama.attention.head_count is an empty array")


def test_per_layer_head_counts_that_agree_are_accepted(write_gguf):
    kvs = {**smollm_kvs(), "llama.attention.head_count": (ARR, (U32, [9] * 30))}
    assert load_model_config(write_gguf(gguf_bytes(kvs))).num_heads == 9


def test_gguf_path_that_is_a_folder(tmp_path):
    (tmp_path / "x.gguf").mkdir()
    refused(tmp_path / "x.gguf", "not a regular file")
    refused(tmp_path / "missing.gguf", "no such GGUF file")


# --- catalogue --------------------------------------------------------------------------------------

def test_alias_of_reports_aliases():
    assert alias_of("llama3-8b") == "llama-3.1-8b"
    assert alias_of("LLaMA3-8B") == "llama-3.1-8b"
    assert alias_of("llama-3.1-8b") is None and alias_of("no-such-model") is None
    assert resolve_name("llama3-8b") == "llama-3.1-8b"


def test_every_alias_names_an_entry_and_shadows_none():
    from chipfuse.frontends import _aliases

    for alias, target in _aliases().items():
        assert target in catalogue(), alias
        assert alias not in catalogue(), alias


def test_every_catalogue_entry_is_valid():
    for name in catalogue():
        assert load_model_config(name).name == name


def test_empty_name():
    with pytest.raises(SpecError, match="empty model name"):
        load_model_config("  ")
