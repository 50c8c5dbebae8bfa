"""Data-parallel wrapping, the Megatron optimizer and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_rlpt.errors import UsageError

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class OptimConfig:
    """Adam, gradient clipping and the learning-rate schedule."""

    lr: float = 1e-6
    """Peak learning rate (RLPT: 1e-6 constant; cold-start SFT: 2e-5 cosine)."""
    min_lr: float = 0.0
    """Learning rate at the end of a cosine or linear decay."""
    schedule: str = "constant"
    """`constant`, `cosine` or `linear` decay after the warm-up."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to `lr` over this many optimizer steps."""
    decay_steps: int | None = None
    """Steps over which cosine/linear decay reaches `min_lr`; None means the run's total steps."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay; not applied to biases and norms."""
    adam_beta1: float = 0.9
    """Adam β1."""
    adam_beta2: float = 0.999
    """Adam β2."""
    adam_eps: float = 1e-8
    """Adam ε."""
    clip_grad: float = 1.0
    """Clip the global gradient norm (across all TP/PP/DP ranks) to this value; 0 disables it."""
    distributed_optimizer: bool = False
    """Shard optimizer states and fp32 main weights across data-parallel ranks (ZeRO-1)."""
    grad_reduce_in_fp32: bool = True
    """All-reduce gradients in fp32 even when training in bf16."""
    overlap_grad_reduce: bool = False
    """Overlap the data-parallel gradient reduction with the backward pass (GPU)."""

    def validate(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise UsageError(f"optim.schedule must be one of {LR_SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UsageError(f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})")
        if self.warmup_steps < 0:
            raise UsageError("optim.warmup_steps must be >= 0")


def wrap_ddp(chunks: list[Any], tconfig: Any, optim: OptimConfig) -> list[Any]:
    """Wrap each model chunk in Megatron's DistributedDataParallel (contiguous grad buffers)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=optim.grad_reduce_in_fp32,
        overlap_grad_reduce=optim.overlap_grad_reduce,
        use_distributed_optimizer=optim.distributed_optimizer,
        check_for_nan_in_grad=True,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=tconfig,
                ddp_config=ddp_config,
                module=chunk,
                # Only the first chunk buckets: later chunks' grads are ready first.
                disable_bucketing=i > 0,
            )
        )
    return wrapped


def build_optimizer(ddp_chunks: list[Any], optim: OptimConfig, params_dtype: str,
                    total_steps: int) -> tuple[Any, Any]:
    """Megatron optimizer over the DDP-wrapped chunks, and its learning-rate scheduler."""
    import torch
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    optim.validate()
    bf16 = params_dtype == "bf16"
    config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=optim.distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, ddp_chunks)
    decay_steps = max(1, optim.decay_steps or total_steps)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if optim.warmup_steps else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.lr if optim.schedule == "constant" else optim.min_lr,
        lr_warmup_steps=optim.warmup_steps,
        lr_decay_steps=max(decay_steps, optim.warmup_steps + 1),
        lr_decay_style=optim.schedule,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
