"""Fixtures: tiny Llama judges saved as Hugging Face directories.

Their word-level tokenizer gives id 0 to the single token `Score: 1`. The *forced* judge has its
final norm zeroed, so every logit is 0 and greedy decoding always picks id 0: a real model that
deterministically answers `Score: 1`. The *random* judge is the same model with random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_rlpt.reward.prompts import PREFIX_JUDGE_TEMPLATE
from megatron_rlpt.tasks import ASR_TEMPLATE

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)
EXTRA_TEXT = (
    "the cat sat on mat a dog ran in park water boils at 100 degrees celsius energy is conserved "
    "user assistant system"
)


def build_tokenizer(out: Path):
    """A word-level tokenizer whose id 0 decodes to `Score: 1`, saved to `out`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: list[str] = []
    pre = pre_tokenizers.Whitespace()
    for text in (PREFIX_JUDGE_TEMPLATE, ASR_TEMPLATE, EXTRA_TEXT):
        for word, _ in pre.pre_tokenize_str(text):
            if word not in words:
                words.append(word)
    vocab = {"Score: 1": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "<pad>": 4}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>", pad_token="<pad>")
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def build_tiny_llama(out: Path, forced: bool, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # well separated logits: greedy is unambiguous
        if forced:
            model.model.norm.weight.zero_()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def forced_judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("forced_judge"), forced=True)


@pytest.fixture(scope="session")
def random_judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("random_judge"), forced=False)
