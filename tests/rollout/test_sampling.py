"""Filtering, seeded draws and log-probs of `megatron_rlpt.rollout.sampling` (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.rollout.sampling import (
    draw,
    filtered_logits,
    row_generators,
    sample_tokens,
    validate_sampling,
)

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))


def _kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_largest():
    assert _kept(filtered_logits(LOGITS, SamplingParams(top_k=2))) == [0, 1]
    assert _kept(filtered_logits(LOGITS, SamplingParams(top_k=10))) == [0, 1, 2, 3]


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]),
                                         (0.8, [0, 1, 2]), (1e-9, [0])])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, kept):
    assert _kept(filtered_logits(LOGITS, SamplingParams(top_p=top_p))) == kept


def test_temperature_scales_and_zero_leaves_logits():
    hot = filtered_logits(LOGITS, SamplingParams(temperature=2.0))
    assert torch.allclose(hot, LOGITS / 2)
    assert torch.equal(filtered_logits(LOGITS, SamplingParams(temperature=0.0)), LOGITS)


def test_draw_follows_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3, 0.0])
    logp = torch.log(probs).expand(20000, -1)
    gen = torch.Generator().manual_seed(0)
    tokens = draw(logp, torch.rand(20000, generator=gen, dtype=torch.float64))
    freq = torch.bincount(tokens, minlength=5).double() / 20000
    assert freq[1] == 0 and freq[4] == 0
    assert torch.allclose(freq, probs.double(), atol=0.015)
    # The very top of the unit interval still lands on a token with mass.
    top = draw(torch.log(probs).unsqueeze(0), torch.tensor([1 - 2**-53], dtype=torch.float64))
    assert top.item() == 3


def test_sampling_is_per_row_and_reproducible():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0)
    keys = [(0, 0), (0, 1), (5, 0)]
    a, _ = sample_tokens(logits, params, row_generators(9, keys))
    b, _ = sample_tokens(logits, params, row_generators(9, keys))
    assert torch.equal(a, b)
    # Row (5, 0) draws the same alone as in a batch.
    alone, _ = sample_tokens(logits[2:], params, row_generators(9, keys[2:]))
    assert alone.item() == a[2].item()


def test_logprob_modes():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
    params = SamplingParams(temperature=0.5, top_k=3)
    gens = row_generators(1, [(0, 0), (1, 0)])
    tokens, lp = sample_tokens(logits, params, gens)
    policy = torch.log_softmax(filtered_logits(logits, params), dim=-1)
    assert torch.allclose(lp, policy.gather(-1, tokens[:, None]).squeeze(-1))
    gens = row_generators(1, [(0, 0), (1, 0)])
    raw_tokens, raw = sample_tokens(logits, params, gens, "raw")
    assert torch.equal(raw_tokens, tokens)
    assert torch.allclose(raw, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0])
    greedy, glp = sample_tokens(logits, SamplingParams(temperature=0.0), [])
    assert torch.equal(greedy, logits.argmax(-1))
    assert math.isclose(glp[0].item(), torch.log_softmax(logits, -1)[0].max().item(),
                        rel_tol=1e-6)


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(top_k=-1)])
def test_bad_sampling_parameters(bad):
    with pytest.raises(UsageError):
        validate_sampling(SamplingParams(**bad))
