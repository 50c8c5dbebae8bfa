"""A training run killed with SIGKILL and started again ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from megatron_rlpt.synthetic import cycling_corpus
from tests.multirank import REPO_ROOT, run_multirank


def _rlpt(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "megatron_rlpt.cli", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def _config(tmp: Path, out: Path, **run: object) -> Path:
    """A tiny pretraining run of 6 steps saving every 3; `run` overrides `run:` fields."""
    corpus = tmp / "corpus.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps(r) + "\n" for r in cycling_corpus(40, 3)))
    cfg = {
        "run": {"stage": "pretrain", "output_dir": str(out), "steps": 6, "save_every": 3,
                "progress": False, "wandb": {"mode": "disabled"}, **run},
        "model": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
                  "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 8192,
                  "max_position_embeddings": 64},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 2, "min_lr": 1e-4},
        "data": {"path": str(corpus), "seq_length": 64},
        "batch": {"sequences_per_step": 8, "micro_batch_size": 4},
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path: Path):
    straight_cfg = _config(tmp_path, tmp_path / "straight")
    proc = _rlpt(["train", "--config", str(straight_cfg)])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    killed_cfg = _config(tmp_path, tmp_path / "killed")
    marker = tmp_path / "killed" / "checkpoints" / "iter_0000003" / "COMPLETE"
    proc = _rlpt(["train", "--config", str(killed_cfg)])
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never wrote its step-3 checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoints" / "iter_0000006").exists()

    proc = _rlpt(["train", "--config", str(killed_cfg)])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "killed")
    assert [s for s, _, _ in resumed] == [1, 2, 3, 4, 5, 6]  # one line per step, none repeated
    assert resumed == straight
    diff = run_multirank("tests.train.workers:checkpoint_weights_diff", nproc=1,
                         config=str(straight_cfg),
                         ckpt_a=str(tmp_path / "straight" / "checkpoints"),
                         ckpt_b=str(tmp_path / "killed" / "checkpoints"))[0]
    assert diff == 0.0
