"""Read an LLM's architecture from a GGUF file's metadata (no weights are loaded).

The header is walked by `check_header` before `gguf.GGUFReader` sees the file: the reader trusts
every count and length in it, so a corrupt count can make it loop for ever or allocate without
bound. Layout, from the GGUF spec (ggml's docs/gguf.md, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    uint32 magic "GGUF"; uint32 version; uint64 tensor_count; uint64 metadata_kv_count;
    metadata_kv_count x { gguf_string key; uint32 value_type; value };
    tensor_count x { gguf_string name; uint32 n_dimensions; uint64 dimensions[n_dimensions];
                     uint32 ggml_type; uint64 offset };
    padding to general.alignment (default 32); tensor data.

gguf_string is uint64 length + UTF-8 bytes; an array value is uint32 element type + uint64 count +
elements. Values are little-endian (big-endian files exist and are recognised by their version).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .config import ModelConfig, from_hf_config

# GGUF architecture name -> Hugging Face model_type
GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
             "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}

# gguf_metadata_value_type -> size in bytes of a scalar of that type
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
VERSIONS = (2, 3)  # the ones gguf.GGUFReader reads (v1 had 32-bit counts)
MAX_KEY_BYTES = 65_535  # the spec's limit on a key's length
MAX_ARRAY_DEPTH = 4  # arrays of arrays are allowed; deeper nesting is corruption
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT_BYTES = 32
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, smallest value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dimensions, type, offset


class _Header:
    """Bounds-checked reads through a GGUF file's bytes; every failure names the file and the offset."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.path, self.pos, self.order = buf, path, 0, "<"

    def fail(self, what: str) -> SpecError:
        """A SpecError for a corrupt header, saying where."""
        return SpecError(f"{self.path}: not a valid GGUF file: {what} (at byte {self.pos:,} of {len(self.buf):,}); "
                         "the file is truncated or corrupt - download or convert it again")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n_bytes: int, what: str) -> int:
        """Skip n_bytes, returning where they start; refuses to run past the end of the file."""
        if n_bytes > self.left:
            raise self.fail(f"{what} needs {n_bytes:,} bytes but only {self.left:,} remain")
        start, self.pos = self.pos, self.pos + n_bytes
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from(self.order + "I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from(self.order + "Q", self.buf, self.take(8, what))[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        """A uint64 count, refused when its items could not fit in the rest of the file."""
        n = self.u64(what)
        if n * min_item_bytes > self.left:
            raise self.fail(f"{what} is {n:,} but the rest of the file has room for at most "
                            f"{self.left // min_item_bytes:,}")
        return n

    def string(self, what: str, max_bytes: int | None = None) -> str:
        """A gguf_string decoded as UTF-8."""
        n = self.u64(f"length of {what}")
        if max_bytes is not None and n > max_bytes:
            raise self.fail(f"{what} is {n:,} bytes long (limit {max_bytes:,})")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text") from None


def _skip_value(h: _Header, vtype: int, key: str, depth: int = 0) -> None:
    """Step over one metadata value of type vtype, checking every length against the file size."""
    if vtype in SCALAR_BYTES:
        h.take(SCALAR_BYTES[vtype], f"value of {key}")
    elif vtype == STRING:
        h.take(h.u64(f"length of {key}'s string"), f"{key}'s string")
    elif vtype == ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise h.fail(f"{key} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        etype = h.u32(f"element type of {key}")
        if etype in SCALAR_BYTES:
            h.take(h.count(f"length of array {key}", SCALAR_BYTES[etype]) * SCALAR_BYTES[etype], f"array {key}")
            return
        if etype not in (STRING, ARRAY):
            raise h.fail(f"{key} is an array of unknown value type {etype}")
        for _ in range(h.count(f"length of array {key}", 8 if etype == STRING else 12)):
            _skip_value(h, etype, key, depth + 1)
    else:
        raise h.fail(f"{key} has unknown value type {vtype} (known: 0..12)")


def _metadata(h: _Header, n_kv: int) -> int:
    """Walk the metadata key/values; returns general.alignment (bytes)."""
    seen: set[str] = set()
    alignment = DEFAULT_ALIGNMENT_BYTES
    for i in range(n_kv):
        key = h.string(f"metadata key #{i}", MAX_KEY_BYTES)
        if not key or key in seen:
            raise h.fail(f"metadata key #{i} {key!r} is {'empty' if not key else 'given twice'}")
        seen.add(key)
        vtype = h.u32(f"value type of {key}")
        if key == "general.alignment":
            alignment = _alignment(h, vtype)
        else:
            _skip_value(h, vtype, key)
    return alignment


def _alignment(h: _Header, vtype: int) -> int:
    """general.alignment: a uint32 power of two."""
    if vtype != 4:
        raise h.fail(f"general.alignment has value type {vtype}; it must be uint32 (4)")
    value = h.u32("general.alignment")
    if value == 0 or value & (value - 1):
        raise h.fail(f"general.alignment is {value}; it must be a power of two")
    return value


def _tensor_infos(h: _Header, n_tensors: int) -> list[tuple[str, int, int]]:
    """Walk the tensor infos: (name, data offset, data bytes) of each."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    out, seen = [], set()
    for i in range(n_tensors):
        name = h.string(f"name of tensor #{i}", MAX_KEY_BYTES)
        if not name or name in seen:
            raise h.fail(f"tensor #{i} {name!r} is {'unnamed' if not name else 'given twice'}")
        seen.add(name)
        n_dims = h.u32(f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise h.fail(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = [h.u64(f"dimension of tensor {name!r}") for _ in range(n_dims)]
        raw = h.u32(f"type of tensor {name!r}")
        try:
            block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(raw)]
        except (ValueError, KeyError):
            raise h.fail(f"tensor {name!r} has unknown ggml type {raw}") from None
        if dims and dims[0] % block:
            raise h.fail(f"tensor {name!r}'s first dimension {dims[0]} is not a multiple of its type's block {block}")
        n_elements = 1
        for d in dims:
            n_elements *= d
        out.append((name, h.u64(f"data offset of tensor {name!r}"), n_elements // block * type_bytes))
    return out


def _check_tensor_data(h: _Header, tensors: list[tuple[str, int, int]], alignment: int) -> None:
    """Every tensor's data lies inside the file, at an aligned offset."""
    start = -(-h.pos // alignment) * alignment
    for name, offset, n_bytes in tensors:
        if offset % alignment:
            raise h.fail(f"tensor {name!r}'s data offset {offset:,} is not a multiple of the alignment {alignment}")
        if start + offset + n_bytes > len(h.buf):
            raise h.fail(f"tensor {name!r}'s data ({n_bytes:,} bytes at {start + offset:,}) runs past the end")


def _walk(h: _Header) -> None:
    """Check magic, version, counts, metadata and tensor infos of the header in h."""
    if bytes(h.buf[:4]) != b"GGUF":
        raise h.fail(f"it starts with {bytes(h.buf[:4])!r}, not the GGUF magic b'GGUF'")
    h.take(4, "magic")
    version = h.u32("version")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        h.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in VERSIONS:
        raise h.fail(f"GGUF version {version} is not supported (supported: {', '.join(map(str, VERSIONS))}); "
                     "convert the model again with a current llama.cpp")
    n_tensors = h.u64("tensor count")
    n_kv = h.count("metadata entry count", MIN_KV_BYTES)
    if n_tensors * MIN_TENSOR_INFO_BYTES > h.left:
        raise h.fail(f"tensor count is {n_tensors:,}, more than the file can describe")
    alignment = _metadata(h, n_kv)
    _check_tensor_data(h, _tensor_infos(h, n_tensors), alignment)


def check_header(path: str | Path) -> None:
    """Refuse a file whose GGUF header is malformed, before any reader trusts its counts."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise SpecError(f"{p}: {size} bytes is too short for a GGUF file (the header alone is 24 bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                buf = memoryview(m)
                try:
                    _walk(_Header(buf, p))
                finally:
                    buf.release()
    except OSError as err:
        raise SpecError(f"{p}: cannot read it ({err.strerror or err})") from None


def _open(path: str | Path):
    """A gguf.GGUFReader over a file whose header checked out; any reader error becomes a SpecError."""
    import gguf

    check_header(path)
    try:
        return gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises ValueError, KeyError, struct errors...
        raise SpecError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None


def _value(reader, path: str | Path, key: str) -> Any:
    """A metadata value (a list for arrays), or None when the key is absent."""
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception as err:  # noqa: BLE001 - e.g. a string that is not UTF-8
        raise SpecError(f"{path}: GGUF key {key} cannot be read ({type(err).__name__}: {err})") from None


def _per_layer(value: Any, key: str, n_layers: Any, path: str | Path) -> Any:
    """A head count given as one number or as one per layer (which must all agree)."""
    if not isinstance(value, list):
        return value
    if not value:
        raise SpecError(f"{path}: GGUF key {key} is an empty array; it must be a head count (or one per layer)")
    if isinstance(n_layers, int) and not isinstance(n_layers, bool) and len(value) != n_layers:
        raise SpecError(f"{path}: GGUF key {key} lists {len(value)} per-layer values for {n_layers} layers; "
                        "it must have one per layer")
    if any(v != value[0] for v in value):
        raise SpecError(f"{path}: GGUF key {key} has per-layer head counts that differ ({sorted(set(map(str, value)))}"
                        "); chipfuse models one head count for every layer")
    return value[0]


def _vocab_size(reader, path: str | Path, arch: str) -> Any:
    """{arch}.vocab_size, else the number of tokenizer.ggml.tokens."""
    n = _value(reader, path, f"{arch}.vocab_size")
    if n is not None:
        return n
    toks = reader.fields.get("tokenizer.ggml.tokens")
    if toks is None:
        return None
    if not toks.types or toks.types[0] != ARRAY:
        raise SpecError(f"{path}: GGUF key tokenizer.ggml.tokens must be an array of strings (the vocabulary)")
    return len(toks.data)


def gguf_keys(arch: str) -> dict[str, str]:
    """config.json key -> the GGUF metadata key it comes from, for error messages."""
    a = arch
    return {"model_type": "general.architecture", "hidden_size": f"{a}.embedding_length",
            "intermediate_size": f"{a}.feed_forward_length", "num_hidden_layers": f"{a}.block_count",
            "num_attention_heads": f"{a}.attention.head_count", "num_key_value_heads": f"{a}.attention.head_count_kv",
            "head_dim": f"{a}.attention.key_length", "vocab_size": f"{a}.vocab_size (or tokenizer.ggml.tokens' count)",
            "max_position_embeddings": f"{a}.context_length", "rope_theta": f"{a}.rope.freq_base",
            "rms_norm_eps": f"{a}.attention.layer_norm_rms_epsilon", "sliding_window": f"{a}.attention.sliding_window",
            "tie_word_embeddings": "tensor output.weight", "attention_bias": "tensor blk.0.attn_q.bias"}


def _architecture(reader, path: str | Path) -> str:
    """general.architecture, checked to be one we model."""
    arch = _value(reader, path, "general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_ARCH:
        raise SpecError(f"{path}: GGUF architecture (general.architecture) {_repr(arch)} is not supported; "
                        f"accepted: {', '.join(GGUF_ARCH)}")
    return arch


def _repr(value: Any, n: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= n else s[:n] + "..."


def _from_reader(reader, path: str | Path) -> dict:
    """Translate an open reader's metadata keys into a config.json-shaped mapping."""
    arch = _architecture(reader, path)

    def a(key, default=None):
        v = _value(reader, path, f"{arch}.{key}")
        return default if v is None else v

    tensors = {t.name for t in reader.tensors}
    n_layers = a("block_count")
    heads = _per_layer(a("attention.head_count"), f"{arch}.attention.head_count", n_layers, path)
    kv = _per_layer(a("attention.head_count_kv", heads), f"{arch}.attention.head_count_kv", n_layers, path)
    cfg = {
        "model_type": GGUF_ARCH[arch],
        "hidden_size": a("embedding_length"),
        "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": a("attention.key_length"),
        "vocab_size": _vocab_size(reader, path, arch),
        "max_position_embeddings": a("context_length", 4096),
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_theta": a("rope.freq_base", 10000.0),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon", 1e-5),
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "sliding_window": a("attention.sliding_window"),
    }
    return {k: v for k, v in cfg.items() if v is not None}


def gguf_to_hf_config(path: str | Path) -> dict:
    """Translate GGUF metadata keys into a config.json-shaped mapping."""
    return _from_reader(_open(path), path)


def from_gguf(path: str | Path) -> ModelConfig:
    """A ModelConfig from a GGUF file's metadata; errors name the GGUF key at fault."""
    cfg = gguf_to_hf_config(path)
    keys = gguf_keys(next(k for k, v in GGUF_ARCH.items() if v == cfg["model_type"]))
    return from_hf_config(cfg, name=Path(path).stem, source=str(path), keys=keys)
