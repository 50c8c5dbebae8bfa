"""Helpers shared by the stages: this rank's share of a global batch, and micro-batching."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
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


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def order_index(position: int, size: int, seed: int) -> int:
    """The item at `position` of the endless data order: a fresh seeded shuffle of `size` items
    each epoch. The shuffle is computed once per epoch, not once per item."""
    epoch, i = divmod(position, size)
    return int(_epoch_order(seed, epoch, size)[i])


def read_jsonl_fields(path: str | Path, keys: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The `keys` of every record of a JSONL file, as strings; a bad line is a UsageError
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append(tuple(str(record[k]) for k in keys))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                wanted = " and ".join(repr(k) for k in keys)
                raise UsageError(f"{path}:{n}: expected a JSON object with {wanted}") from err
    if not rows:
        raise UsageError(f"{path} holds no records")
    return rows
