"""The light tokenizer (tokenizers + the chat template, no transformers import) agrees with transformers."""

from __future__ import annotations

import pytest

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ünïcødé 日本 ✓"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "  spaces\n\nnewlines  "}],
]


@pytest.mark.slow
def test_light_tokenizer_matches_transformers(smollm2_gguf):
    from transformers import AutoTokenizer

    from chipfuse.runtime.tokenizer import LightTokenizer, load_tokenizer

    tok = load_tokenizer(smollm2_gguf)  # converts the GGUF vocabulary once into the cache
    tok = load_tokenizer(smollm2_gguf)  # then the light one from the cache
    assert isinstance(tok, LightTokenizer)
    ref = AutoTokenizer.from_pretrained(str(tok.folder))
    for conv in CONVERSATIONS:
        for gen in (True, False):
            want = ref.apply_chat_template(conv, add_generation_prompt=gen, tokenize=True)
            want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "input_ids") else want
            assert tok.apply_chat_template(conv, add_generation_prompt=gen) == list(want)
    text = "Hello world, ünïcødé <|im_end|> 12345"
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert tok.eos_token_id == ref.eos_token_id is not None


def test_folder_without_tokenizer_json_falls_back(tmp_path):
    from chipfuse.runtime.tokenizer import LightTokenizer

    assert LightTokenizer.open(tmp_path) is None
