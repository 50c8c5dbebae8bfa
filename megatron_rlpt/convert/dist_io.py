"""The Megatron side of conversion: a one-process Megatron session, and reading model tensors
straight out of a dist-checkpoint, one layer at a time, without building a model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from megatron_rlpt.convert import mapping
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig

# Dist-checkpoint key of a layer's tensor, for the local-spec names that differ from it.
_CKPT_LAYER_KEYS = {v: k for k, v in mapping.TE_ALIASES.items()}


@contextlib.contextmanager
def local_process_group() -> Iterator[None]:
    """A one-process gloo group on an in-memory store (no port), unless one exists already.

    Dist-checkpoint reads need a default process group; conversion runs in one process.
    """
    if torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise UsageError("conversion runs in one process; do not launch it on several ranks")
        yield
        return
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                         world_size=1)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def single_process(seed: int = 0) -> Iterator[None]:
    """Megatron's parallel state for one process at TP=PP=1 (gloo), torn down after.

    Inside a world-1 job that already set it up, reuses it and leaves it in place.
    """
    from megatron.core import parallel_state as ps

    from megatron_rlpt.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        init_distributed,
    )

    if torch.distributed.is_initialized() and ps.model_parallel_is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise UsageError("conversion runs in one process; do not launch it on several ranks")
        yield
        return
    with local_process_group():
        # An empty environment: one process, whatever launcher variables are set.
        init_distributed(ParallelConfig(), seed=seed, env={})
        try:
            yield
        finally:
            destroy_distributed()


def checkpoint_key(name: str) -> tuple[str, int | None]:
    """Dist-checkpoint key of a full Megatron tensor name, and its layer (None if not stacked).

    Layers are stacked along a leading axis under one key; the input and pre-MLP norms are stored
    under Transformer Engine's fused names whatever the layer spec.
    """
    split = mapping.split_layer_name(name)
    if split is None:
        return name, None
    layer, suffix = split
    return "decoder.layers." + _CKPT_LAYER_KEYS.get(suffix, suffix), layer


def check_checkpoint(ckpt_dir: Path, cfg: ModelConfig, source: str = "model_config.json"
                     ) -> tuple[int, dict[str, torch.dtype]]:
    """Compare the checkpoint's tensors with `cfg`; return the padded vocabulary and dtypes.

    Raises UsageError for a missing tensor or a shape that disagrees with the model config.
    """
    from megatron.core import dist_checkpointing

    try:
        meta = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    except Exception as err:
        raise UsageError(f"cannot read dist-checkpoint metadata in {ckpt_dir}: {err}") from None
    emb = meta.get("embedding.word_embeddings.weight")
    if emb is None:
        raise UsageError(f"{ckpt_dir} has no embedding.word_embeddings.weight (not a GPT model?)")
    padded = int(emb.global_shape[0])
    if padded < cfg.vocab_size:
        raise UsageError(f"checkpoint embedding has {padded} rows < vocab_size {cfg.vocab_size}")
    dtypes: dict[str, torch.dtype] = {}
    for name in mapping.rules_by_megatron(cfg):
        key, layer = checkpoint_key(name)
        expected = mapping.megatron_shape(cfg, name, padded)
        if layer is not None:
            expected = (cfg.num_layers, *expected)
        if key not in meta:
            raise UsageError(f"checkpoint {ckpt_dir} lacks tensor {key}")
        found = tuple(meta[key].global_shape)
        if found != expected:
            raise UsageError(
                f"checkpoint tensor {key} has shape {found}, but {source} implies {expected}"
            )
        dtypes[key] = meta[key].dtype
    return padded, dtypes


def read_layer_tensors(ckpt_dir: Path, cfg: ModelConfig, names: list[str], padded_vocab: int,
                       dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Load the full tensors `names` (canonical Megatron names) from a dist-checkpoint at once."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    request = {}
    for name in names:
        key, layer = checkpoint_key(name)
        shape = mapping.megatron_shape(cfg, name, padded_vocab)
        if layer is None:
            request[name] = ShardedTensor.from_rank_offsets(
                key, torch.empty(shape, dtype=dtypes[key]), replica_id=0)
        else:
            # One layer of the stacked tensor: a [1, ...] block at the layer's offset. (Megatron's
            # own prepended-axis form assumes the other layers are read by other ranks.)
            request[name] = ShardedTensor.from_rank_offsets(
                key, torch.empty((1, *shape), dtype=dtypes[key]), (0, layer, cfg.num_layers),
                replica_id=0)
    # Reading one layer is a partial read, which the access-integrity check would refuse.
    from megatron_rlpt.convert.megatron_lm import allowed_globals

    with allowed_globals():  # megatron-core loads common.pt too (Megatron-LM's holds its args)
        loaded = dist_checkpointing.load(request, str(ckpt_dir), validate_access_integrity=False)
    return {name: t[0] if checkpoint_key(name)[1] is not None else t for name, t in loaded.items()}


def checkpoint_hf_tensors(ckpt_dir: Path, cfg: ModelConfig, padded_vocab: int,
                          dtypes: dict[str, torch.dtype]) -> Iterator[tuple[str, torch.Tensor]]:
    """(hf_name, tensor) for the whole model, read layer by layer from the checkpoint."""
    names = list(mapping.rules_by_megatron(cfg))
    layers: dict[int, list[str]] = {}
    for name in names:
        layer = checkpoint_key(name)[1]
        if layer is not None:
            layers.setdefault(layer, []).append(name)
    embedding = [n for n in names if n.startswith("embedding.")]
    tail = [n for n in names if checkpoint_key(n)[1] is None and n not in embedding]
    # Hugging Face order: embedding, layers, final norm and head.
    for group in [embedding, *(layers[i] for i in range(cfg.num_layers)), tail]:
        tensors = read_layer_tensors(ckpt_dir, cfg, group, padded_vocab, dtypes)
        for name in group:
            yield from mapping.to_hf(cfg, name, tensors.pop(name))
