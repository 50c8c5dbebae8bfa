"""`bash benchmarks/gpu/run.sh --cpu-dry-run`: the GPU acceptance run's code, on tiny models on the
CPU, so that it cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multirank import REPO_ROOT

RUN = REPO_ROOT / "benchmarks" / "gpu" / "run.sh"
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "gpu"))


def _run(out: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    return subprocess.run(["bash", str(RUN), "--cpu-dry-run", "--out", str(out), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cpu_dry_run_checks_every_section(tmp_path: Path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["mode"] == "cpu" and result["all_ok"]
    assert result["env"]["device"] == "cpu"
    train = result["train_step"]
    assert train["fused"]["losses"][-1] < train["fused"]["losses"][0]
    # On the CPU every fusion stays off, whatever the switches say.
    assert not any(train["fused"]["fusions"].values())
    assert result["checkpoint"]["max_logit_diff_after_load"] == 0.0
    assert result["rl_step"]["steps"] == 2
    assert result["mfu"]["tokens_per_step"] > 0 and result["mfu"]["achieved_tflops"] > 0
    assert result["decode"]["generated_tokens"] > 0
    assert 0 < result["logprob_memory"]["logits"]["ratio"] < 1
    # The GPU path needs nothing that prepare's text tools or the wandb client bring.
    imported = set().union(*(result[s]["third_party_modules"] for s in
                             ("train_step", "checkpoint", "rl_step", "decode")))
    assert not imported & {"nltk", "datasketch", "math_verify"}
    md = (tmp_path / "gpu.md").read_text()
    for name in ("train_step", "checkpoint", "rl_step", "mfu", "decode", "logprob_memory"):
        assert f"| {name} |" in md
    assert "FAILED" not in md


@pytest.mark.slow
def test_a_failing_section_is_recorded_and_the_others_run(tmp_path: Path):
    proc = _run(tmp_path, "--only", "checkpoint,logprob_memory", "--fail-section", "checkpoint")
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert not result["checkpoint"]["ok"]
    assert "injected" in result["checkpoint"]["error"]
    assert result["logprob_memory"]["ok"] and not result["all_ok"]
    assert "| checkpoint | FAILED: RuntimeError: failure injected" in (tmp_path / "gpu.md").read_text()


def test_flops_formula_counts_matmuls_and_attention():
    from bench import train_flops_per_token

    m = dict(num_layers=2, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
             num_query_groups=1, vocab_size=10)
    d = 4
    matmul_weights = 2 * (8 * 2 * d + 8 * 1 * d * 2 + 2 * d * 8 + 3 * 8 * 16) + 8 * 10
    attention = 2 * 2 * 2 * 32 * 2 * d  # layers x (QK^T + AV) x 2 FLOPs x seq x heads x d
    assert train_flops_per_token(m, seq=32) == 3 * (2 * matmul_weights + attention)
