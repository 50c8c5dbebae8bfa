"""The tokenizer shipped in the package."""

from __future__ import annotations

from megatron_rlpt.data.tokenizer import default_tokenizer_path, load_tokenizer


def test_shipped_tokenizer_files_are_small_and_complete():
    path = default_tokenizer_path()
    names = {p.name for p in path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert sum(p.stat().st_size for p in path.iterdir()) < 1_000_000


def test_special_tokens_and_chat_template():
    tok = load_tokenizer()
    assert 7000 <= len(tok) <= 9000
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert len(set(ids)) == 3 and all(i < len(tok) for i in ids)
    # the prediction tags are plain text, not single special tokens
    tag_ids = tok.encode("<|startofprediction|>", add_special_tokens=False)
    assert len(tag_ids) > 1
    chat = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_byte_level_roundtrip_is_exact():
    tok = load_tokenizer()
    for text in ["Plain text.", "  leading and trailing  \n\n", "Unicode: ∫ x² dx, 😀, é, 中文",
                 "tabs\tand\r\nCRLF", "<|startofprediction|> guess <|endofprediction|>"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == text
