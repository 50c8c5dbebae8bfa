"""`rlpt convert`: Megatron dist-checkpoints ⇄ Hugging Face (Llama 3.x, Qwen2.5, Qwen3)."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert checkpoints between Hugging Face and Megatron (Llama 3.x, Qwen2.5, Qwen3)",
        description=(
            "Convert a Hugging Face model directory into a Megatron dist-checkpoint root, or a "
            "Megatron checkpoint back into a Hugging Face directory that transformers and vLLM "
            "load unchanged. Inputs are checked before anything is written. See docs/convert.md."
        ),
    )
    sub = p.add_subparsers(dest="direction", metavar="DIRECTION")

    imp = sub.add_parser(
        "hf-to-megatron",
        help="Hugging Face directory -> Megatron checkpoint root",
        description=(
            "Write a dist-checkpoint (iter_0000000/), model_config.json and the tokenizer. The "
            "checkpoint layout does not depend on TP/PP; --tp sets the vocabulary padding "
            "(a multiple of --make-vocab-size-divisible-by x TP) and --tp/--pp are checked "
            "against heads, query groups, FFN width and layers."
        ),
    )
    imp.add_argument("--hf", required=True, help="Hugging Face model directory (safetensors)")
    imp.add_argument("--out", required=True, help="output checkpoint root (created)")
    imp.add_argument("--tp", type=int, default=1, help="tensor-parallel size to train at (1)")
    imp.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to train at (1)")
    imp.add_argument("--dtype", choices=("fp32", "bf16"),
                     help="parameter dtype (default: the checkpoint's; fp16 becomes bf16)")
    imp.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                     help="vocabulary padding multiple per TP rank (128)")
    imp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser(
        "megatron-to-hf",
        help="Megatron checkpoint (run dir, root or iter_N dir) -> Hugging Face directory",
        description=(
            "Write config.json, generation_config.json, tokenizer files and sharded safetensors "
            "with an index. The model config comes from <root>/model_config.json; tokenizer and "
            "configs from --hf-template, else from <root>/tokenizer and <root>/hf."
        ),
    )
    exp.add_argument("--ckpt", required=True, help="run directory of `rlpt train`, checkpoint root (newest "
                     "iteration) or one iter_N dir")
    exp.add_argument("--out", required=True, help="output Hugging Face directory (created)")
    exp.add_argument("--hf-template", help="Hugging Face directory to take tokenizer and configs from")
    exp.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                     help="dtype of the written weights (default: the model's)")
    exp.add_argument("--max-shard-size", default="5GB", help="largest safetensors file (5GB)")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    exp.set_defaults(func=run_export)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def run_import(args: argparse.Namespace) -> int:
    from megatron_rlpt.convert.hf_to_megatron import hf_to_megatron

    _logging()
    out = hf_to_megatron(args.hf, args.out, tp=args.tp, pp=args.pp, params_dtype=args.dtype,
                         make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                         overwrite=args.overwrite)
    print(f"wrote Megatron checkpoint root {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from megatron_rlpt.convert.megatron_to_hf import megatron_to_hf

    _logging()
    out = megatron_to_hf(args.ckpt, args.out, hf_template=args.hf_template, dtype=args.dtype,
                         max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    print(f"wrote Hugging Face model {out}")
    return 0
