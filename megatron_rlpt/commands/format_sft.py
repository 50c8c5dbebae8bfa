"""`rlpt format-sft`: a format-teaching SFT set from prepared triples (the warm-up before RLPT).

Each triple of an `rlpt prepare` output becomes one JSONL record {"prompt", "response"}: the
prompt is the paper's ASR or MSR prompt (mixed by --lam as RLPT mixes them), the response a
short fixed reasoning stub followed by the true next segment between <|startofprediction|> and
<|endofprediction|>. Train on it with `rlpt train` (run.stage=sft, data.path=the output) so the
model answers in the prediction format before RLPT. This is a format warm-up, not the paper's
cold-start data (general instruction SFT); see docs/experiments.md.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "format-sft",
        help="build a format-teaching SFT set (ASR/MSR prompts, true segment as answer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="an rlpt prepare output")
    p.add_argument("--output", required=True, metavar="FILE.jsonl",
                   help="the SFT JSONL to write (atomically)")
    p.add_argument("--lam", type=float, default=0.5,
                   help="λ: each prompt is MSR with probability λ/(1+λ), as in task.lam "
                        "(0: ASR only; default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the task draws (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="at most N records, from the first triples (default: all)")
    p.add_argument("--no-reasoning", action="store_true",
                   help="answer with the tagged segment alone, without the reasoning stub")
    p.add_argument("--max-prompt-tokens", type=int, default=0, metavar="N",
                   help="left-truncate long contexts so the prompt (before the chat template) "
                        "fits N tokens of --tokenizer, as RLPT does (default: no limit)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer for --max-prompt-tokens (default: the one the data was "
                        "prepared with, from its manifest)")
    p.add_argument("--asr-template", default=None, metavar="FILE",
                   help="another ASR template (as task.asr_template_file)")
    p.add_argument("--msr-template", default=None, metavar="FILE",
                   help="another MSR template (as task.msr_template_file)")
    p.set_defaults(func=run)


def _tokenizer(path: str | None, data: str):
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    from megatron_rlpt.errors import UsageError

    if path is None:
        manifest = json.loads((Path(data) / "manifest.json").read_text(encoding="utf-8"))
        path = (manifest.get("tokenizer") or {}).get("path")
        if not path or not Path(path).exists():
            raise UsageError("--max-prompt-tokens needs --tokenizer (the data's manifest names "
                             "no tokenizer that exists here)")
    return AutoTokenizer.from_pretrained(path)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.format_sft import REASONING, write_format_sft
    from megatron_rlpt.tasks import TaskConfig

    if not (Path(args.data) / "manifest.json").is_file():
        raise UsageError(f"{args.data} is not an rlpt prepare output (no manifest.json)")
    if args.lam < 0 or args.limit < 0 or args.max_prompt_tokens < 0:
        raise UsageError("--lam, --limit and --max-prompt-tokens must be >= 0")
    task = TaskConfig(lam=args.lam, asr_template_file=args.asr_template,
                      msr_template_file=args.msr_template)
    tokenizer = _tokenizer(args.tokenizer, args.data) if args.max_prompt_tokens else None
    n = write_format_sft(args.data, args.output, task, args.seed, limit=args.limit,
                         reasoning=None if args.no_reasoning else REASONING,
                         tokenizer=tokenizer, max_prompt_tokens=args.max_prompt_tokens)
    print(f"wrote {n} format-teaching SFT records to {args.output}")
    return 0
