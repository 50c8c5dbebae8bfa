"""From completions to rewards: extract the prediction, judge it, re-judge failures.

A completion without usable prediction tags gets reward 0 with status NO_PREDICTION (valid,
counted by extraction status) and is not sent to the judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_rlpt.reward.base import (
    Judge,
    JudgeItem,
    JudgeResult,
    JudgeStatus,
    ascore_with_rejudge,
    score_with_rejudge,
)
from megatron_rlpt.tasks import extract_prediction


def _prepare(
    judge: Judge,
    completions: Sequence[str],
    references: Sequence[str],
    targets: Sequence[str] | None,
) -> tuple[list[JudgeResult | None], list[int], list[JudgeItem]]:
    if len(completions) != len(references) or (targets is not None and len(targets) != len(completions)):
        raise ValueError("completions, references and targets must have the same length")
    results: list[JudgeResult | None] = [None] * len(completions)
    indices: list[int] = []
    items: list[JudgeItem] = []
    for i, text in enumerate(completions):
        extraction = extract_prediction(text)
        if not extraction.ok:
            results[i] = JudgeResult(0.0, JudgeStatus.NO_PREDICTION, extraction.status.value)
            judge.stats.no_prediction[extraction.status.value] += 1
            judge.stats.statuses[JudgeStatus.NO_PREDICTION.value] += 1
            continue
        indices.append(i)
        items.append(JudgeItem(extraction.prediction, references[i],
                               targets[i] if targets is not None else None))
    return results, indices, items


def score_completions(
    judge: Judge,
    completions: Sequence[str],
    references: Sequence[str],
    targets: Sequence[str] | None = None,
    rejudge_attempts: int = 1,
) -> list[JudgeResult]:
    """One result per completion: extraction, then the judge (with re-judging) on the rest."""
    results, indices, items = _prepare(judge, completions, references, targets)
    for i, r in zip(indices, score_with_rejudge(judge, items, rejudge_attempts) if items else []):
        results[i] = r
    return results  # type: ignore[return-value]


async def ascore_completions(
    judge: Judge,
    completions: Sequence[str],
    references: Sequence[str],
    targets: Sequence[str] | None = None,
    rejudge_attempts: int = 1,
) -> list[JudgeResult]:
    """Async `score_completions`: judge one GRPO group as soon as its rollouts finish."""
    results, indices, items = _prepare(judge, completions, references, targets)
    judged = await ascore_with_rejudge(judge, items, rejudge_attempts) if items else []
    for i, r in zip(indices, judged):
        results[i] = r
    return results  # type: ignore[return-value]


def rewards_tensor(results: Sequence[JudgeResult], group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[groups, group_size]` rewards (NaN where failed) and the validity mask, for GRPO."""
    if len(results) % group_size:
        raise ValueError(f"{len(results)} results do not split into groups of {group_size}")
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
    valid = torch.tensor([r.valid for r in results], dtype=torch.bool)
    return rewards.view(-1, group_size), valid.view(-1, group_size)
