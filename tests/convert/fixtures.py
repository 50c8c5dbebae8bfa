"""Tiny Hugging Face models built from configs (no downloads) and a throwaway tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SEQ = 12
BATCH = 2
# One of each architecture; between them: tied and untied embeddings, llama3 rope scaling,
# QKV bias, QK-norm with head_dim != hidden/heads, GQA, vocabularies that pad differently at TP 1/2.
ARCHS = {
    "llama": dict(
        model_type="llama", vocab_size=300, hidden_size=128, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    "qwen2": dict(
        model_type="qwen2", vocab_size=320, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=1000000.0,
    ),
    "qwen3": dict(
        model_type="qwen3", vocab_size=260, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_theta=1000000.0,
    ),
}
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Reinforcement learning on pre-training data predicts the next segment of text.",
    "Megatron splits every layer across tensor-parallel ranks and stages across pipelines.",
] * 20


def fixed_tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=gen)


def write_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=258, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of order one, norms and biases away from 1 and 0, so a mapping slip shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and "norm" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif p.dim() == 1:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def build_hf_model(arch: str, out: Path, tokenizer_dir: Path, seed: int = 0,
                   max_shard_size: str = "60KB") -> Path:
    """Save a random tiny model of `arch` (fp32, several safetensors shards) with a tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = dict(ARCHS[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, dtype="float32",
                                  bos_token_id=1, eos_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 0, "max_new_tokens": 16}))
    return out


def hf_logits(model_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the Hugging Face model in `model_dir` (fp32, eager attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def hf_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor stored in the safetensors files of `model_dir`."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out
