"""The judge contract: items in, one reward and status per item out.

A judgement that fails (the server timed out, answered 5xx, sent garbage, or the judge model
wrote no score) is a *failure status*, never a reward of 0 or 1. The GRPO helpers take the
validity mask and drop every group that still holds a failure after re-judging.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


class JudgeStatus(str, enum.Enum):
    """The outcome of judging one item."""

    OK = "ok"
    """The judge gave a score; the reward is valid."""
    NO_PREDICTION = "no_prediction"
    """The completion had no usable prediction tags; reward 0, valid (the policy's fault)."""
    PARSE_ERROR = "parse_error"
    """The judge answered but no single `Score: 0|1` could be read from its text."""
    HTTP_ERROR = "http_error"
    """The server answered with an HTTP error status (after retries, where retryable)."""
    TIMEOUT = "timeout"
    """No answer within the timeout (after retries)."""
    CONNECTION_ERROR = "connection_error"
    """The connection failed or was reset (after retries)."""
    BAD_RESPONSE = "bad_response"
    """The server's body was not the JSON the API promises (after retries)."""
    ERROR = "error"
    """Any other failure inside the judge (e.g. an in-process model raised)."""

    @property
    def valid(self) -> bool:
        """Whether a result with this status carries a usable reward."""
        return self in (JudgeStatus.OK, JudgeStatus.NO_PREDICTION)


@dataclass(frozen=True)
class JudgeItem:
    """One prediction to judge."""

    predicted: str
    """The extracted predicted segment ŝ_i."""
    reference: str
    """What it is compared against: s_i, plus following segments for the prefix reward."""
    target: str | None = None
    """s_i alone, for judges that want it (the rule judge's coverage check)."""


@dataclass(frozen=True)
class JudgeResult:
    """A judge's verdict on one item."""

    reward: float
    """The reward; meaningful only when `valid`. Failures carry NaN so that using one by
    mistake poisons the batch loudly instead of training on a fabricated 0."""
    status: JudgeStatus
    detail: str = ""
    """Why it failed, or the extraction status for NO_PREDICTION (never secrets)."""
    raw: str | None = None
    """The judge's raw output text, where there is one (for logs and debugging)."""

    @property
    def valid(self) -> bool:
        return self.status.valid

    @classmethod
    def failure(cls, status: JudgeStatus, detail: str = "", raw: str | None = None) -> JudgeResult:
        if status.valid:
            raise ValueError(f"{status} is not a failure status")
        return cls(float("nan"), status, detail, raw)


@dataclass
class JudgeStats:
    """Counters a judge keeps over its lifetime (reset by the caller between steps if wanted)."""

    statuses: Counter = field(default_factory=Counter)
    """Final status of every judged item (after retries; re-judged items count once more)."""
    requests: int = 0
    """Requests sent (HTTP attempts, or in-process generations)."""
    retries: int = 0
    """Requests repeated after a retryable failure."""
    rejudged: int = 0
    """Items judged again after a failed judgement."""
    no_prediction: Counter = field(default_factory=Counter)
    """Completions without a usable prediction, by extraction status."""

    def record(self, results: Sequence[JudgeResult]) -> None:
        self.statuses.update(r.status.value for r in results)

    def as_metrics(self, prefix: str = "judge/") -> dict[str, float]:
        """Flat numbers for the logger."""
        out = {f"{prefix}{name}": float(n) for name, n in sorted(self.statuses.items())}
        out.update({f"{prefix}no_prediction/{name}": float(n)
                    for name, n in sorted(self.no_prediction.items())})
        out[f"{prefix}requests"] = float(self.requests)
        out[f"{prefix}retries"] = float(self.retries)
        out[f"{prefix}rejudged"] = float(self.rejudged)
        return out

    def reset(self) -> None:
        self.statuses.clear()
        self.no_prediction.clear()
        self.requests = self.retries = self.rejudged = 0


class Judge(abc.ABC):
    """Scores a batch of items; returns one result per item, in order.

    Implementations must never raise for a single bad item: they return a failure status for
    it. `score` is synchronous; `ascore` lets an asyncio caller judge groups as they finish.
    """

    def __init__(self) -> None:
        self.stats = JudgeStats()

    @abc.abstractmethod
    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Judge `items`; one result each, in order."""

    async def ascore(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Async `score`; by default runs `score` in a worker thread."""
        return await asyncio.to_thread(self.score, items)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release resources (connections, models)."""


def _merge(results: list[JudgeResult], idx: list[int], again: list[JudgeResult]) -> list[int]:
    still: list[int] = []
    for i, r in zip(idx, again):
        results[i] = r
        if not r.valid:
            still.append(i)
    return still


def score_with_rejudge(judge: Judge, items: Sequence[JudgeItem], attempts: int) -> list[JudgeResult]:
    """`judge.score(items)`, then judge the failed items again up to `attempts` more times."""
    results = list(judge.score(items))
    failed = [i for i, r in enumerate(results) if not r.valid]
    for _ in range(max(0, attempts)):
        if not failed:
            break
        judge.stats.rejudged += len(failed)
        failed = _merge(results, failed, judge.score([items[i] for i in failed]))
    return results


async def ascore_with_rejudge(judge: Judge, items: Sequence[JudgeItem],
                              attempts: int) -> list[JudgeResult]:
    """Async `score_with_rejudge`."""
    results = list(await judge.ascore(items))
    failed = [i for i, r in enumerate(results) if not r.valid]
    for _ in range(max(0, attempts)):
        if not failed:
            break
        judge.stats.rejudged += len(failed)
        failed = _merge(results, failed, await judge.ascore([items[i] for i in failed]))
    return results
