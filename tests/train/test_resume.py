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


def _wandb_history(run_file: Path) -> tuple[str, list[int]]:
    """(run id, history steps) of an offline wandb run, read from its `.wandb` file: a header,
    then LevelDB-log records (32 KiB blocks; FULL/FIRST/MIDDLE/LAST) of `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", run_file
    pos, block, part, run_id, steps = 7, 32768, b"", "", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):
            part = (b"" if kind == 2 else part) + chunk
            continue
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(part + chunk if kind == 4 else chunk)
        which = record.WhichOneof("record_type")
        if which == "run":
            run_id = record.run.run_id
        elif which == "history":
            steps.append(record.history.step.num)
    return run_id, steps


def test_signal_stops_with_a_checkpoint_and_resume_continues_the_wandb_run(tmp_path: Path):
    """SIGUSR1 mid-run: the trainer saves the step it is on and says so; the rerun says where it
    resumed, prints plain per-step lines (its stdout is no terminal) and logs the later steps to
    the same wandb run id; metrics.jsonl stays strict JSON."""
    run = tmp_path / "run"
    cfg = _config(tmp_path, run, steps=6, save_every=100, progress=True,
                  wandb={"mode": "offline"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_MODE", None)
    logs = [tmp_path / "attempt0.log", tmp_path / "attempt1.log"]
    with open(logs[0], "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "megatron_rlpt.cli", "train", "--config",
                                 str(cfg)], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=600) == 0, logs[0].read_text()[-3000:]
    first = logs[0].read_text()
    iters = sorted(p.name for p in (run / "checkpoints").glob("iter_*"))
    assert len(iters) == 1, iters  # no periodic save: this one was made on the signal
    stopped = int(iters[0].removeprefix("iter_"))
    assert 1 <= stopped < 6
    assert f"SIGUSR1 received; saved step {stopped} and stopped" in first
    assert "starting pretrain at step 0 of 6" in first
    assert "\r" not in first and f"step {stopped}/6 |" in first

    with open(logs[1], "w") as out:
        proc = subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "train", "--config",
                               str(cfg)], cwd=REPO_ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=600)
    second = logs[1].read_text()
    assert proc.returncode == 0, second[-3000:]
    assert f"resumed from {run / 'checkpoints' / iters[0]} at step {stopped} of 6" in second
    assert "step 6/6 |" in second and f"step {stopped}/6 |" not in second
    assert "finished step 6 of 6" in second

    def refuse(token: str) -> float:
        raise ValueError(token)

    rows = [json.loads(line, parse_constant=refuse) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["consumed/samples"] for r in rows] == [8 * s for s in range(1, 7)]

    run_id = (run / "wandb_run_id").read_text().strip()
    dirs = sorted((run / "wandb").glob("offline-run-*"))
    assert [d.name.rsplit("-", 1)[1] for d in dirs] == [run_id, run_id], dirs
    histories = [_wandb_history(d / f"run-{run_id}.wandb") for d in dirs]
    assert [h[0] for h in histories] == [run_id, run_id]
    assert histories[0][1] == list(range(1, stopped + 1))
    assert histories[1][1] == list(range(stopped + 1, 7))  # continues, nothing logged twice
