"""Distributed checkpoints of model, optimizer, scheduler, RNG and trainer state.

Layout under a run's checkpoint root:

    latest_checkpointed_iteration.txt    step of the newest complete checkpoint (atomic write)
    iter_0000010/                        Megatron dist-checkpoint (TP/PP-independent layout);
                                         common.pt carries checkpoint_version 3.0 and iteration,
                                         as Megatron-LM's `--load` expects
        COMPLETE                         written last, before the directory gets its final name
        trainer_state.json               step, data position and anything the trainer adds
        rng/rank_00000.pt                this rank's RNG states (restored when the layout matches)

Every rank writes into `.iter_0000010.partial/`; only when all ranks are done does rank 0 mark
it complete and rename it, so a checkpoint cut short by a crash is never taken as the latest.
The layout does not depend on TP/PP: a checkpoint saved at TP=2 loads at TP=1 or PP=2.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.utils.io import atomic_open, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

LATEST_FILE = "latest_checkpointed_iteration.txt"
COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
MEGATRON_LM_CHECKPOINT_VERSION = 3.0
"""`checkpoint_version` Megatron-LM writes into (and expects in) a torch_dist checkpoint."""
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
# Distributed-optimizer states are saved shard by shard (no gather): a run resumes at any DP size
# but the same TP/PP. Megatron's fully reshardable format needs Apex/TE's fused Adam (it has no
# per-parameter `step`); model weights themselves reshard freely across TP/PP.
_OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a finished checkpoint directory."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `root`, or None.

    Trusts the `latest` file when it names a complete checkpoint; otherwise scans, so a crash
    between the rename and the `latest` update still finds the newest one.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    latest = root / LATEST_FILE
    if latest.is_file():
        text = latest.read_text().strip()
        if text.isdigit() and is_complete(checkpoint_dir(root, int(text))):
            candidate = checkpoint_dir(root, int(text))
            newer = [p for p in _complete_checkpoints(root) if _step_of(p) > int(text)]
            return newer[-1] if newer else candidate
    found = _complete_checkpoints(root)
    return found[-1] if found else None


def _step_of(path: Path) -> int:
    match = _ITER_RE.match(path.name)
    return int(match.group(1)) if match else -1


def _complete_checkpoints(root: Path) -> list[Path]:
    dirs = [p for p in root.iterdir() if _ITER_RE.match(p.name) and is_complete(p)]
    return sorted(dirs, key=_step_of)


RUN_CHECKPOINTS = "checkpoints"
"""Where `rlpt train` keeps its checkpoints inside a run directory."""


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint a user named, resolved to the directory that is read."""

    root: Path
    """The checkpoint root: holds the iteration directories (and, for our own roots,
    model_config.json and tokenizer/)."""
    iter_dir: Path
    """The one iteration directory read."""
    megatron_lm: bool = False
    """Written by Megatron-LM's own training loop (no COMPLETE marker, no model_config.json; see
    `convert.megatron_lm`)."""


def _is_checkpoint_root(path: Path) -> bool:
    return (path / LATEST_FILE).is_file() or any(_ITER_RE.match(p.name) or p.name == "release"
                                                 for p in path.iterdir())


def resolve_checkpoint(path: str | os.PathLike) -> CheckpointRef:
    """The checkpoint a user means by `path`: a run directory of `rlpt train` (its newest
    checkpoint under checkpoints/), a checkpoint root (its newest complete iteration) or one
    iteration directory. Megatron-LM's torch_dist checkpoints (a `--save` directory with its
    tracker file, or one iter_N / release directory) are taken too. Every command that takes a
    checkpoint resolves it here.
    """
    from megatron_rlpt.convert import megatron_lm

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint not found: {path}")
    if is_complete(path):
        from megatron_rlpt.convert.model_config_file import MODEL_CONFIG_FILE

        root = path if (path / MODEL_CONFIG_FILE).is_file() else path.parent
        return CheckpointRef(root=root, iter_dir=path)
    if megatron_lm.is_legacy_checkpoint(path):
        megatron_lm.refuse_legacy(path)
    if megatron_lm.is_dist_checkpoint(path) and (path / megatron_lm.COMMON_FILE).is_file():
        return CheckpointRef(root=path.parent, iter_dir=path, megatron_lm=True)
    root = path
    if not _is_checkpoint_root(path) and (path / RUN_CHECKPOINTS).is_dir():
        root = path / RUN_CHECKPOINTS  # a run directory
    latest = latest_checkpoint(root)
    if latest is not None:
        return CheckpointRef(root=root, iter_dir=latest)
    tracked = megatron_lm.tracked_iteration(root) if root.is_dir() else None
    if tracked is not None:
        return CheckpointRef(root=root, iter_dir=tracked, megatron_lm=True)
    raise UsageError(
        f"no complete checkpoint at {path} (expected a run directory of `rlpt train`, a "
        "checkpoint root with iter_*/ directories, one iter_* directory, or a Megatron-LM "
        "torch_dist checkpoint)")


def _unwrap_ddp(chunks: list[Any]) -> list[Any]:
    # DDP would prefix every key with "module."; checkpoints hold the model's own names.
    from megatron.core.distributed import DistributedDataParallel

    return [c.module if isinstance(c, DistributedDataParallel) else c for c in chunks]


def _model_sharded_state_dict(chunks: list[Any]) -> dict[str, Any]:
    chunks = _unwrap_ddp(chunks)
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _materialize_optimizer_state(optimizer: Any) -> None:
    """Give a fresh distributed optimizer its Adam states so its sharded layout can be built.

    Megatron builds that layout from existing states; without Apex/TE a never-stepped optimizer
    has none. The placeholder values are overwritten by the load.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        init = getattr(opt, "_init_optimizer_states_with_dummy_values", None)
        if init is not None and not opt.optimizer.state:
            init()


def _fill_unstepped_adam_states(optimizer: Any) -> list[Any]:
    """Give a never-stepped distributed optimizer on torch Adam the states Adam's first step would
    create (step 0, zero moments); returns the inner optimizers filled, for `_drop_adam_states`.

    Megatron's `DistributedOptimizer.state_dict` reads Adam's step from those states and fails
    when there are none, e.g. when RL step 1 kept no group and skipped its update before a save.
    A dummy step (as on load) would not do here: weight decay would move the live weights.
    """
    filled = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if (getattr(opt, "_init_optimizer_states_with_dummy_values", None) is None
                or not isinstance(inner, torch.optim.Adam | torch.optim.AdamW) or inner.state):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p] = {
                    "step": torch.tensor(0.0, dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        filled.append(inner)
    return filled


def _drop_adam_states(filled: list[Any]) -> None:
    """Leave the optimizers filled for a save as they were: Adam then starts exactly as if fresh."""
    for inner in filled:
        inner.state.clear()


def _adam_states(optimizer: Any) -> list[dict]:
    states = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        states += list(getattr(getattr(opt, "optimizer", None), "state", {}).values())
    return states


def _adam_step(optimizer: Any) -> int:
    """Adam's update count (torch Adam keeps it per parameter; they are all equal)."""
    steps = {int(s["step"]) for s in _adam_states(optimizer) if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"optimizer parameters disagree on the Adam step: {sorted(steps)}")
    return steps.pop() if steps else 0


def _restore_adam_step(optimizer: Any, step: int) -> None:
    """Set torch Adam's per-parameter step after a load, one tensor per parameter.

    Megatron's distributed optimizer, used with torch Adam rather than Apex/TE's fused Adam,
    neither restores this count from a dp-sharded checkpoint nor keeps the tensors apart (torch
    increments each in place, so a shared tensor would advance once per parameter per step). The
    count drives Adam's bias correction, so an exact resume needs it.
    """
    for param_state in _adam_states(optimizer):
        if "step" in param_state:
            old = param_state["step"]
            param_state["step"] = torch.tensor(float(step), dtype=old.dtype, device=old.device)


def _rng_state() -> dict[str, Any]:
    from megatron.core import tensor_parallel

    state: dict[str, Any] = {
        "cpu": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    chunks: list[Any],
    optimizer: Any = None,
    scheduler: Any = None,
    trainer_state: dict[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Save a complete checkpoint for `step` (collective: every rank calls it). Returns its path."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = checkpoint_dir(root, step)
    staging = root / f".{final.name}.partial"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    _barrier()

    sharded = _model_sharded_state_dict(chunks)
    # What Megatron-LM's `--load` reads from the common state besides the model.
    sharded.update(checkpoint_version=MEGATRON_LM_CHECKPOINT_VERSION, iteration=step)
    filled = _fill_unstepped_adam_states(optimizer) if optimizer is not None else []
    try:
        if optimizer is not None:
            sharded["optimizer"] = optimizer.sharded_state_dict(sharded, metadata=_OPTIM_METADATA)
            sharded["adam_step"] = _adam_step(optimizer)
        if scheduler is not None:
            sharded["scheduler"] = scheduler.state_dict()
        dist_checkpointing.save(sharded, str(staging))
    finally:
        _drop_adam_states(filled)

    rng_dir = staging / "rng"
    rng_dir.mkdir(exist_ok=True)
    with atomic_open(rng_dir / f"rank_{_rank():05d}.pt", "wb") as f:
        torch.save(_rng_state(), f)
    _barrier()

    if _rank() == 0:
        state = dict(trainer_state or {})
        state.update(step=step, world_size=_world())
        atomic_write_json(staging / TRAINER_STATE, state)
        atomic_write_text(staging / COMPLETE_MARKER, f"{step}\n")
        if final.exists():  # re-saving a step after a resume
            shutil.rmtree(final)
        os.replace(staging, final)
        atomic_write_text(root / LATEST_FILE, f"{step}\n")
        if keep_last:
            for old in _complete_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(
    path: str | os.PathLike,
    chunks: list[Any],
    optimizer: Any = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint (run directory, root or iteration directory; see `resolve_checkpoint`)
    into the given objects.

    The model may be laid out at any TP/PP. Returns the trainer state saved with it. RNG states
    are restored only when the world size matches the one that saved them.
    """
    from megatron.core import dist_checkpointing

    from megatron_rlpt.convert import megatron_lm

    ref = resolve_checkpoint(path)
    path = ref.iter_dir
    if ref.megatron_lm:
        if optimizer is not None or scheduler is not None:
            raise UsageError(f"{path} was written by Megatron-LM: only its model weights load "
                             "here (use it as run.init_from, not to resume)")
        megatron_lm.load_common(path)  # refuses content outside the allow-list, before megatron-core loads it

    sharded = _model_sharded_state_dict(chunks)
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
        sharded["optimizer"] = optimizer.sharded_state_dict(
            sharded, is_loading=True, metadata=_OPTIM_METADATA
        )
    with megatron_lm.allowed_globals():
        state = dist_checkpointing.load(sharded, str(path))
    chunks = _unwrap_ddp(chunks)
    if len(chunks) == 1:
        chunks[0].load_state_dict(state["model"])
    else:
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(state[f"model{i}"])
    if optimizer is not None:
        # Megatron copies into fp32 main-parameter views of leaf parameters here.
        with torch.no_grad():
            optimizer.load_state_dict(state["optimizer"])
        _restore_adam_step(optimizer, int(state.get("adam_step", 0)))
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])

    if ref.megatron_lm:
        return {"step": int(state.get("iteration") or 0), "path": str(path)}
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    rng_file = path / "rng" / f"rank_{_rank():05d}.pt"
    if restore_rng and trainer_state.get("world_size") == _world() and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    elif restore_rng:
        logger.warning("checkpoint %s was saved by %s ranks; RNG states not restored",
                       path, trainer_state.get("world_size"))
    trainer_state["path"] = str(path)
    return trainer_state
