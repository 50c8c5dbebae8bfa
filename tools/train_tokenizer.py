#!/usr/bin/env python
"""Train the small byte-level BPE tokenizer shipped in `megatron_rlpt/assets/tokenizer/`.

    python tools/train_tokenizer.py [--input FILE ...] [--vocab-size 8192] [--output DIR]

Inputs are JSONL (the `text` field of each record) or plain text; by default the STEM corpus in
`../shared/data/corpus`. The result is a Hugging Face tokenizer directory (tokenizer.json,
tokenizer_config.json, special_tokens_map.json) that `transformers.AutoTokenizer` loads.

Special tokens: `<|endoftext|>` (eos and pad, id 0), `<|im_start|>` and `<|im_end|>` (ChatML,
used by the chat template). The RLPT prediction tags `<|startofprediction|>` and
`<|endofprediction|>` are deliberately plain text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = [
    "openstax_university_physics.jsonl",
    "openstax_calculus.jsonl",
    "openstax_chemistry_2e.jsonl",
    "openstax_statistics_neardup.jsonl",
    "wikitext2_raw_wiki.test.raw",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def iter_texts(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                for line in f:
                    if line.strip():
                        yield json.loads(line)["text"]
            else:
                yield from f


def train(paths: list[Path], vocab_size: int, output: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(paths), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )
    del fast  # built only to check that transformers accepts the tokenizer
    output.mkdir(parents=True, exist_ok=True)
    tok.save(str(output / "tokenizer.json"))
    # transformers 4.x and 5.x write different configs (5.x: a class name 4.x does not know, the
    # template in its own file); write one both read: the template inline, the generic class.
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000,
        "chat_template": CHAT_TEMPLATE,
    }
    special = {
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (output / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", type=Path, default=None,
                        help="training files (default: the shared STEM corpus)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--output", type=Path, default=REPO / "megatron_rlpt/assets/tokenizer")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared/data")
    args = parser.parse_args(argv)
    paths = args.input or [args.shared_data / "corpus" / name for name in DEFAULT_INPUTS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"train_tokenizer: missing input(s): {', '.join(missing)}", file=sys.stderr)
        return 2
    train(paths, args.vocab_size, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
