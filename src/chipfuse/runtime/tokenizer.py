"""Tokenizer and chat template from the model file itself (GGUF metadata or the HF folder).

Converting a GGUF vocabulary takes seconds, so the converted tokenizer is cached by file
identity (path, size, mtime) under chipfuse's cache directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..frontends.model_files import cache_dir


def load_tokenizer(path: str | Path):
    """The model's tokenizer: the light one (tokenizers + the chat template) when a tokenizer.json is at hand,
    else transformers' (which also converts a GGUF vocabulary once, into the cache)."""
    p = Path(path)
    if p.is_dir():
        return LightTokenizer.open(p) or _auto(str(p))
    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer_config.json").exists():
        return LightTokenizer.open(cached) or _auto(str(cached))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    tmp = cached.with_name(key + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    try:
        tmp.replace(cached)
    except OSError:  # another process cached it first
        pass
    return tok


def _auto(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


class LightTokenizer:
    """What the runtime needs of a tokenizer (encode, decode, EOS, the chat template) from a folder's
    tokenizer.json and tokenizer_config.json, without importing transformers (~1 s of start-up).

    The chat template is rendered as transformers renders it (a sandboxed Jinja environment that trims
    blocks, with `raise_exception`), then encoded without adding special tokens; tests check both agree."""

    def __init__(self, tok, config: dict, template: str, folder: Path | None = None):
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        self._tok, self._config, self._template = tok, config, env.from_string(template)
        self.folder = folder
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token_id = tok.token_to_id(self.eos_token) if self.eos_token else None

    @classmethod
    def open(cls, folder: Path) -> LightTokenizer | None:
        """The light tokenizer of a folder, or None when the folder lacks what it needs (then use transformers)."""
        import json

        from tokenizers import Tokenizer

        files = folder / "tokenizer.json", folder / "tokenizer_config.json"
        if not all(f.exists() for f in files):
            return None
        try:
            config = json.loads(files[1].read_text(encoding="utf-8"))
            template = config.get("chat_template")
            jinja = folder / "chat_template.jinja"
            if template is None and jinja.exists():
                template = jinja.read_text(encoding="utf-8")
            if not isinstance(template, str):
                return None  # no template, or one per name: leave it to transformers
            return cls(Tokenizer.from_file(str(files[0])), config, template, folder)
        except Exception:  # noqa: BLE001 - an unusual folder: transformers knows more layouts
            return None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = True):
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        return self.encode(text) if tokenize else text


def _token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken-like mapping with `content`."""
    return value.get("content") if isinstance(value, dict) else value


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
