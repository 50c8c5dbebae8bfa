"""`rlpt eval`: score a model on the RLPT paper's benchmarks, or compare runs side by side."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError

PAPER = "mmlu,mmlu_pro,gpqa,kor_bench,math500,amc23,aime24,aime25"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model on MMLU, MMLU-Pro, GPQA, KOR-Bench, MATH-500, AMC23, AIME24/25",
        description=(
            "Generate answers with a rollout engine (vLLM or in-process transformers), check "
            "them (option letters, Math-Verify, KOR-Bench rules) and report accuracy and "
            "unbiased pass@k as JSON, a markdown table, a PNG plot and per-sample JSONL. "
            "With --compare, put finished runs side by side instead. Flags override --config."
        ),
    )
    # Flags default to None so that only those given override the config file.
    what = p.add_argument_group("what to evaluate")
    what.add_argument("--model", help="Hugging Face model directory (or hub id)")
    what.add_argument("--config", help="YAML file of EvalConfig fields (see docs/eval.md)")
    what.add_argument("--benchmarks", help=f"comma-separated; also gsm8k (default: {PAPER})")
    what.add_argument("--data-dir", help="directory with one sub-directory per benchmark")
    what.add_argument("--gpqa-csv", help="GPQA's CSV (default: <data-dir>/gpqa/gpqa_diamond.csv)")
    what.add_argument(
        "--limit", type=int, help="questions per benchmark, spread evenly (smoke runs)"
    )
    samp = p.add_argument_group("sampling (defaults: the paper's protocol)")
    samp.add_argument("--n", type=int, help="samples per math problem (default 64)")
    samp.add_argument(
        "--n-choice", type=int, help="samples per multiple-choice / KOR-Bench question (default 1)"
    )
    samp.add_argument("--k", help="pass@k values to report, comma-separated (default 1,8)")
    samp.add_argument("--temperature", type=float, help="default 0.6; 0 is greedy")
    samp.add_argument("--top-p", type=float, help="default 0.95")
    samp.add_argument("--top-k", type=int, help="default 0 (off)")
    samp.add_argument("--max-tokens", type=int, help="tokens per completion (default 32768)")
    samp.add_argument("--seed", type=int, help="sampling and GPQA option-order seed (default 0)")
    samp.add_argument(
        "--chat-template",
        action="store_true",
        default=None,
        help="wrap prompts in the tokenizer's chat template",
    )
    samp.add_argument("--system-prompt", help="system message (with --chat-template)")
    eng = p.add_argument_group("engine")
    eng.add_argument(
        "--engine",
        choices=("auto", "vllm", "hf"),
        default="auto",
        help="auto (default): vLLM if importable here, else in-process transformers; vllm "
        "also runs from .venv-vllm (tools/setup_vllm.sh) or $RLPT_VLLM_PYTHON",
    )
    eng.add_argument("--batch-size", type=int, default=16, help="hf: sequences per batch (16)")
    eng.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="model dtype")
    eng.add_argument("--device", help="hf: cpu, cuda, cuda:1, ... (default: cuda if present)")
    eng.add_argument("--tensor-parallel-size", type=int, help="vllm: GPUs per model")
    eng.add_argument("--score-workers", type=int, help="processes for answer checking (default 1)")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", help="default: rlpt_eval/<model name> (or rlpt_eval/compare)")
    out.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="results.json files or output dirs of earlier runs (the first is the baseline)",
    )
    out.add_argument(
        "--labels", nargs="+", help="names of the compared runs (default: model names)"
    )
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, not {text!r}") from None


def _compare(args: argparse.Namespace) -> int:
    from megatron_rlpt.eval.report import load_results, write_comparison

    if len(args.compare) < 2:
        raise UsageError("--compare needs at least two runs")
    runs = [load_results(path) for path in args.compare]
    labels = args.labels or [r.get("model") or Path(p).name for r, p in zip(runs, args.compare)]
    if len(labels) != len(runs):
        raise UsageError(f"--labels: {len(labels)} labels for {len(runs)} runs")
    out = Path(args.output_dir or "rlpt_eval/compare")
    write_comparison(runs, labels, out)
    print((out / "comparison.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/comparison.{{json,md,png}}")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "benchmarks": args.benchmarks
        and [b.strip() for b in args.benchmarks.split(",") if b.strip()],
        "data_dir": args.data_dir,
        "gpqa_csv": args.gpqa_csv,
        "output_dir": args.output_dir,
        "n": args.n,
        "n_choice": args.n_choice,
        "ks": args.k and _ints(args.k, "--k"),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "limit": args.limit,
        "chat_template": args.chat_template,
        "system_prompt": args.system_prompt,
        "score_workers": args.score_workers,
    }
    return {k: v for k, v in given.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if not args.model:
        raise UsageError("--model is required (or --compare RUN RUN)")
    from megatron_rlpt.eval.engines import build_engine, choose_engine, resolve_model
    from megatron_rlpt.eval.harness import EvalConfig, evaluate, load_config, load_items

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(args.config) if args.config else EvalConfig()
    config = dataclasses.replace(config, **_overrides(args))
    if not config.output_dir:
        name = re.sub(r"[^\w.-]+", "_", Path(args.model.rstrip("/")).name) or "model"
        config.output_dir = str(Path("rlpt_eval") / name)
    config.validate()
    out_dir = Path(config.output_dir)
    items = load_items(config)  # before the model: a missing file fails in a second
    model_dir = resolve_model(args.model, out_dir)
    kind = choose_engine(args.engine)
    format_prompt = None
    if config.chat_template:
        from transformers import AutoTokenizer

        from megatron_rlpt.eval.prompts import chat_prompt

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError(f"--chat-template: the tokenizer of {model_dir} has no chat template")
        system = config.system_prompt

        def format_prompt(prompt: str) -> str:
            return chat_prompt(tokenizer, prompt, system)

    engine = build_engine(
        kind,
        model_dir,
        seed=config.seed,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    try:
        evaluate(engine, items, config, format_prompt=format_prompt, model=args.model,
                 engine_name=kind)
    finally:
        close = getattr(engine, "close", None)  # the vLLM sidecar is a child process
        if close is not None:
            close()
    print((out_dir / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {out_dir}/results.{{json,md,png}}, samples/ and prompts/")
    return 0
