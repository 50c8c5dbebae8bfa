"""A rule judge: normalised word-level prefix matching with a tolerance.

No model, deterministic and fast: the judge for CI and a lexical baseline. It reads the words
only, so it rewards paraphrases far less often than a generative judge would.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

from megatron_rlpt.reward.base import Judge, JudgeItem, JudgeResult, JudgeStatus

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """Words of `text` after NFKC, case folding and dropping punctuation."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", text).split()


def edit_distance_to_prefix(pred: Sequence[str], ref: Sequence[str]) -> tuple[int, int]:
    """Word edit distance from `pred` to its closest prefix of `ref`, and that prefix's length."""
    # Classic DP over pred rows; the last row holds the distance of pred to every prefix ref[:j].
    prev = list(range(len(ref) + 1))
    for i, word in enumerate(pred, start=1):
        cur = [i] + [0] * len(ref)
        for j, ref_word in enumerate(ref, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word != ref_word))
        prev = cur
    best = min(range(len(prev)), key=lambda j: (prev[j], -j))
    return prev[best], best


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, other in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word != other))
        prev = cur
    return prev[-1]


def rule_reward(
    predicted: str,
    reference: str,
    target: str | None = None,
    mode: Literal["prefix", "strict"] = "prefix",
    tolerance: float = 0.1,
    min_coverage: float = 0.8,
) -> float:
    """1.0 if the prediction matches, else 0.0.

    `prefix`: the prediction's words are within `tolerance`·len(prediction) edits of some prefix
    of the reference, and (when `target`, s_i, is given) the prediction has at least
    `min_coverage`·len(s_i) words, so that a single opening word does not pass as a prefix.
    `strict`: within `tolerance`·max(len) edits of the whole reference.
    """
    pred = normalize_words(predicted)
    ref = normalize_words(reference)
    if not pred or not ref:
        return 0.0
    if mode == "strict":
        return float(edit_distance(pred, ref) <= tolerance * max(len(pred), len(ref)))
    if mode != "prefix":
        raise ValueError(f"unknown reward mode {mode!r}")
    if target is not None and len(pred) < min_coverage * len(normalize_words(target)):
        return 0.0
    distance, _ = edit_distance_to_prefix(pred, ref)
    return float(distance <= tolerance * len(pred))


class RuleJudge(Judge):
    """`Judge` by normalised lexical prefix (or full) match."""

    def __init__(self, mode: Literal["prefix", "strict"] = "prefix", tolerance: float = 0.1,
                 min_coverage: float = 0.8) -> None:
        super().__init__()
        if not 0 <= tolerance < 1:
            raise ValueError("rule tolerance must be in [0, 1)")
        self.mode, self.tolerance, self.min_coverage = mode, tolerance, min_coverage

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        results = []
        for item in items:
            reward = rule_reward(item.predicted, item.reference, item.target, self.mode,
                                 self.tolerance, self.min_coverage)
            results.append(JudgeResult(reward, JudgeStatus.OK))
        self.stats.requests += len(items)
        self.stats.record(results)
        return results
