#!/usr/bin/env python
"""Reward gain of the quickstart's RLPT stage over several seeds.

    python benchmarks/quickstart_seeds.py [--quickstart DIR] [--seeds 1234,1235,1236,1237,1238]
        [--json benchmarks/results/quickstart_seeds.json]

Runs `rlpt quickstart --seed 1234` (the default seed, the one `tests/test_quickstart.py` runs) into
a temporary directory, or reuses one with `--quickstart DIR`, then reruns its RLPT stage from the
same warm-up checkpoint with each other seed (only `run.seed` changes). The gain of a seed is what the test checks: mean reward of the
last four steps minus that of the first four. The JSON holds each seed's rewards and gain and
their mean and sample standard deviation, from which the test's threshold is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
QUICKSTART_SEED = 1234  # QuickstartSettings.seed


def gain(rewards: list[float]) -> float:
    """The test's statistic: mean of the last four steps' rewards minus the first four's."""
    return sum(rewards[-4:]) / 4 - sum(rewards[:4]) / 4


def _rewards(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    return [r["reward"] for r in rows]


def rerun_rlpt(qs: Path, out: Path, seed: int) -> list[float]:
    """The quickstart's RLPT stage from its warm-up checkpoint, with another seed."""
    cfg = yaml.safe_load((qs / "rlpt" / "config.yaml").read_text())
    cfg["run"].update(seed=seed, output_dir=str(out), progress=False, wandb={"mode": "disabled"})
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "train", "--config", str(config)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return _rewards(out)


def summarize(per_seed: list[dict]) -> dict:
    gains = [s["gain"] for s in per_seed]
    return {"gain_mean": statistics.mean(gains),
            "gain_std": statistics.stdev(gains) if len(gains) > 1 else float("nan"),
            "gain_min": min(gains), "gain_max": max(gains), "n_seeds": len(gains)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quickstart", type=Path, help="an existing quickstart output directory "
                        f"(run with the default seed {QUICKSTART_SEED})")
    parser.add_argument("--seeds", default="1234,1235,1236,1237,1238",
                        help="comma-separated RLPT seeds (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from megatron_rlpt.utils.io import atomic_write_json

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result: dict = {"warmup_seed": QUICKSTART_SEED, "cpu_count": os.cpu_count(),
                    "load_avg_start": os.getloadavg()[0], "seeds": []}
    with tempfile.TemporaryDirectory() as tmp:
        qs = args.quickstart
        if qs is None:
            qs = Path(tmp) / "qs"
            subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "quickstart", "--output",
                            str(qs), "--seed", str(QUICKSTART_SEED)], check=True, cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL)
        for seed in seeds:
            t0 = time.perf_counter()
            if seed == QUICKSTART_SEED and (qs / "rlpt" / "metrics.jsonl").is_file():
                rewards = _rewards(qs / "rlpt")  # the quickstart's own RLPT stage
            else:
                rewards = rerun_rlpt(qs, Path(tmp) / f"rlpt-{seed}", seed)
            result["seeds"].append({"seed": seed, "rewards": rewards, "gain": gain(rewards),
                                    "seconds": time.perf_counter() - t0})
            print(f"seed {seed}: gain {gain(rewards):+.3f}", flush=True)
            result.update(summarize(result["seeds"]), load_avg_end=os.getloadavg()[0])
            if args.json:  # after every seed: a long run killed midway keeps what it measured
                atomic_write_json(args.json, result)
    print(f"gain over {len(seeds)} seeds: mean {result['gain_mean']:+.3f}, "
          f"sd {result['gain_std']:.3f}, min {result['gain_min']:+.3f}")


if __name__ == "__main__":
    main()
