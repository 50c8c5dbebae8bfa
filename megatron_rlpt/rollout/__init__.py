"""Rollout engines: generate completions for prompts and take weight updates from the trainer."""

from megatron_rlpt.rollout.base import Completion, RolloutEngine, SamplingParams

# Engines import torch / Megatron / transformers: import them from their modules,
# megatron_rlpt.rollout.megatron_engine.MegatronEngine and megatron_rlpt.rollout.hf_engine.HFEngine.
__all__ = ["Completion", "RolloutEngine", "SamplingParams"]
