"""The contract every rollout engine meets (in-process Megatron sampler, vLLM, SGLang, HF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """How to sample completions."""

    max_tokens: int = 256
    """Most new tokens per completion."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a completion; the stop string is kept in the text."""
    seed: int | None = None
    """Seed for reproducible sampling, where the engine supports it."""


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    text: str
    """Decoded completion text (without the prompt)."""
    token_ids: list[int]
    """Completion token ids (without the prompt)."""
    logprobs: list[float] | None
    """Log-probability of each completion token under the sampling policy, if reported."""
    finish_reason: str
    """`stop` (stop string or end-of-sequence token) or `length` (max_tokens reached)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates `n` completions per prompt and accepts new policy weights."""

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its `n` completions."""
        ...

    def update_weights(self, weights: Any) -> None:
        """Load new policy weights (a state dict in HF naming, or an engine-specific handle)."""
        ...
