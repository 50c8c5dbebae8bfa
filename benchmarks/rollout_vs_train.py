#!/usr/bin/env python
"""Rollout against training cost per token on the CPU quickstart.

    python benchmarks/rollout_vs_train.py [--run DIR] [--json benchmarks/results/rollout_vs_train.json]

Runs `rlpt quickstart` into a temporary directory (or reads the RLPT run of an existing one with
`--run QUICKSTART_DIR`) and, from its per-step metrics, compares:

- **rollout**: seconds per generated token (the in-process Megatron sampler, KV-cached; every
  completion of every sampling round counts, at its own length);
- **training**: seconds per trained token (forward and backward with the policy-gradient loss
  and the optimizer step, over the response tokens of the kept groups);

and the share of step time spent in rollout, judging (not hidden behind generation) and
training. Both sides run on the same model, machine and step, so the ratio is robust to load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def summarize(run: Path) -> dict[str, float]:
    """Per-token costs from a quickstart directory's RLPT metrics and config."""
    import yaml

    cfg = yaml.safe_load((run / "rlpt" / "config.yaml").read_text())
    per_round = cfg["batch"]["prompts_per_step"] * cfg["grpo"]["group_size"]
    rows = [json.loads(line) for line in (run / "rlpt" / "metrics.jsonl").read_text().splitlines()]
    generated = sum(r["response_length"] * per_round * r["grpo/sampling_rounds"] for r in rows)
    trained = sum(r["train/tokens"] for r in rows)
    rollout_s = sum(r["time/rollout_s"] for r in rows)
    judge_s = sum(r["time/judge_s"] for r in rows)
    train_s = sum(r["time/train_s"] for r in rows)
    step_s = sum(r["time/step_s"] for r in rows)
    rollout_per_tok, train_per_tok = rollout_s / generated, train_s / trained
    return {
        "steps": len(rows), "generated_tokens": generated, "trained_tokens": trained,
        "rollout_ms_per_token": 1000 * rollout_per_tok,
        "train_ms_per_token": 1000 * train_per_tok,
        "rollout_over_train_per_token": rollout_per_tok / train_per_tok,
        "share_rollout": rollout_s / step_s, "share_judge": judge_s / step_s,
        "share_train": train_s / step_s,
        "model": "2 layers, hidden 128, vocab 8192 (the quickstart's tiny GPT)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="an existing quickstart output directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "qs"
            subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "quickstart", "--output",
                            str(run)], check=True, cwd=REPO,
                           env={**os.environ, "WANDB_MODE": "disabled"})
        result = summarize(run)
        if args.run is not None:  # measured earlier, under a load this process did not see
            finished = (run / "rlpt" / "metrics.jsonl").stat().st_mtime
            result["run_finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished))
    result.update(load_avg_start=load, load_avg_end=os.getloadavg()[0])
    print(f"rollout {result['rollout_ms_per_token']:.2f} ms per generated token, training "
          f"{result['train_ms_per_token']:.2f} ms per trained token: ratio "
          f"{result['rollout_over_train_per_token']:.1f}; step time: rollout "
          f"{result['share_rollout']:.0%}, judge {result['share_judge']:.0%}, train "
          f"{result['share_train']:.0%}")
    if args.json:
        from megatron_rlpt.utils.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
