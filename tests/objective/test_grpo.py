"""GRPO advantages, failure masking and dynamic sampling."""

from __future__ import annotations

import statistics

import pytest
import torch

from megatron_rlpt.algo.grpo import GRPOConfig, group_advantages
from megatron_rlpt.reward.base import JudgeResult, JudgeStatus
from megatron_rlpt.reward.scoring import rewards_tensor


def test_mean_std_advantages_match_the_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 8, generator=gen)
    valid = torch.ones_like(rewards, dtype=torch.bool)
    for unbiased in (True, False):
        cfg = GRPOConfig(unbiased_std=unbiased, std_eps=1e-6)
        out = group_advantages(rewards, valid, cfg)
        for g in range(5):
            row = rewards[g].tolist()
            mean = statistics.fmean(row)
            std = statistics.stdev(row) if unbiased else statistics.pstdev(row)
            expected = torch.tensor([(r - mean) / (std + 1e-6) for r in row])
            torch.testing.assert_close(out.advantages[g], expected, rtol=1e-5, atol=1e-6)
        assert out.keep.all() and not out.failed.any()


def test_mean_only_advantages() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    out = group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool),
                           GRPOConfig(advantage="mean"))
    assert out.advantages.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75]]


def test_failed_groups_are_masked_and_nan_stays_inside() -> None:
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0],
                            [1.0, nan, 0.0, 0.0],   # a failed judgement
                            [1.0, 1.0, 1.0, 1.0],   # all correct
                            [0.0, 0.0, 0.0, 0.0]])  # all wrong
    valid = ~torch.isnan(rewards)
    out = group_advantages(rewards, valid, GRPOConfig())
    assert out.keep.tolist() == [True, False, False, False]
    assert out.failed.tolist() == [False, True, False, False]
    assert out.zero_variance.tolist() == [False, False, True, True]
    assert torch.isfinite(out.advantages).all()
    assert (out.advantages[1:] == 0).all()
    m = out.metrics(rewards, valid)
    assert m["grpo/failed_groups"] == 1 and m["grpo/zero_variance_groups"] == 2
    assert m["grpo/kept_groups"] == 1 and m["grpo/failed_items"] == 1
    assert m["grpo/all_correct_groups"] == 1
    assert m["grpo/reward_mean"] == pytest.approx(7 / 15)
    # Without dynamic sampling equal-reward groups stay in, with exactly zero advantage.
    kept = group_advantages(rewards, valid, GRPOConfig(drop_zero_variance_groups=False))
    assert kept.keep.tolist() == [True, False, True, True]
    assert (kept.advantages[2:] == 0).all()


def test_equal_non_binary_rewards_are_zero_variance() -> None:
    rewards = torch.full((1, 8), 0.3)
    out = group_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool),
                           GRPOConfig(drop_zero_variance_groups=False))
    assert out.zero_variance.item() and (out.advantages == 0).all()


def test_judge_results_to_advantages() -> None:
    ok1, ok0 = JudgeResult(1.0, JudgeStatus.OK), JudgeResult(0.0, JudgeStatus.OK)
    no_pred = JudgeResult(0.0, JudgeStatus.NO_PREDICTION, "missing")
    timeout = JudgeResult.failure(JudgeStatus.TIMEOUT)
    results = [ok1, ok0, no_pred, ok1, ok1, timeout, ok0, ok0]
    rewards, valid = rewards_tensor(results, group_size=4)
    out = group_advantages(rewards, valid, GRPOConfig())
    assert out.keep.tolist() == [True, False]  # the timeout's group is dropped whole
    assert out.advantages[0, 0] > 0 and out.advantages[0, 2] < 0
    with pytest.raises(ValueError):
        rewards_tensor(results[:3], group_size=2)
