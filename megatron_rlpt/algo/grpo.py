"""GRPO: group-normalised advantages and dynamic sampling.

Rewards arrive as `[groups, G]` with a validity mask from the judge. A group that holds a
failed judgement is dropped whole: its mean and spread would be those of a different group.
A group whose valid rewards are all equal teaches nothing (zero advantage everywhere) and is
dropped too when dynamic sampling is on; the trainer refills the batch from more rollouts
(`stages/rl.py`, up to `max_sampling_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class GRPOConfig:
    """How rewards become advantages and which groups are trained on."""

    group_size: int = 8
    """Completions per prompt (the paper's 8)."""
    advantage: Literal["mean_std", "mean"] = "mean_std"
    """`mean_std`: (r − mean) / (std + eps), GRPO's normalisation. `mean`: r − mean only (no
    division by the spread; Dr. GRPO's choice, which does not up-weight near-solved groups)."""
    std_eps: float = 1e-6
    """Added to the group std before dividing."""
    unbiased_std: bool = True
    """Use the sample standard deviation (divide by G−1) rather than the population one."""
    drop_zero_variance_groups: bool = True
    """Dynamic sampling: drop groups whose rewards are all equal (all 0 or all 1). The paper does
    not state it; with binary rewards such groups are common and carry no signal."""
    max_sampling_rounds: int = 4
    """Rollout rounds the trainer may run to refill a batch thinned by dynamic sampling before it
    trains on what it has."""


@dataclass
class GroupAdvantages:
    """Per-completion advantages and which groups to train on."""

    advantages: torch.Tensor
    """`[groups, G]` float32; 0 in dropped groups."""
    keep: torch.Tensor
    """`[groups]` bool: the group goes into the loss."""
    failed: torch.Tensor
    """`[groups]` bool: the group holds a failed judgement."""
    zero_variance: torch.Tensor
    """`[groups]` bool: all valid rewards of the group are equal (and none failed)."""

    def metrics(self, rewards: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        """Counts and reward statistics for the logger."""
        n = self.keep.numel()
        valid_rewards = rewards[valid]
        return {
            "grpo/groups": float(n),
            "grpo/kept_groups": float(self.keep.sum()),
            "grpo/failed_groups": float(self.failed.sum()),
            "grpo/zero_variance_groups": float(self.zero_variance.sum()),
            "grpo/all_correct_groups": float(
                ((rewards == 1) | ~valid).all(dim=1).logical_and(~self.failed).sum()),
            "grpo/reward_mean": float(valid_rewards.mean()) if valid_rewards.numel() else 0.0,
            "grpo/failed_items": float((~valid).sum()),
        }


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor, cfg: GRPOConfig) -> GroupAdvantages:
    """Advantages for `[groups, G]` rewards; `valid` marks usable rewards (False: judge failed).

    Failed rewards may be NaN: they never enter a mean, because their whole group is dropped.
    """
    if rewards.dim() != 2 or rewards.shape != valid.shape:
        raise ValueError("rewards and valid must both be [groups, group_size]")
    rewards = rewards.float()
    valid = valid.bool()
    failed = ~valid.all(dim=1)
    safe = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = safe.mean(dim=1, keepdim=True)
    centred = safe - mean
    # Exact equality, not a centred value of 0: a mean of equal floats may round.
    zero_variance = (safe == safe[:, :1]).all(dim=1) & ~failed
    if cfg.advantage == "mean_std":
        g = rewards.shape[1]
        if cfg.unbiased_std and g < 2:
            raise ValueError("unbiased std needs a group size of at least 2")
        std = safe.std(dim=1, keepdim=True, correction=1 if cfg.unbiased_std else 0)
        adv = centred / (std + cfg.std_eps)
    elif cfg.advantage == "mean":
        adv = centred
    else:
        raise ValueError(f"unknown advantage mode {cfg.advantage!r}; use 'mean_std' or 'mean'")
    keep = ~failed
    if cfg.drop_zero_variance_groups:
        keep &= ~zero_variance
    # Zero in dropped groups, and exactly zero in equal-reward groups that are kept.
    adv = torch.where((keep & ~zero_variance).unsqueeze(1), adv, torch.zeros_like(adv))
    return GroupAdvantages(adv, keep, failed, zero_variance)
