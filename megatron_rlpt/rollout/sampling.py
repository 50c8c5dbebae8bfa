"""Sampling utilities shared by in-process rollout engines: filtering, seeded draws, log-probs.

Randomness is per row and counter-based: a row (prompt index, sample index) owns a
`random.Random` seeded from the call's base seed, and each step draws one uniform number from
it. The token is picked by inverting the cumulative distribution at that number. So a row's
draws do not depend on which other rows share its batch, the same seed gives the same tokens on
every rank and on every device, and the global torch RNG (which training checkpoints and
restores) is never touched.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import SamplingParams

LOGPROB_MODES = ("sampling", "raw")
"""`sampling`: log-probs under the distribution the token was drawn from (temperature, top-k,
top-p, padded vocabulary rows removed); `raw`: the model's untempered log-softmax over its whole
output layer, padded rows included (what a trainer's vocab-parallel recomputation gives)."""


def validate_sampling(sampling: SamplingParams) -> None:
    """Raise UsageError for sampling parameters no engine can honour."""
    if sampling.max_tokens < 1:
        raise UsageError(f"max_tokens must be at least 1, got {sampling.max_tokens}")
    if sampling.temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {sampling.temperature}")
    if not 0.0 < sampling.top_p <= 1.0:
        raise UsageError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < 0:
        raise UsageError(f"top_k must be >= 0 (0 disables it), got {sampling.top_k}")


def row_seed(base: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one (prompt, sample) row: a hash, so nearby seeds give unrelated streams."""
    digest = hashlib.blake2b(f"{base}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def row_generators(base: int, rows: Sequence[tuple[int, int]]) -> list[random.Random]:
    """One generator per (prompt index, sample index) row."""
    return [random.Random(row_seed(base, p, s)) for p, s in rows]


def filtered_logits(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """fp32 logits of the distribution to sample from (`-inf` where filtered out).

    Temperature divides the logits; top-k keeps the k largest (ties with the k-th are kept);
    top-p keeps the most likely tokens until their mass reaches `top_p` (the token that crosses
    it included). Temperature 0 returns the logits unchanged: the caller takes the argmax.
    """
    logits = logits.float()
    if sampling.temperature <= 0:
        return logits
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly likelier tokens
        drop_sorted = before >= sampling.top_p
        drop_sorted[:, 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logprobs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: for each row, the first token whose cumulative mass exceeds u.

    `logprobs` is `[rows, vocab]`, `uniforms` `[rows]` in [0, 1). The cumulative sum is taken in
    float64 so that the tail of a large vocabulary keeps its resolution; tokens of probability
    zero can never be picked.
    """
    probs = logprobs.double().exp()
    cdf = torch.cumsum(probs, dim=-1)
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    picked = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # Rounding can put the target at the very top of the CDF: fall back to the last token that
    # has any mass.
    vocab = probs.shape[-1]
    last = (torch.arange(vocab, device=probs.device) * (probs > 0)).argmax(dim=-1)
    return torch.where(picked >= vocab, last, picked)


def sample_tokens(
    logits: torch.Tensor,
    sampling: SamplingParams,
    generators: Sequence[random.Random],
    logprob_mode: str = "sampling",
    raw_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of `[rows, vocab]` logits; return (tokens, their log-probs).

    `logits` hold only the tokens that may be sampled. Greedy (temperature 0) takes the argmax
    and, in `sampling` mode, reports the untempered log-softmax. `raw` mode reports the
    log-softmax of `raw_logits` (default: `logits`) at temperature 1, whatever was sampled.
    """
    if logprob_mode not in LOGPROB_MODES:
        raise UsageError(f"logprobs must be one of {LOGPROB_MODES}, got {logprob_mode!r}")
    if sampling.temperature <= 0:
        policy = torch.log_softmax(logits.float(), dim=-1)
        tokens = torch.argmax(policy, dim=-1)
    else:
        policy = torch.log_softmax(filtered_logits(logits, sampling), dim=-1)
        uniforms = torch.tensor([g.random() for g in generators], dtype=torch.float64)
        tokens = draw(policy, uniforms.to(policy.device))
    if logprob_mode == "raw":
        source = logits if raw_logits is None else raw_logits
        policy = torch.log_softmax(source.float(), dim=-1)
    picked = policy.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, picked
