"""`run.init_from` under a mixed-precision optimizer: training continues from the loaded weights.

bf16 parameters are stepped through fp32 main copies that the optimizer makes when it is built,
from the random initialisation. The weights loaded from `run.init_from` afterwards must reach
those copies, or the first optimizer step writes the random init back over them (every paper
config trains in bf16 from a previous stage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.multirank import REPO_ROOT, run_multirank

QUICKSTART = REPO_ROOT / "examples" / "quickstart_cpu.yaml"


def _train(out: Path, data: Path, *overrides: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_rlpt.cli", "train", "--config", str(QUICKSTART),
         "run.stage=sft", f"data.path={data}", f"run.output_dir={out}", "run.steps=1",
         "run.progress=false", "model.params_dtype=bf16", "optim.distributed_optimizer=true",
         "batch.sequences_per_step=2", "batch.micro_batch_size=1", *overrides],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_bf16_run_from_init_from_keeps_the_loaded_weights(tmp_path: Path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count to {n}.", "response": " ".join(
        str(i) for i in range(1, n + 1))}) + "\n" for n in range(2, 6)))
    _train(tmp_path / "a", data, "run.seed=1")
    # Another seed (so another random init), and a learning rate too small to move a bf16
    # weight: the step must leave exactly the weights it loaded.
    _train(tmp_path / "b", data, "run.seed=2", f"run.init_from={tmp_path / 'a'}",
           "optim.lr=1e-12", "optim.schedule=constant")
    diff = run_multirank("tests.train.workers:checkpoint_weights_diff", nproc=1,
                         config=str(tmp_path / "b" / "config.yaml"),
                         ckpt_a=str(tmp_path / "a" / "checkpoints" / "iter_0000001"),
                         ckpt_b=str(tmp_path / "b" / "checkpoints" / "iter_0000001"))[0]
    assert diff == 0.0
