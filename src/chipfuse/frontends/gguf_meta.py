"""Read an LLM's architecture from a GGUF file's metadata (no weights are loaded)."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from .config import ModelConfig, from_hf_config

# GGUF architecture name -> Hugging Face model_type
GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
             "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text"}


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    if len(f.data) == 1:
        return f.contents()
    return f.contents()


def gguf_to_hf_config(path: str | Path) -> dict:
    """Translate GGUF metadata keys into a config.json-shaped mapping."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # gguf raises plain ValueError/struct errors on a bad file
        raise SpecError(f"{path}: not a readable GGUF file ({err})") from None
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCH:
        raise SpecError(f"{path}: GGUF architecture {arch!r} is not supported; accepted: {', '.join(GGUF_ARCH)}")

    def a(key, default=None):
        v = _field(reader, f"{arch}.{key}")
        return default if v is None else v

    tensors = {t.name for t in reader.tensors}
    heads = a("attention.head_count")
    if isinstance(heads, list):  # per-layer head counts: take the first
        heads = heads[0]
    kv = a("attention.head_count_kv", heads)
    if isinstance(kv, list):
        kv = kv[0]
    n_vocab = a("vocab_size")
    if n_vocab is None:
        toks = reader.fields.get("tokenizer.ggml.tokens")
        n_vocab = len(toks.data) if toks is not None else None
    cfg = {
        "model_type": GGUF_ARCH[arch],
        "hidden_size": a("embedding_length"),
        "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": a("attention.key_length"),
        "vocab_size": n_vocab,
        "max_position_embeddings": a("context_length", 4096),
        "tie_word_embeddings": "output.weight" not in tensors,
        "rope_theta": a("rope.freq_base", 10000.0),
        "rms_norm_eps": a("attention.layer_norm_rms_epsilon", 1e-5),
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    window = a("attention.sliding_window")
    if window:
        cfg["sliding_window"] = window
    return {k: v for k, v in cfg.items() if v is not None}


def from_gguf(path: str | Path) -> ModelConfig:
    cfg = gguf_to_hf_config(path)
    return from_hf_config(cfg, name=Path(path).stem, source=str(path))
