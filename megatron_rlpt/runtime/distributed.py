"""Process groups: from the launcher's environment to Megatron's model-parallel state.

Supports torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), Slurm
(`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`, `SLURM_JOB_ID`) and a
plain single process. gloo on CPU, NCCL on GPU. This module and its siblings in
`megatron_rlpt.runtime` are the only code that touches `megatron.core.parallel_state`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

from megatron_rlpt.errors import UsageError


@dataclass
class ParallelConfig:
    """How the model is split across processes. Data parallelism takes the remaining ranks."""

    tensor_parallel: int = 1
    """Tensor-parallel size: each layer's matrices are split across this many ranks."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size: the layers are split into this many consecutive stages."""
    virtual_pipeline: int | None = None
    """Model chunks per pipeline rank for the interleaved schedule; None disables interleaving."""
    context_parallel: int = 1
    """Context-parallel size: the sequence is split across this many ranks (GPU only)."""
    sequence_parallel: bool = False
    """Split activations along the sequence in the TP regions (needs tensor_parallel > 1, GPU)."""
    timeout_minutes: int = 30
    """Collective timeout. A hung rank fails the job after this long instead of hanging forever."""


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    """`torchrun`, `slurm` or `single`."""


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm host list such as `gpu[001-003,7],login1` into host names, in order."""
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        item = item.strip()
        if not item:
            continue
        groups = re.split(r"(\[[^\]]*\])", item)
        expanded = [""]
        for part in groups:
            if part.startswith("[") and part.endswith("]"):
                choices: list[str] = []
                for rng in part[1:-1].split(","):
                    if "-" in rng:
                        lo, hi = rng.split("-", 1)
                        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                            raise UsageError(f"bad range {rng!r} in Slurm host list {hostlist!r}")
                        choices += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
                    else:
                        choices.append(rng)
                expanded = [prefix + c for prefix in expanded for c in choices]
            else:
                expanded = [prefix + part for prefix in expanded]
        hosts += expanded
    if not hosts:
        raise UsageError(f"empty Slurm host list {hostlist!r}")
    return hosts


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as err:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from err


def detect_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read rank, world size and rendezvous address from torchrun, Slurm, or neither.

    torchrun's variables win when both are present (torchrun started inside an sbatch script).
    Under Slurm, `MASTER_ADDR` defaults to the first host of the job's node list and
    `MASTER_PORT` to a port derived from the job id, so every task agrees without coordination.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=_int_env(env, "RANK"),
            world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if "MASTER_ADDR" in env:
            master_addr = env["MASTER_ADDR"]
        elif nodelist:
            master_addr = expand_hostlist(nodelist)[0]
        else:
            raise UsageError("under Slurm, set MASTER_ADDR or SLURM_JOB_NODELIST")
        if "MASTER_PORT" in env:
            master_port = _int_env(env, "MASTER_PORT")
        else:
            job_id = _int_env(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
            master_port = 20000 + job_id % 20000
        return LaunchEnv(
            rank=_int_env(env, "SLURM_PROCID"),
            world_size=_int_env(env, "SLURM_NTASKS"),
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=master_addr,
            master_port=master_port,
            launcher="slurm",
        )
    # A lone process needs no agreed port: take a free one, so that jobs can share a machine.
    port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else _free_port()
    return LaunchEnv(0, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"), port, "single")


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def validate_layout(parallel: ParallelConfig, world_size: int) -> int:
    """Check that the model-parallel sizes divide the world; return the data-parallel size."""
    model_parallel = parallel.tensor_parallel * parallel.pipeline_parallel
    model_parallel *= parallel.context_parallel
    if min(parallel.tensor_parallel, parallel.pipeline_parallel, parallel.context_parallel) < 1:
        raise UsageError("parallel sizes must be >= 1")
    if world_size % model_parallel:
        raise UsageError(
            f"world size {world_size} is not divisible by TP×PP×CP = "
            f"{parallel.tensor_parallel}×{parallel.pipeline_parallel}×"
            f"{parallel.context_parallel} = {model_parallel}"
        )
    if parallel.sequence_parallel and parallel.tensor_parallel == 1:
        raise UsageError("sequence_parallel needs tensor_parallel > 1")
    return world_size // model_parallel


def init_distributed(parallel: ParallelConfig, seed: int = 1234,
                     env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Create the default process group and Megatron's model-parallel groups; seed the RNGs.

    On a machine without CUDA this also enables the CPU compatibility layer and uses gloo.
    """
    from megatron.core import parallel_state, tensor_parallel

    from megatron_rlpt.runtime import cpu_compat

    launch = detect_launch_env(env)
    validate_layout(parallel, launch.world_size)
    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        cpu_compat.enable()
        if parallel.sequence_parallel or parallel.context_parallel > 1:
            raise UsageError("sequence and context parallelism need CUDA")
    else:
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(minutes=parallel.timeout_minutes),
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        context_parallel_size=parallel.context_parallel,
        distributed_timeout_minutes=parallel.timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return launch


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class RankInfo:
    """This rank's coordinates in the TP × PP × DP grid."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def rank_info() -> RankInfo:
    """The current rank's coordinates (after `init_distributed`)."""
    from megatron.core import parallel_state as ps

    return RankInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
    )
