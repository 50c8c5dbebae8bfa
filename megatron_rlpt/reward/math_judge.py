"""The RLVR reward: 1 when the completion's final answer equals the gold answer (Math-Verify)."""

from __future__ import annotations

from collections.abc import Sequence

from megatron_rlpt.reward.base import Judge, JudgeItem, JudgeResult, JudgeStatus


class MathJudge(Judge):
    """Checks `\\boxed{}` answers (or Math-Verify's own extraction) against gold answers.

    A checker failure is an `error` status, never a reward. Equal (completion, gold) pairs are
    checked once: samples of one problem often agree.
    """

    def __init__(self) -> None:
        super().__init__()
        from megatron_rlpt.eval.math_check import MathChecker

        self._check = MathChecker()

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        return self.score_answers([i.predicted for i in items], [i.reference for i in items])

    def score_answers(self, completions: Sequence[str], golds: Sequence[str]) -> list[JudgeResult]:
        """One result per (completion, gold answer) pair."""
        results = []
        for completion, gold in zip(completions, golds, strict=True):
            self.stats.requests += 1
            try:
                ok = self._check(completion, gold).correct
                result = JudgeResult(1.0 if ok else 0.0, JudgeStatus.OK)
            except Exception as err:  # a verifier crash on one answer must not stop the step
                result = JudgeResult(float("nan"), JudgeStatus.ERROR, type(err).__name__)
            self.stats.statuses[result.status.value] += 1
            results.append(result)
        return results
