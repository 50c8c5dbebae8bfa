"""Judge prompts and score parsing, the rule judge, re-judging and the in-process judge."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.reward import (
    Judge,
    JudgeConfig,
    JudgeItem,
    JudgeResult,
    JudgeStatus,
    build_judge,
    score_with_rejudge,
)
from megatron_rlpt.reward.engine_judge import EngineJudge
from megatron_rlpt.reward.prompts import (
    PREFIX_JUDGE_TEMPLATE,
    STRICT_JUDGE_TEMPLATE,
    judge_template,
    parse_score,
    render_judge_prompt,
)
from megatron_rlpt.reward.rule import RuleJudge, edit_distance_to_prefix, rule_reward
from megatron_rlpt.reward.scoring import rewards_tensor, score_completions
from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.rollout.hf_engine import HFEngine
from megatron_rlpt.tasks import END_TAG, START_TAG


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Score: 1", 1),
        ("- Score: 0", 0),
        ("**Score:** 1", 1),
        ("score=0\n", 0),
        ("Score: 1.0", 1),
        ("1", 1),
        (" 0 \n", 0),
        ("<think>Score: 0 maybe</think>\nScore: 1", 1),
        ("Score: 1\nScore: 1", 1),
        ("Score: 10", None),
        ("Score: 1.5", None),
        ("- Score: 0\nor\n- Score: 1", None),  # echoing the options is no verdict
        ("<think>still thinking Score: 1", None),
        ("The prediction is correct.", None),
        ("", None),
    ],
)
def test_parse_score(text: str, score: int | None) -> None:
    assert parse_score(text) == score


def test_judge_prompt_rendering(tmp_path: Path) -> None:
    prompt = render_judge_prompt(PREFIX_JUDGE_TEMPLATE, "P {reference}", "R $x^{2}$")
    assert "Reference: R $x^{2}$\n\nPredicted: P {reference}\n\n" in prompt
    assert judge_template("strict") == STRICT_JUDGE_TEMPLATE
    custom = tmp_path / "judge.txt"
    custom.write_text("Is {predicted} in {reference}?\n", encoding="utf-8")
    assert judge_template("prefix", custom) == "Is {predicted} in {reference}?"
    with pytest.raises(ValueError):
        judge_template("lenient")  # type: ignore[arg-type]


def test_rule_reward_prefix_and_strict() -> None:
    ref = "The derivative of sin(x) is cos(x). Hence the slope at zero is one."
    assert rule_reward("the derivative of sin x is cos x", ref) == 1.0
    # A prediction spanning the target and the next segment is still a prefix.
    assert rule_reward("The derivative of sin(x) is cos(x). Hence the slope", ref) == 1.0
    assert rule_reward("The derivative of tan(x) is sec(x)^2.", ref) == 0.0
    assert rule_reward("", ref) == 0.0
    # Tolerance: one wrong word in ten passes at 0.1, not at 0.
    near = "The derivative of sin(x) is cos(x). Hence the slope at one"
    assert rule_reward(near, ref, tolerance=0.1) == 1.0
    assert rule_reward(near, ref, tolerance=0.0) == 0.0
    # Coverage: a bare opening word is a prefix but covers too little of s_i.
    target = "The derivative of sin(x) is cos(x)."
    assert rule_reward("The", ref, target=target) == 0.0
    assert rule_reward("The derivative of sin(x) is cos(x)", ref, target=target) == 1.0
    # Strict: the whole reference (s_i alone) must match.
    assert rule_reward("the derivative of sin(x) is cos(x)", target, mode="strict") == 1.0
    assert rule_reward("the derivative of sin(x)", target, mode="strict") == 0.0
    assert edit_distance_to_prefix(["a", "x", "c"], ["a", "b", "c", "d"]) == (1, 3)


def test_rule_judge_via_config() -> None:
    judge = build_judge(JudgeConfig(kind="rule"))
    assert isinstance(judge, RuleJudge)
    items = [JudgeItem("water boils at 100 degrees", "Water boils at 100 degrees. Ice melts."),
             JudgeItem("water freezes", "Water boils at 100 degrees.")]
    results = judge.score(items)
    assert [r.reward for r in results] == [1.0, 0.0]
    assert all(r.status is JudgeStatus.OK for r in results)
    assert judge.stats.statuses["ok"] == 2
    with pytest.raises(UsageError):
        build_judge(JudgeConfig(kind="http"))  # no endpoints
    with pytest.raises(UsageError):
        build_judge(JudgeConfig(kind="hf"))  # no model
    with pytest.raises(UsageError, match="http://"):
        build_judge(JudgeConfig(kind="http", endpoints=["judge:8000"]))
    with pytest.raises(UsageError, match="RLPT_NO_SUCH_KEY"):
        build_judge(JudgeConfig(kind="http", endpoints=["http://judge:8000"],
                                api_key_env="RLPT_NO_SUCH_KEY"))


def test_score_completions_extracts_then_judges() -> None:
    judge = RuleJudge()
    completions = [
        f"thinking {START_TAG}The cat sat on the mat.{END_TAG}",
        f"thinking {START_TAG}A dog ran.{END_TAG}",
        "no tags",
        f"{START_TAG}unclosed",
    ]
    refs = ["The cat sat on the mat. It purred."] * 4
    results = score_completions(judge, completions, refs, targets=["The cat sat on the mat."] * 4)
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.status for r in results] == [JudgeStatus.OK, JudgeStatus.OK,
                                           JudgeStatus.NO_PREDICTION, JudgeStatus.NO_PREDICTION]
    assert all(r.valid for r in results)
    assert judge.stats.no_prediction == {"missing": 1, "unclosed": 1}
    assert judge.stats.requests == 2  # the tagless completions never reach the judge
    rewards, valid = rewards_tensor(results, group_size=2)
    assert rewards.tolist() == [[1.0, 0.0], [0.0, 0.0]] and valid.all()


class FlakyJudge(Judge):
    """Fails each item's first `failures` judgements, then scores 1."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls: dict[str, int] = {}

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        out = []
        for item in items:
            n = self.calls[item.predicted] = self.calls.get(item.predicted, 0) + 1
            out.append(JudgeResult.failure(JudgeStatus.TIMEOUT) if n <= self.failures
                       else JudgeResult(1.0, JudgeStatus.OK))
        self.stats.record(out)
        return out


def test_rejudge_and_failures_never_become_rewards() -> None:
    items = [JudgeItem(f"p{i}", "r") for i in range(3)]
    ok = score_with_rejudge(FlakyJudge(failures=1), items, attempts=1)
    assert [r.status for r in ok] == [JudgeStatus.OK] * 3
    judge = FlakyJudge(failures=3)
    failed = score_with_rejudge(judge, items, attempts=2)
    assert all(r.status is JudgeStatus.TIMEOUT and not r.valid for r in failed)
    assert all(math.isnan(r.reward) for r in failed)
    assert judge.stats.rejudged == 6 and judge.stats.statuses["timeout"] == 9
    rewards, valid = rewards_tensor(failed, group_size=3)
    assert not valid.any() and torch.isnan(rewards).all()
    with pytest.raises(ValueError):
        JudgeResult.failure(JudgeStatus.OK)


def test_in_process_judge_answers_score_one(forced_judge_dir: Path) -> None:
    judge = build_judge(JudgeConfig(kind="hf", hf_model=str(forced_judge_dir), max_tokens=3,
                                    hf_batch_size=2))
    assert isinstance(judge, EngineJudge)
    items = [JudgeItem("the cat sat", "the cat sat on the mat"), JudgeItem("a dog", "water boils")]
    results = judge.score(items)
    # The forced model always says "Score: 1": the verdict is read from a real generation.
    assert [(r.status, r.reward) for r in results] == [(JudgeStatus.OK, 1.0)] * 2
    assert results[0].raw == "Score: 1 Score: 1 Score: 1"
    # With a chat template the prompt is the user turn.
    prompt = judge.prompt(items[0])
    assert prompt.startswith("<s> user : ## Task") and prompt.endswith("assistant :")


def test_in_process_judge_reads_what_the_model_wrote(random_judge_dir: Path) -> None:
    engine = HFEngine(str(random_judge_dir), batch_size=4, progress=False)
    judge = EngineJudge(engine, PREFIX_JUDGE_TEMPLATE, chat_template=False, max_tokens=6)
    items = [JudgeItem(f"the cat sat {i}", "the cat sat on the mat") for i in range(4)]
    results = judge.score(items)
    direct = engine.generate([judge.prompt(it) for it in items], 1,
                             SamplingParams(max_tokens=6, temperature=0.0))
    for result, completions in zip(results, direct):
        assert result.raw == completions[0].text
        verdict = parse_score(completions[0].text)
        if verdict is None:
            assert result.status is JudgeStatus.PARSE_ERROR and math.isnan(result.reward)
        else:
            assert result.status is JudgeStatus.OK and result.reward == verdict
    assert sum(judge.stats.statuses.values()) == 4
