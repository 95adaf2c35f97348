"""Fuzz category: GGUF files, mutated in their header and metadata.

The seeds are small synthetic GGUFs (a few KB) written with gguf.GGUFWriter: SmolLM2-135M's llama
metadata and tiny tensors, plus variants whose metadata values have the wrong type or shape (a
string block count, an empty or mis-sized per-layer head count array, negative counts, NaN
floats). Each case mutates the bytes of one seed where the header lives: counts and lengths set to
huge values, value types changed, values overwritten, bits flipped, bytes inserted or removed, or
the file truncated. `check` loads it like the CLI (`-m file.gguf`) and compiles a plan from it.
"""

from __future__ import annotations

import random
import struct
import tempfile
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from .harness import plan_outcome

NAME = "GGUF header"

ARCH = "llama"
N_LAYERS = 30
TOKENS = [f"tok{i}" for i in range(32)]

# GGUF value types (ggml docs/gguf.md): size in bytes of each scalar type
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9

HUGE_COUNTS = (0, 1, 2, 3, 2**64 - 1, 2**63, 2**63 - 1, 2**40, 2**32, 2**32 - 1, 2**31, 10**6, 65_536)
TYPES = tuple(range(14)) + (255, 2**31, 2**32 - 1)


def _metadata_variants() -> dict[str, list[tuple[str, object, int, int | None]]]:
    """Name -> metadata entries to change (key, value, GGUF type, array element type) from the base."""
    a = ARCH
    return {
        "base": [],
        "string block count": [(f"{a}.block_count", "30", STRING, None)],
        "float block count": [(f"{a}.block_count", 30.0, 6, None)],
        "bool head count": [(f"{a}.attention.head_count", True, 7, None)],
        "empty head count": [(f"{a}.attention.head_count", [9], ARRAY, 4)],  # emptied by _empty_array
        "short head count": [(f"{a}.attention.head_count", [9] * 7, ARRAY, 4)],
        "per-layer head count": [(f"{a}.attention.head_count", [9] * N_LAYERS, ARRAY, 4),
                                 (f"{a}.attention.head_count_kv", [3] * N_LAYERS, ARRAY, 4)],
        "uneven head count": [(f"{a}.attention.head_count", [9] * (N_LAYERS - 1) + [12], ARRAY, 4)],
        "string head count array": [(f"{a}.attention.head_count", ["9"] * N_LAYERS, ARRAY, STRING)],
        "negative layers": [(f"{a}.block_count", -30, 5, None)],
        "zero kv heads": [(f"{a}.attention.head_count_kv", 0, 4, None)],
        "huge layers": [(f"{a}.block_count", 2**40, 10, None)],
        "nan rope": [(f"{a}.rope.freq_base", float("nan"), 6, None)],
        "inf eps": [(f"{a}.attention.layer_norm_rms_epsilon", float("inf"), 6, None)],
        "int arch": [("general.architecture", 7, 4, None)],
        "unknown arch": [("general.architecture", "bert", STRING, None)],
        "zero window": [(f"{a}.attention.sliding_window", 0, 4, None)],
        "tokens not array": [(f"{a}.vocab_size", None, 0, None), ("tokenizer.ggml.tokens", "abc", STRING, None)],
        "vocab from tokens": [(f"{a}.vocab_size", None, 0, None)],
        "alignment 3": [("general.alignment", 3, 4, None)],
    }


def _base_metadata() -> dict[str, tuple[object, int, int | None]]:
    """SmolLM2-135M's llama metadata: key -> (value, GGUF type, array element type)."""
    a = ARCH
    return {
        f"{a}.block_count": (N_LAYERS, 4, None),
        f"{a}.context_length": (8192, 4, None),
        f"{a}.embedding_length": (576, 4, None),
        f"{a}.feed_forward_length": (1536, 4, None),
        f"{a}.attention.head_count": (9, 4, None),
        f"{a}.attention.head_count_kv": (3, 4, None),
        f"{a}.rope.freq_base": (100000.0, 6, None),
        f"{a}.attention.layer_norm_rms_epsilon": (1e-5, 6, None),
        f"{a}.vocab_size": (49152, 4, None),
        "tokenizer.ggml.model": ("gpt2", STRING, None),
        "tokenizer.ggml.tokens": (TOKENS, ARRAY, STRING),
    }


def _write(path: Path, changes: list) -> None:
    """A tiny GGUF at path: the base metadata with `changes` applied, and three small tensors."""
    import gguf

    meta = _base_metadata()
    for key, value, vtype, sub in changes:
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = (value, vtype, sub)
    w = gguf.GGUFWriter(str(path), ARCH)
    for key, (value, vtype, sub) in meta.items():
        if key == "general.architecture":
            w.kv_data[0].pop(key, None)
        w.add_key_value(key, value, gguf.GGUFValueType(vtype),
                        sub_type=gguf.GGUFValueType(sub) if sub is not None else None)
    w.add_tensor("token_embd.weight", np.zeros((8, 16), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((16, 16), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _empty_array(raw: bytes, key: str) -> bytes:
    """Make the one-uint32 array under `key` empty (GGUFWriter refuses to write an empty array), moving
    its 4 bytes into the tokenizer.ggml.model string so the header keeps its length and alignment."""
    k = key.encode() + struct.pack("<IIQ", ARRAY, 4, 1)
    i = raw.index(k) + len(k)
    raw = raw[:i - 8] + struct.pack("<Q", 0) + raw[i + 4:]
    m = b"tokenizer.ggml.model" + struct.pack("<IQ", STRING, 4) + b"gpt2"
    j = raw.index(m)
    return raw[:j] + b"tokenizer.ggml.model" + struct.pack("<IQ", STRING, 8) + b"gpt2pad_" + raw[j + len(m):]


@lru_cache(maxsize=1)
def _seeds() -> tuple[tuple[str, bytes], ...]:
    """(variant name, file bytes) of every seed GGUF, written once into a temporary folder."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, changes in _metadata_variants().items():
            path = Path(tmp) / "seed.gguf"
            _write(path, changes)
            raw = path.read_bytes()
            if name == "empty head count":
                raw = _empty_array(raw, f"{ARCH}.attention.head_count")
            out.append((name, raw))
    return tuple(out)


# --- where things are in a header ----------------------------------------------------------------

def _layout(raw: bytes) -> dict[str, list[tuple[int, int]]]:
    """Offsets of the header's fields by kind: 'count' (uint64 counts and lengths), 'type' (uint32 value
    and tensor types, dimension counts) and 'value' (scalar metadata values: offset, value type)."""
    spots: dict[str, list[tuple[int, int]]] = {"count": [(8, 8), (16, 8)], "type": [], "value": []}
    pos = 24

    def u32(at):
        return struct.unpack_from("<I", raw, at)[0]

    def u64(at):
        return struct.unpack_from("<Q", raw, at)[0]

    def string(at):
        spots["count"].append((at, 8))
        return at + 8 + u64(at)

    def value(at, vtype):
        if vtype in SCALAR_BYTES:
            spots["value"].append((at, vtype))
            return at + SCALAR_BYTES[vtype]
        if vtype == STRING:
            return string(at)
        spots["type"].append((at, 4))
        spots["count"].append((at + 4, 8))
        etype, n, at = u32(at), u64(at + 4), at + 12
        for _ in range(n):
            at = value(at, etype)
        return at

    for _ in range(u64(16)):
        pos = string(pos)
        spots["type"].append((pos, 4))
        pos = value(pos + 4, u32(pos))
    for _ in range(u64(8)):
        pos = string(pos)
        spots["type"].append((pos, 4))
        n_dims = u32(pos)
        for d in range(n_dims):
            spots["count"].append((pos + 4 + 8 * d, 8))
        pos += 4 + 8 * n_dims
        spots["type"].append((pos, 4))
        spots["count"].append((pos + 4, 8))
        pos += 12
    spots["end"] = [(pos, 0)]
    return spots


@cache
def _seed_layout(name: str) -> dict[str, list[tuple[int, int]]]:
    return _layout(dict(_seeds())[name])


# --- mutations: (bytes, layout, rnd) -> bytes ----------------------------------------------------

def _put(raw: bytes, at: int, data: bytes) -> bytes:
    return raw[:at] + data + raw[at + len(data):]


def _set_count(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    at, _ = rnd.choice(spots["count"])
    if at + 8 > len(raw):
        return raw
    old = struct.unpack_from("<Q", raw, at)[0]
    new = rnd.choice(HUGE_COUNTS + (len(raw), len(raw) * 2, old + 1, max(0, old - 1), old * 2))
    return _put(raw, at, struct.pack("<Q", new % 2**64))


def _set_type(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    at, _ = rnd.choice(spots["type"])
    return _put(raw, at, struct.pack("<I", rnd.choice(TYPES)))


def _set_value(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    if not spots["value"]:
        return raw
    at, vtype = rnd.choice(spots["value"])
    size = SCALAR_BYTES[vtype]
    if vtype in (6, 12):
        fmt = "<f" if vtype == 6 else "<d"
        return _put(raw, at, struct.pack(fmt, rnd.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30, -0.0, 5e-45])))
    pattern = rnd.choice([b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01"])
    return _put(raw, at, (pattern * size)[:size] if rnd.randrange(2) else pattern.rjust(size, b"\x00")[::-1])


def _header_end(raw: bytes, spots: dict) -> int:
    """Where the seed's header ends, within this (maybe shortened) file; at least 1."""
    return max(1, min(spots["end"][0][0], len(raw)))


def _flip_bits(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    end = _header_end(raw, spots)
    if not raw:
        return raw
    out = bytearray(raw)
    for _ in range(rnd.randint(1, 8)):
        i = rnd.randrange(end)
        out[i] ^= 1 << rnd.randrange(8)
    return bytes(out)


def _overwrite(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    end = _header_end(raw, spots)
    i = rnd.randrange(end)
    return _put(raw, i, bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16))))[:len(raw)]


def _truncate(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    end = _header_end(raw, spots)
    return raw[:rnd.randrange(end + 64 if rnd.randrange(4) else len(raw) + 1)]


def _insert_or_delete(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    end = _header_end(raw, spots)
    i = rnd.randrange(min(24, end - 1), end)
    n = rnd.randint(1, 12)
    return raw[:i] + bytes(rnd.randrange(256) for _ in range(n)) + raw[i:] if rnd.randrange(2) else raw[:i] + raw[i + n:]


def _magic_or_version(raw: bytes, spots: dict, rnd: random.Random) -> bytes:
    if rnd.randrange(2):
        return _put(raw, 0, rnd.choice([b"GGUG", b"gguf", b"\x00\x00\x00\x00", b"GGML"]))
    return _put(raw, 4, struct.pack("<I", rnd.choice([0, 1, 2, 4, 2**16, 2**24 * 3, 2**32 - 1])))


MUTATIONS = (_set_count, _set_count, _set_count, _set_type, _set_type, _set_value, _set_value, _flip_bits,
             _overwrite, _truncate, _insert_or_delete, _magic_or_version)


@st.composite
def _case(draw) -> bytes:
    name, raw = draw(st.sampled_from(_seeds()))
    n_mutations = draw(st.sampled_from((0, 1, 1, 1, 1, 2, 2, 3)))
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))  # Python's own draws: a replay never diverges
    spots = _seed_layout(name)
    for _ in range(n_mutations):
        raw = rnd.choice(MUTATIONS)(raw, spots, rnd)
    return raw


def strategy():
    return _case()


def check(case: bytes) -> str:
    """Load the file like the CLI, then compile a plan for it."""
    from chipfuse.frontends import load_model_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.gguf"
        path.write_bytes(case)
        cfg = load_model_config(path)
    return plan_outcome(cfg)
