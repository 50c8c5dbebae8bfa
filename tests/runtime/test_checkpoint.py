"""Dist-checkpoints: resharding across layouts, exact resume, and atomic publication."""

from __future__ import annotations

import pytest
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.checkpoint import (
    COMPLETE_MARKER,
    LATEST_FILE,
    checkpoint_dir,
    latest_checkpoint,
    resolve_checkpoint,
)
from tests.multirank import run_multirank

TOL = 1e-5


@pytest.fixture(scope="module")
def tp2_checkpoint(tmp_path_factory):
    """Two training steps at TP=2 with the distributed optimizer off, then a save."""
    root = tmp_path_factory.mktemp("tp2")
    ranks = run_multirank("tests.runtime.workers:train_and_save", nproc=2, ckpt=str(root),
                          arch="qwen2", tp=2, pp=1, dist_opt=False)
    return {"root": str(root), "logits": ranks[0]["logits"], "loss": ranks[0]["loss"]}


@pytest.mark.multirank
def test_tp2_checkpoint_loads_at_tp1(tp2_checkpoint):
    out = run_multirank("tests.runtime.workers:load_and_forward", nproc=1,
                        ckpt=tp2_checkpoint["root"], arch="qwen2", tp=1, pp=1)[0]
    assert out["step"] == 2
    assert (out["logits"] - tp2_checkpoint["logits"]).abs().max().item() <= TOL


@pytest.mark.multirank
def test_tp2_checkpoint_loads_at_pp2(tp2_checkpoint):
    ranks = run_multirank("tests.runtime.workers:load_and_forward", nproc=2,
                          ckpt=tp2_checkpoint["root"], arch="qwen2", tp=1, pp=2)
    assert (ranks[1]["logits"] - tp2_checkpoint["logits"]).abs().max().item() <= TOL


def _assert_resume_matches_straight(tmp_path, saved_at: int, total: int) -> None:
    """Train `saved_at` steps and save, resume and train to `total`: metrics and weights equal
    `total` uninterrupted steps (DP=2, distributed optimizer)."""
    ref_root = tmp_path / "ref"
    run_multirank("tests.runtime.workers:save_reference", nproc=1, ckpt=str(ref_root), arch="llama")
    straight = run_multirank("tests.runtime.workers:train_from", nproc=2, ckpt=str(ref_root),
                             arch="llama", tp=1, pp=1, dist_opt=True, steps=total)[0]
    run_root = tmp_path / "run"
    run_multirank("tests.runtime.workers:train_from_and_save", nproc=2, ckpt=str(ref_root),
                  out=str(run_root), arch="llama", dist_opt=True, steps=saved_at)
    resumed = run_multirank("tests.runtime.workers:resume_and_train", nproc=2, ckpt=str(run_root),
                            arch="llama", tp=1, pp=1, dist_opt=True, steps=total - saved_at)[0]
    assert resumed["trainer_state"]["step"] == saved_at
    for a, b in zip(straight["metrics"][saved_at:], resumed["metrics"], strict=True):
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], abs=1e-6)
        assert a["lr"] == b["lr"]
    for name, w in straight["weights"].items():
        assert torch.equal(w, resumed["weights"][name]), name


@pytest.mark.multirank
def test_resume_continues_exactly(tmp_path):
    """2 steps + save + resume + 2 steps equals 4 uninterrupted steps (DP=2, dist optimizer)."""
    _assert_resume_matches_straight(tmp_path, saved_at=2, total=4)


def test_partial_checkpoint_is_never_latest(tmp_path):
    """A crash mid-save leaves `.iter_*.partial` or an unmarked dir: neither is picked up."""
    done = checkpoint_dir(tmp_path, 5)
    done.mkdir(parents=True)
    (done / COMPLETE_MARKER).write_text("5\n")
    (tmp_path / LATEST_FILE).write_text("5\n")
    (tmp_path / ".iter_0000010.partial").mkdir()  # crashed while writing
    checkpoint_dir(tmp_path, 15).mkdir()  # renamed by hand, never completed
    assert latest_checkpoint(tmp_path) == done
    # A complete checkpoint newer than the `latest` file (crash before the file was updated).
    newer = checkpoint_dir(tmp_path, 20)
    newer.mkdir()
    (newer / COMPLETE_MARKER).write_text("20\n")
    assert latest_checkpoint(tmp_path) == newer
    assert latest_checkpoint(tmp_path / "missing") is None


def _complete(root, step):
    path = checkpoint_dir(root, step)
    path.mkdir(parents=True)
    (path / COMPLETE_MARKER).write_text(f"{step}\n")
    return path


def test_resolve_checkpoint_takes_run_dir_root_or_iter_dir(tmp_path):
    """A run directory, its checkpoints root and one iteration directory all resolve, to the
    newest complete checkpoint unless one is named."""
    run = tmp_path / "runs" / "sft"
    root = run / "checkpoints"
    first, newest = _complete(root, 10), _complete(root, 20)
    (root / LATEST_FILE).write_text("20\n")
    for given in (run, root, str(root)):
        ref = resolve_checkpoint(given)
        assert (ref.root, ref.iter_dir) == (root, newest)
    ref = resolve_checkpoint(first)
    assert (ref.root, ref.iter_dir) == (root, first)


def test_resolve_checkpoint_refusals(tmp_path):
    with pytest.raises(UsageError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UsageError, match="no complete checkpoint at .*run directory"):
        resolve_checkpoint(tmp_path / "run")
    checkpoint_dir(tmp_path / "run" / "checkpoints", 5).mkdir()  # never completed
    with pytest.raises(UsageError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "run")


@pytest.mark.multirank
def test_save_before_first_step_resumes_exactly(tmp_path):
    """A save before any optimizer step (e.g. RL step 1 kept no group) works with the distributed
    optimizer on torch Adam, and a resume from it matches an uninterrupted run."""
    _assert_resume_matches_straight(tmp_path, saved_at=0, total=2)
