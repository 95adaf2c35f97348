"""Tokenizer and chat template from the model file itself (GGUF metadata or the HF folder).

Converting a GGUF vocabulary takes seconds, so the converted tokenizer is cached by file
identity (path, size, mtime) under chipfuse's cache directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .model_files import cache_dir


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir():
        return AutoTokenizer.from_pretrained(str(p))
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(cached))
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    tmp = cached.with_name(key + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.replace(cached)
    except OSError:  # another process cached it first
        pass
    return tok


class StreamDecoder:
    """Turns token ids into text pieces as they come, never splitting a multi-byte character."""

    def __init__(self, tok):
        self.tok, self.ids, self.text = tok, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece
