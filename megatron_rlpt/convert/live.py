"""Hugging Face tensors from a live Megatron model on any TP/PP rank (the rollout weight push).

`hf_named_tensors` walks this rank's model chunks, gathers each tensor-parallel parameter across
the TP group (a collective: every TP rank must consume the iterator in step), turns it into the
full Megatron tensor and maps it with the same rules as checkpoint import and export.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from megatron_rlpt.convert import mapping
from megatron_rlpt.runtime.model import ModelConfig


def _unwrap(module: Any) -> Any:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while not hasattr(module, "decoder") and hasattr(module, "module"):
        module = module.module
    return module


def _chunks(model: Any) -> list[Any]:
    if hasattr(model, "chunks"):  # TrainState or BuiltModel
        model = model.chunks
    if isinstance(model, (list, tuple)):
        return [_unwrap(m) for m in model]
    return [_unwrap(model)]


def _tp_gather(name: str, param: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    tensor = param.detach()
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(tp)]
    torch.distributed.all_gather(shards, tensor.contiguous(),
                                 group=ps.get_tensor_model_parallel_group())
    return mapping.gather_full(name, shards, param.partition_dim)


def _global_name(chunk: Any, local_name: str) -> str:
    """Canonical name with the global layer index (pipeline stages number layers locally)."""
    name = mapping.canonical_name(local_name)
    split = mapping.split_layer_name(name)
    if split is None:
        return name
    local, suffix = split
    layer_number = chunk.decoder.layers[local].layer_number  # 1-based, global
    return f"decoder.layers.{layer_number - 1}.{suffix}"


def _local_tensors(chunks: list[Any], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    known = mapping.rules_by_megatron(cfg)
    for chunk in chunks:
        for local_name, param in chunk.named_parameters():
            name = _global_name(chunk, local_name)
            if name == "output_layer.weight" and cfg.tie_embeddings:
                continue  # the last stage's copy of the shared embedding
            if name not in known:
                raise KeyError(f"parameter {local_name} has no Hugging Face mapping")
            yield from mapping.to_hf(cfg, name, _tp_gather(name, param))


def _from_state_dict(state: Mapping[str, torch.Tensor],
                     cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in state.items():
        name = mapping.canonical_name(name)
        if name.endswith("_extra_state") or (name == "output_layer.weight" and cfg.tie_embeddings):
            continue
        if name not in mapping.rules_by_megatron(cfg):
            raise KeyError(f"state entry {name} has no Hugging Face mapping")
        yield from mapping.to_hf(cfg, name, tensor)


def _across_pipeline(local: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every stage's tensors on every rank: stage by stage, each broadcasts its own."""
    from megatron.core import parallel_state as ps

    group = ps.get_pipeline_model_parallel_group()
    ranks = torch.distributed.get_process_group_ranks(group)
    me = ps.get_pipeline_model_parallel_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    for stage, src in enumerate(ranks):
        source = local if stage == me else None
        while True:
            item = next(source, None) if source is not None else None
            header = [None if item is None else (item[0], tuple(item[1].shape), item[1].dtype)]
            if source is not None:
                torch.distributed.broadcast_object_list(header, src=src, group=group)
                if item is None:
                    break
                torch.distributed.broadcast(item[1].to(device).contiguous(), src=src, group=group)
                yield item
            else:
                torch.distributed.broadcast_object_list(header, src=src, group=group)
                if header[0] is None:
                    break
                name, shape, dtype = header[0]
                tensor = torch.empty(shape, dtype=dtype, device=device)
                torch.distributed.broadcast(tensor, src=src, group=group)
                yield name, tensor


def hf_named_tensors(model: Any, model_cfg: ModelConfig,
                     gather_pipeline: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, tensor)` for the weights of a live Megatron model.

    `model` is a `TrainState`, a `BuiltModel`, a list of model chunks (DDP / Float16Module
    wrappers are looked through), or a full TP=1 state dict with Megatron names. Tensors are full
    (gathered across TP; TP ranks must iterate together), in the model's dtype, the vocabulary
    trimmed to `model_cfg.vocab_size`. Under PP each rank yields its own stage's tensors, or, with
    `gather_pipeline=True`, every stage's tensors (broadcast along the pipeline; all ranks of the
    pipeline group must iterate together).
    """
    if isinstance(model, Mapping):
        yield from _from_state_dict(model, model_cfg)
        return
    local = _local_tensors(_chunks(model), model_cfg)
    if gather_pipeline:
        from megatron.core import parallel_state as ps

        if ps.get_pipeline_model_parallel_world_size() > 1:
            yield from _across_pipeline(local)
            return
    yield from local
