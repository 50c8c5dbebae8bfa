"""A training run killed with SIGKILL at 5 random points, resumed after each, ends exactly where
an uninterrupted run does: the same losses, one metrics line per step, the same final weights.

The kill points are seeded: each is either "while checkpoint k is being saved" (as soon as its
staging directory appears) or "a random moment after checkpoint k is complete" (mid-step).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multirank import REPO_ROOT, run_multirank
from tests.train.test_resume import _config as resume_config

STEPS, KILLS = 12, 5


def _config(tmp: Path, out: Path) -> Path:
    return resume_config(tmp, out, steps=STEPS, save_every=1, keep_last=2)


def _train(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "megatron_rlpt.cli", "train", "--config",
                             str(cfg)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]


def _made_since(path: Path, t_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= t_ns
    except FileNotFoundError:
        return False


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_five_kills_and_resumes_match_an_uninterrupted_run(tmp_path: Path):
    straight_cfg = _config(tmp_path, tmp_path / "straight")
    _finish(_train(straight_cfg))

    rng = random.Random(20261123)
    steps = sorted(rng.sample(range(1, STEPS - 1), KILLS))
    plan = [(s, rng.choice(["saving", "after"]), rng.uniform(0.0, 0.2)) for s in steps]
    run = tmp_path / "killed"
    cfg = _config(tmp_path, run)
    ckpts = run / "checkpoints"
    hit = []
    for step, kind, delay in plan:
        staging = ckpts / f".iter_{step:07d}.partial"
        final = ckpts / f"iter_{step:07d}"
        launched = time.time_ns()
        proc = _train(cfg)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if kind == "saving" and _made_since(staging, launched):  # not an earlier run's
                break
            if final.exists():
                # "after": a random moment within the next step (at most its checkpoint save)
                end = time.monotonic() + (delay if kind == "after" else 0.0)
                nxt = ckpts / f".iter_{step + 1:07d}.partial"
                while time.monotonic() < end and not nxt.exists():
                    time.sleep(0.002)
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before the kill at step {step}"
        # What the kill interrupted: a save in progress, or the steps after a complete one.
        saving = [p.name for p in ckpts.glob(".iter_*.partial")] if ckpts.exists() else []
        hit.append((step, f"saving {saving[0]}" if saving else "mid-step"))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert not (ckpts / f"iter_{STEPS:07d}").exists(), "the kill came after the last step"
    _finish(_train(cfg))
    print(f"kills (step, interrupted): {hit}")

    straight, resumed = _metrics(tmp_path / "straight"), _metrics(run)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))  # none lost, none repeated
    for a, b in zip(straight, resumed):
        assert (a["step"], a["loss"], a["grad_norm"], a["lr"]) == \
            (b["step"], b["loss"], b["grad_norm"], b["lr"])
    assert not list(ckpts.glob(".*.partial"))  # every interrupted save was cleaned up or redone
    diff = run_multirank("tests.train.workers:checkpoint_weights_diff", nproc=1,
                         config=str(straight_cfg), ckpt_a=str(tmp_path / "straight" / "checkpoints"),
                         ckpt_b=str(ckpts))[0]
    assert diff == 0.0
