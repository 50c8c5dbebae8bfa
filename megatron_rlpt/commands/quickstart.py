"""`rlpt quickstart`: raw corpus to an RLPT-trained tiny model on the CPU, in a few minutes.

Prepares the shipped corpus (clean, dedup, PII, segment, triples), warms a tiny Megatron-Core
GPT up with a short SFT on the prediction format, runs RLPT with GRPO and the rule judge, and
prints a summary. Outputs: the prepared data, both runs (metrics.jsonl, wandb offline runs,
checkpoints) and quickstart.png under --output.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="prepare data, warm up and RLPT-train a tiny model on the CPU",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="runs/quickstart",
                   help="directory for all outputs; must not exist yet (default: %(default)s)")
    from megatron_rlpt.quickstart import QuickstartSettings

    d = QuickstartSettings()
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help="SFT steps (default: %(default)s)")
    p.add_argument("--rl-steps", type=int, default=d.rl_steps,
                   help="RLPT steps (default: %(default)s)")
    p.add_argument("--prompts-per-step", type=int, default=d.prompts_per_step,
                   help="RLPT prompts per step (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.quickstart import QuickstartSettings, run_quickstart

    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already exists and is not empty; choose another --output")
    if min(args.warmup_steps, args.rl_steps, args.prompts_per_step) < 1:
        raise UsageError("--warmup-steps, --rl-steps and --prompts-per-step must be >= 1")
    settings = QuickstartSettings(warmup_steps=args.warmup_steps, rl_steps=args.rl_steps,
                                  prompts_per_step=args.prompts_per_step, seed=args.seed)
    summary = run_quickstart(out, settings)
    width = max(len(k) for k in summary)
    print("\nmegatron-rlpt quickstart")
    for key, value in summary.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    return 0
