"""One optimizer step through Megatron's `forward_backward_func`, and the next-token loss.

Losses follow Megatron's per-token contract (`calculate_per_token_loss=True`): a loss function
returns `(loss_sum, num_tokens, {"name": tensor([sum, count])})`; Megatron sums `num_tokens` over
micro-batches and data-parallel ranks and divides the gradients by it, so the update is the
global token mean however the batch is split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from megatron_rlpt.runtime.model import BuiltModel, ModelConfig, build_model
from megatron_rlpt.runtime.optim import OptimConfig, build_optimizer, wrap_ddp


@dataclass
class TrainState:
    """The DDP-wrapped model chunks, optimizer and scheduler of this rank."""

    chunks: list[Any]
    optimizer: Any
    scheduler: Any
    model: BuiltModel


def setup_training(model_cfg: ModelConfig, parallel: Any, optim: OptimConfig,
                   total_steps: int) -> TrainState:
    """Build the model, wrap it in DDP, create the optimizer and connect Megatron's hooks."""
    from megatron.core.distributed import finalize_model_grads

    built = build_model(model_cfg, parallel)
    chunks = wrap_ddp(built.chunks, built.config, optim)
    optimizer, scheduler = build_optimizer(chunks, optim, model_cfg.params_dtype, total_steps)
    cfg = built.config
    cfg.grad_scale_func = optimizer.scale_loss
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    return TrainState(chunks=chunks, optimizer=optimizer, scheduler=scheduler, model=built)


def reduce_metrics(per_microbatch: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Turn the last stage's `{name: tensor([sum, count])}` dicts into global means.

    Sums over micro-batches and data-parallel ranks, then broadcasts from the last pipeline
    stage so that every rank returns the same numbers.
    """
    from megatron.core import parallel_state as ps

    names = sorted(per_microbatch[0]) if per_microbatch else []
    # Every pipeline stage must agree on the names before the broadcast.
    if ps.get_pipeline_model_parallel_world_size() > 1:
        holder = [names]
        last = ps.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast_object_list(holder, src=last,
                                                group=ps.get_pipeline_model_parallel_group())
        names = holder[0]
    totals = torch.zeros(len(names), 2, dtype=torch.float64)
    for mb in per_microbatch:
        for i, name in enumerate(names):
            totals[i] += mb[name].detach().to("cpu", torch.float64)
    totals = totals.to(_device())
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        torch.distributed.all_reduce(totals, group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(totals, src=ps.get_pipeline_model_parallel_last_rank(),
                                    group=ps.get_pipeline_model_parallel_group())
    return {n: (totals[i, 0] / totals[i, 1].clamp(min=1)).item() for i, n in enumerate(names)}


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


def run_forward_backward(chunks: list[Any], forward_step: Callable, data_iterator: Any,
                         num_microbatches: int, micro_batch_size: int, seq_length: int,
                         forward_only: bool = False) -> dict[str, float]:
    """Run Megatron's schedule (no pipelining, 1F1B, or interleaved) and reduce its metrics."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if len(chunks) > 1 and not isinstance(data_iterator, list):
        data_iterator = [data_iterator] * len(chunks)
    per_mb = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data_iterator,
        model=chunks,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return reduce_metrics(per_mb or [])


def train_step(state: TrainState, forward_step: Callable, data_iterator: Any,
               num_microbatches: int, micro_batch_size: int, seq_length: int) -> dict[str, float]:
    """Zero grads, forward/backward over all micro-batches, clip, step the optimizer and LR."""
    for chunk in state.chunks:
        chunk.zero_grad_buffer()
    state.optimizer.zero_grad()
    metrics = run_forward_backward(state.chunks, forward_step, data_iterator, num_microbatches,
                                   micro_batch_size, seq_length)
    ok, grad_norm, _ = state.optimizer.step()
    if ok:
        state.scheduler.step(increment=1)
    metrics.update(grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                   lr=state.optimizer.param_groups[0]["lr"], update_skipped=float(not ok))
    return metrics


def next_token_loss(loss_mask: torch.Tensor, output: torch.Tensor) -> tuple:
    """Loss function for `GPTModel(..., labels=...)` output: masked sum of per-token CE."""
    losses = output.float().view(-1)
    mask = loss_mask.float().view(-1)
    loss_sum = (losses * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"lm_loss": torch.stack([loss_sum.detach(), mask.sum()])}


def next_token_forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: Any) -> tuple:
    """Forward step for next-token training; batches hold tokens, labels, loss_mask, position_ids.

    Every pipeline stage draws the batch so the iterators stay aligned; the first stage uses the
    tokens and the last the labels.
    """
    batch = next(data_iterator)
    device = _device()
    tokens = batch["tokens"].to(device)
    output = model(
        input_ids=tokens,
        position_ids=batch["position_ids"].to(device),
        attention_mask=None,
        labels=batch["labels"].to(device),
    )
    return output, partial(next_token_loss, batch["loss_mask"].to(device))
