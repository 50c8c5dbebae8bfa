"""Rewards for RLPT: the `Judge` contract, generative (HTTP, in-process) and rule judges.

`build_judge(JudgeConfig)` gives the configured judge; `score_completions` turns completions into
rewards (extraction, judging, re-judging). A failed judgement is a status, never a reward.
"""

from megatron_rlpt.reward.base import (
    Judge,
    JudgeItem,
    JudgeResult,
    JudgeStats,
    JudgeStatus,
    ascore_with_rejudge,
    score_with_rejudge,
)
from megatron_rlpt.reward.config import JudgeConfig, build_judge
from megatron_rlpt.reward.scoring import ascore_completions, rewards_tensor, score_completions

__all__ = [
    "Judge",
    "JudgeConfig",
    "JudgeItem",
    "JudgeResult",
    "JudgeStats",
    "JudgeStatus",
    "ascore_completions",
    "ascore_with_rejudge",
    "build_judge",
    "rewards_tensor",
    "score_completions",
    "score_with_rejudge",
]
