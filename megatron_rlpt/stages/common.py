"""Helpers shared by the stages: this rank's share of a global batch, and micro-batching."""

from __future__ import annotations

import torch

from megatron_rlpt.errors import UsageError


def data_parallel_share(total: int) -> tuple[int, int]:
    """(first index, count) of this data-parallel rank's share of `total` global items."""
    from megatron.core import parallel_state as ps

    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    if total % dp:
        raise UsageError(f"global batch {total} is not divisible by the data-parallel size {dp}")
    per_rank = total // dp
    return rank * per_rank, per_rank


def global_positions(step: int, per_step: int) -> list[int]:
    """Positions in the endless data order that this DP rank trains on at `step` (1-based)."""
    first, count = data_parallel_share(per_step)
    base = (step - 1) * per_step + first
    return list(range(base, base + count))


def micro_batches(rows: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Cut a dict of row-aligned tensors into micro-batches of `size` rows."""
    n = len(next(iter(rows.values())))
    if n % size:
        raise UsageError(f"{n} sequences per rank are not divisible by micro_batch_size {size}")
    return [{k: v[i : i + size] for k, v in rows.items()} for i in range(0, n, size)]
