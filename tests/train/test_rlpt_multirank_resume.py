"""An RLPT run on two data-parallel ranks under the real `torchrun`, killed with SIGKILL after its
first checkpoint and started again, ends where an uninterrupted run does.

The policy is a tiny random model, so every reward is 0; zero-variance groups are kept and an
entropy bonus gives each step a gradient, so the weights move through rollouts, the rule judge,
the loss and the optimizer on both ranks, and every RNG and the data cursor must be restored for
the resumed step to match.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.multirank import REPO_ROOT, run_multirank

pytestmark = pytest.mark.multirank

KEYS = ("reward", "loss", "grad_norm", "entropy", "response_length", "train/tokens")


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory) -> Path:
    from megatron_rlpt.data.config import PrepareConfig
    from megatron_rlpt.data.pipeline import prepare

    root = tmp_path_factory.mktemp("rlpt-dp2")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][1:4]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n"
                              for d in docs))
    cfg = PrepareConfig()
    cfg.triples.max_triples_per_document = 6
    prepare([str(corpus)], root / "data", cfg=cfg, progress=False)
    return root / "data"


def _config(tmp: Path, data: Path, out: Path) -> Path:
    cfg = {
        "run": {"stage": "rlpt", "output_dir": str(out), "steps": 2, "save_every": 1,
                "wandb": {"mode": "disabled"}},
        "model": {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
                  "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 8192,
                  "max_position_embeddings": 256},
        "optim": {"lr": 1e-2, "schedule": "constant", "warmup_steps": 0},
        "data": {"path": str(data)},
        "batch": {"prompts_per_step": 2, "micro_batch_size": 4},
        "rollout": {"max_new_tokens": 12, "max_prompt_tokens": 96},
        "task": {"lam": 0.0},  # ASR only: the MSR reward has no value in any step
        "judge": {"kind": "rule"},
        "grpo": {"group_size": 4, "drop_zero_variance_groups": False},
        "loss": {"entropy_coef": 0.05},
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
             "-m", "megatron_rlpt.cli", "train", "--config", str(config)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 0, log.read_text()[-6000:]
    return log.read_text()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each worker runs in a session of its own)."""
    procs = [psutil.Process(proc.pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)
    proc.wait(timeout=60)


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl read as a strict JSON parser would (NaN or Infinity are errors)."""
    def refuse(token: str) -> float:
        raise ValueError(f"metrics.jsonl is not JSON: {token}")

    return [json.loads(line, parse_constant=refuse)
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dp2_rlpt_killed_and_resumed_matches_uninterrupted_run(prepared: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    straight_cfg = _config(tmp_path, prepared, straight)
    _finish(_torchrun(straight_cfg, tmp_path / "straight.log"), tmp_path / "straight.log")
    a = _metrics(straight)
    assert [m["step"] for m in a] == [1, 2]
    assert all(m["grpo/kept_groups"] == 2 for m in a), a  # one prompt per rank, both trained
    assert a[1]["loss"] != a[0]["loss"]
    assert all(m["reward/msr"] is None for m in a)  # null, not NaN

    killed = tmp_path / "killed"
    cfg = _config(tmp_path, prepared, killed)
    log = tmp_path / "killed.log"
    proc = _torchrun(cfg, log)
    marker = killed / "checkpoints" / "iter_0000001" / "COMPLETE"
    deadline = time.time() + 900
    try:
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-6000:]
            time.sleep(0.05)
    finally:
        _kill_tree(proc)
    assert not (killed / "checkpoints" / "iter_0000002").exists(), "killed too late: test is moot"

    out = _finish(_torchrun(cfg, log), log)
    assert f"resumed from {killed / 'checkpoints' / 'iter_0000001'} at step 1 of 2" in out
    b = _metrics(killed)
    assert [m["step"] for m in b] == [1, 2]  # one line per step, none repeated
    for x, y in zip(a, b):
        assert {k: y[k] for k in KEYS} == {k: x[k] for k in KEYS}, x["step"]
    diff = run_multirank("tests.train.workers:checkpoint_weights_diff", nproc=1,
                         config=str(cfg),
                         ckpt_a=str(straight / "checkpoints" / "iter_0000002"),
                         ckpt_b=str(killed / "checkpoints" / "iter_0000002"))[0]
    assert diff == 0.0
