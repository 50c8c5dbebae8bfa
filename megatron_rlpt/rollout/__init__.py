"""Rollout engines: generate completions for prompts and take weight updates from the trainer."""

from megatron_rlpt.rollout.base import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams"]
