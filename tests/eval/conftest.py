"""Fixtures for the evaluation tests: a tiny random Llama with a tokenizer, a GPQA-style CSV."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest

# Questions written for these tests in the official GPQA column layout (GPQA itself is not
# redistributable). Deliberately easy, with unambiguous answers.
GPQA_ROWS = [
    ("What is the chemical symbol for sodium?", "Na", "So", "Sd", "S"),
    ("How many protons does a carbon-12 nucleus contain?", "6", "12", "8", "4"),
    (
        "Which particle mediates the electromagnetic force?",
        "Photon",
        "Gluon",
        "W boson",
        "Graviton",
    ),
    ("What is the SI unit of magnetic flux?", "Weber", "Tesla", "Henry", "Gauss"),
    (
        "Which organelle carries out oxidative phosphorylation?",
        "Mitochondrion",
        "Ribosome",
        "Golgi apparatus",
        "Lysosome",
    ),
    ("What is the derivative of sin(x)?", "cos(x)", "-cos(x)", "sin(x)", "-sin(x)"),
    (
        "Which gas makes up most of Earth's atmosphere?",
        "Nitrogen",
        "Oxygen",
        "Argon",
        "Carbon dioxide",
    ),
]


def write_gpqa_csv(
    path: Path, rows: list[tuple[str, ...]] = GPQA_ROWS, ids: list[str] | None = None
) -> Path:
    """A CSV with GPQA's official columns (plus two of its extra ones)."""
    ids = ids or [f"rec{i:03d}" for i in range(len(rows))]
    header = [
        "Record ID",
        "Question",
        "Correct Answer",
        "Incorrect Answer 1",
        "Incorrect Answer 2",
        "Incorrect Answer 3",
        "High-level domain",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for record_id, row in zip(ids, rows):
            writer.writerow([record_id, *row, "Science"])
    return path


@pytest.fixture()
def gpqa_csv(tmp_path: Path) -> Path:
    return write_gpqa_csv(tmp_path / "gpqa" / "gpqa_diamond.csv")


def _project_tokenizer() -> Path | None:
    try:
        module = importlib.import_module("megatron_rlpt.data.tokenizer")
    except ImportError:
        return None
    path = Path(module.default_tokenizer_path())
    return path if path.exists() else None


def _train_tokenizer(out: Path, shared_data: Path):
    """A throwaway byte-level BPE (512 tokens) trained on benchmark text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bench = shared_data / "benchmarks"
    texts = [json.loads(line)["problem"] for line in open(bench / "math500" / "test.jsonl")]
    texts += [json.loads(line)["question"] for line in open(bench / "gsm8k" / "test.jsonl")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    hf.chat_template = (
        "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    hf.save_pretrained(out)
    return hf


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A random 2-layer Llama (hidden 64) saved as a Hugging Face directory with a tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    shipped = _project_tokenizer()
    if shipped is not None:
        tokenizer = AutoTokenizer.from_pretrained(shipped)
        tokenizer.save_pretrained(out)
    else:
        tokenizer = _train_tokenizer(out, shared_data)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Larger logits than the default init gives, so sampling settings visibly matter.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out)
    return out
