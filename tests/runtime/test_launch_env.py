"""Rank, world size and rendezvous address from torchrun and Slurm environments."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.distributed import (
    ParallelConfig,
    detect_launch_env,
    expand_hostlist,
    validate_layout,
)
from tests.multirank import REPO_ROOT


def test_expand_hostlist():
    assert expand_hostlist("gpu[001-003,7],login1") == ["gpu001", "gpu002", "gpu003", "gpu7", "login1"]
    assert expand_hostlist("rack[1-2]-n[08-09]") == ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]
    assert expand_hostlist("node5") == ["node5"]
    with pytest.raises(UsageError):
        expand_hostlist("gpu[5-3]")


def test_slurm_env_maps_ranks():
    env = {"SLURM_PROCID": "13", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
           "SLURM_JOB_NODELIST": "dgx[07-08]", "SLURM_JOB_ID": "123456"}
    launch = detect_launch_env(env)
    assert (launch.rank, launch.world_size, launch.local_rank) == (13, 16, 5)
    assert launch.master_addr == "dgx07"
    assert launch.master_port == 20000 + 123456 % 20000
    assert launch.launcher == "slurm"
    # Explicit MASTER_* override the derived ones; torchrun's variables win over Slurm's.
    assert detect_launch_env({**env, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000"}).master_port == 6000
    torchrun = detect_launch_env({**env, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (torchrun.rank, torchrun.world_size, torchrun.launcher) == (1, 2, "torchrun")
    assert detect_launch_env({}).launcher == "single"
    with pytest.raises(UsageError, match="not an integer"):
        detect_launch_env({**env, "SLURM_PROCID": "x"})


def test_layout_validation():
    assert validate_layout(ParallelConfig(tensor_parallel=2, pipeline_parallel=2), 16) == 4
    with pytest.raises(UsageError, match="not divisible"):
        validate_layout(ParallelConfig(tensor_parallel=4), 6)
    with pytest.raises(UsageError, match="sequence_parallel"):
        validate_layout(ParallelConfig(sequence_parallel=True), 2)


@pytest.mark.multirank
def test_slurm_tasks_form_a_job(tmp_path: Path):
    """Two processes started the way srun starts tasks (Slurm variables only) form TP=2."""
    job_id = str(random.randint(1, 10**6))
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                   SLURM_JOB_NODELIST="127.0.0.1", SLURM_JOB_ID=job_id, OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO_ROOT))
        cmd = [sys.executable, str(REPO_ROOT / "tests" / "multirank.py"),
               "tests.runtime.workers:rank_layout", json.dumps({"tp": 2, "pp": 1}), str(tmp_path)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out[-4000:]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank, r in enumerate(results):
        assert r == {"rank": rank, "world": 2, "tp_rank": rank, "pp_rank": 0, "dp_rank": 0,
                     "dp_size": 1, "local_rank": rank, "launcher": "slurm"}
