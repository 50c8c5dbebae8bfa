#!/usr/bin/env python
"""Peak memory of continued pre-training against the size of the corpus.

    python benchmarks/pretrain_rss.py [--tokens 100000000] [--small-tokens 200000]
        [--steps 3] [--workdir /tmp/rlpt-pretrain-rss] [--json benchmarks/results/pretrain_rss.json]

Writes two synthetic Megatron IndexedDatasets of random token ids (documents of 200-1800 tokens,
uint16) with Megatron-Core's own IndexedDatasetBuilder: a large one (default 100M tokens, 200 MB)
and a small one (0.2M tokens). For each, one `rlpt train` process runs `--steps` pretraining
steps of a tiny model (2 layers, hidden 64, seq_length 256, 8 sequences per step) from a cold
index cache, so the peak includes building Megatron's dataset indices. The peak RSS of that
process comes from the kernel (`wait4`'s ru_maxrss). Growth is the large run's peak minus the
small run's; the target is growth <= 10% of the large `.bin`'s bytes. The last line printed is
growth / .bin bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VOCAB = 8192


def write_corpus(prefix: Path, tokens: int, seed: int) -> int:
    """Random documents totalling `tokens` ids; returns the .bin size in bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    written = 0
    while written < tokens:
        chunk = rng.integers(1, VOCAB, size=min(1 << 22, tokens - written), dtype=np.uint16)
        cuts = np.cumsum(rng.integers(200, 1800, size=len(chunk) // 200 + 1))
        cuts = cuts[cuts < len(chunk)]
        for doc in np.split(chunk, cuts):
            builder.add_document(doc, [len(doc)])
        written += len(chunk)
    builder.finalize(f"{prefix}.idx")
    return Path(f"{prefix}.bin").stat().st_size


def peak_rss_of_run(prefix: Path, run_dir: Path, steps: int) -> tuple[int, float]:
    """Peak RSS (bytes) and wall time of one `rlpt train` pretraining process on `prefix`."""
    import yaml

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = {"run": {"stage": "pretrain", "output_dir": str(run_dir), "steps": steps,
                   "save_every": 10 * steps, "progress": False, "wandb": {"mode": "disabled"}},
           "model": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
                     "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": VOCAB,
                     "max_position_embeddings": 256},
           "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
           "data": {"path": str(prefix), "seq_length": 256},
           "batch": {"sequences_per_step": 8, "micro_batch_size": 4}}
    config = run_dir / "config.in.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "megatron_rlpt.cli", "train", "--config",
                             str(config)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rlpt train failed on {prefix}:\n{out[-4000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    from megatron_rlpt.utils.io import atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000_000)
    ap.add_argument("--small-tokens", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rlpt-pretrain-rss"))
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/pretrain_rss.json")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, tokens, seed in (("small", args.small_tokens, 1), ("large", args.tokens, 2)):
        prefix = args.workdir / f"{name}_text_document"
        t0 = time.perf_counter()
        bin_bytes = write_corpus(prefix, tokens, seed)
        written_s = time.perf_counter() - t0
        rss, wall = peak_rss_of_run(prefix, args.workdir / f"run_{name}", args.steps)
        runs[name] = {"tokens": tokens, "bin_bytes": bin_bytes, "peak_rss_bytes": rss,
                      "run_wall_s": round(wall, 1), "corpus_write_s": round(written_s, 1)}
        print(f"{name}: {tokens:,} tokens, .bin {bin_bytes / 2**20:.1f} MiB, peak RSS "
              f"{rss / 2**20:.1f} MiB ({wall:.0f} s)", flush=True)
    growth = runs["large"]["peak_rss_bytes"] - runs["small"]["peak_rss_bytes"]
    ratio = growth / runs["large"]["bin_bytes"]
    result = {
        "benchmark": "pretrain_rss",
        "what": "peak RSS of one rlpt train pretraining process (cold index cache, "
                f"{args.steps} steps, tiny model, seq_length 256) on a large vs a small "
                "synthetic Megatron IndexedDataset",
        "runs": runs,
        "rss_growth_bytes": growth,
        "growth_over_bin_bytes": round(ratio, 4),
        "target_growth_over_bin_bytes": 0.10,
        "meets_target": ratio <= 0.10,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"RSS growth {growth / 2**20:.1f} MiB for a {runs['large']['bin_bytes'] / 2**20:.0f} "
          f"MiB corpus; wrote {args.json}")
    print(f"{ratio:.4f}")


if __name__ == "__main__":
    main()
