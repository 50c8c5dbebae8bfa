"""Shared fixtures: tiny Hugging Face models converted through `rlpt convert`, and the models
loaded back on two ranks. Each expensive step runs once per session."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.convert.fixtures import ARCHS, build_hf_model, write_tokenizer
from tests.multirank import REPO_ROOT, run_multirank

TRAIN_STEPS = 2


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict:
    """HF models of every architecture; each converted with --tp 1 --pp 2 and --tp 2 and
    exported back, all in one process (the TP=1 logits and weight push taken there too)."""
    base = tmp_path_factory.mktemp("convert")
    tokenizer = write_tokenizer(base / "tokenizer")
    for i, arch in enumerate(ARCHS):
        build_hf_model(arch, base / f"hf-{arch}", tokenizer, seed=i)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "tests.convert.workers", str(base)], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"conversion job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {"base": base, "tokenizer": tokenizer,
            "tp1": torch.load(base / "tp1.pt", weights_only=True)}


@pytest.fixture(scope="session")
def launches(converted) -> dict[str, list]:
    """Per-rank results at TP=2 (the --tp 2 conversions, plus a short training run of the Qwen2
    one saved to `<base>/trained`) and at PP=2 (the --tp 1 conversions)."""
    base = converted["base"]
    tp2 = run_multirank("tests.convert.workers:forward_converted", nproc=2, tp=2, pp=1,
                        roots={a: str(base / f"mg-tp2-{a}") for a in ARCHS},
                        train={"src_root": str(base / "mg-tp2-qwen2"),
                               "out_root": str(base / "trained"), "steps": TRAIN_STEPS})
    pp2 = run_multirank("tests.convert.workers:forward_converted", nproc=2, tp=1, pp=2,
                        roots={a: str(base / f"mg-tp1-{a}") for a in ARCHS})
    return {"tp1": [converted["tp1"]], "tp2": tp2, "pp2": pp2}
