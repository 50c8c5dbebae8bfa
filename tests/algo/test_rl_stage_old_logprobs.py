"""`rlpt train` on the shipped CPU example with the in-process engine: each step recomputes the
old log-probs (ratio exactly 1), logs the mismatch against the engine's (float rounding only),
and the `engine` option trains with its truncated importance weight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.multirank import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "quickstart_cpu.yaml"
STEPS = 2


def _train(out: Path, data: Path, *overrides: str) -> list[dict]:
    args = [sys.executable, "-m", "megatron_rlpt.cli", "train", "--config", str(EXAMPLE),
            f"data.path={data}", f"run.output_dir={out}", f"run.steps={STEPS}",
            f"run.save_every={STEPS}", "run.progress=false",
            # Every group kept, so that every step trains.
            "grpo.drop_zero_variance_groups=false", *overrides]
    proc = subprocess.run(args, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_recompute_by_default(quickstart_prepared: Path, tmp_path: Path):
    rows = _train(tmp_path / "run", quickstart_prepared)
    assert len(rows) == STEPS
    for r in rows:
        assert r["ratio_mean"] == 1.0 and r["clip_frac"] == 0.0 and r["approx_kl"] == 0.0
        # The in-process engine computes the same log-probs up to float rounding.
        assert 0.0 <= r["mismatch/logp_abs_diff"] <= 1e-4
        assert abs(r["mismatch/ratio_max"] - 1) <= 1e-4 and abs(r["mismatch/ratio_min"] - 1) <= 1e-4
        assert abs(r["tis/weight_mean"] - 1) <= 1e-4
        assert r["time/old_logprobs_s"] > 0


def test_engine_logprobs_with_tis(quickstart_prepared: Path, tmp_path: Path):
    rows = _train(tmp_path / "run", quickstart_prepared, "loss.old_logprobs=engine", "loss.tis_cap=1.5")
    for r in rows:
        assert r["ratio_mean"] == 1.0  # normalised: the engine enters through the weight
        assert abs(r["tis/weight_mean"] - 1) <= 1e-4 and r["tis/capped_frac"] == 0.0
        assert r["mismatch/logp_abs_diff"] <= 1e-4
        assert "time/old_logprobs_s" not in r
