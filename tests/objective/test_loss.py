"""The policy-gradient loss in Megatron's contract, against a straightforward reference."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rlpt.algo.logprobs import vocab_parallel_logprobs
from megatron_rlpt.algo.loss import (
    LossConfig,
    attach_global_denominators,
    make_loss_func,
    policy_loss,
)

B, S, V = 6, 9, 97


def _rollout(seed: int = 0):
    """A batch of 6 sequences with prompts and responses of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=gen) * 2
    labels = torch.randint(0, V, (B, S), generator=gen)
    mask = torch.zeros(B, S)
    for b, (start, length) in enumerate([(2, 5), (3, 6), (1, 2), (4, 5), (0, 9), (5, 1)]):
        mask[b, start : start + length] = 1
    with torch.no_grad():
        exact = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # The rollout policy differs a little, so some ratios leave the clip range.
    old = (exact + 0.3 * torch.randn(B, S, generator=gen, dtype=torch.float64)).float()
    old[mask == 0] = float("nan")  # prompt positions carry no rollout log-prob
    advantages = torch.randn(B, generator=gen)
    ref = (exact + 0.2 * torch.randn(B, S, generator=gen, dtype=torch.float64)).float()
    sample_weight = torch.tensor([1.0, 0.5, 1.0, 0.5, 1.0, 1.0])
    return logits, labels, mask, old, advantages, ref, sample_weight


def _reference_objective(logits, labels, mask, old, adv, ref, sw, cfg: LossConfig):
    """The GRPO objective written out plainly, sequence by sequence, in float64."""
    logp_all = torch.log_softmax(logits.double() / cfg.temperature, -1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    per_seq, tokens = [], 0
    for b in range(B):
        idx = mask[b].nonzero().squeeze(-1)
        ratio = torch.exp(logp[b, idx] - old[b, idx].double())
        clipped = ratio.clamp(1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high)
        loss = -torch.minimum(ratio * adv[b], clipped * adv[b])
        if cfg.kl_coef:
            d = ref[b, idx].double() - logp[b, idx]
            loss = loss + cfg.kl_coef * (torch.exp(d) - d - 1)
        loss = loss - cfg.entropy_coef * entropy[b, idx]
        per_seq.append((loss.sum() * sw[b], len(idx)))
        tokens += len(idx)
    if cfg.aggregation == "token_mean":
        return sum(s for s, _ in per_seq) / tokens
    return sum(s / n for s, n in per_seq) / len(per_seq)


def _megatron_style(logits_leaf, labels, mask, old, adv, ref, sw, cfg, splits):
    """What forward_backward_func does with per-token losses: sum over micro-batches, divide
    by the summed num_tokens."""
    micro = []
    for lo, hi in splits:
        micro.append({"labels": labels[lo:hi], "loss_mask": mask[lo:hi],
                      "old_logprobs": old[lo:hi], "advantages": adv[lo:hi],
                      "ref_logprobs": ref[lo:hi], "sample_weight": sw[lo:hi]})
    tokens, seqs = attach_global_denominators(micro)
    assert (tokens, seqs) == (int(mask.sum()), B)
    total, count, metrics = 0.0, torch.tensor(0, dtype=torch.int), []
    for (lo, hi), mb in zip(splits, micro):
        # Each micro-batch has its own output tensor, as each forward pass makes one (the loss
        # writes its gradient over it).
        loss_sum, num_tokens, m = make_loss_func(mb, cfg)(logits_leaf[lo:hi].clone())
        assert num_tokens.dtype == torch.int
        total = total + loss_sum
        count += num_tokens
        metrics.append(m)
    return total / count, metrics


CONFIGS = [
    LossConfig(),
    LossConfig(aggregation="seq_mean"),
    LossConfig(kl_coef=0.1, clip_eps_low=0.1, clip_eps_high=0.3),
    LossConfig(entropy_coef=0.01, aggregation="seq_mean", temperature=0.8, logprob_chunk_size=4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["token_mean", "seq_mean", "kl", "entropy"])
@pytest.mark.parametrize("splits", [[(0, 6)], [(0, 1), (1, 4), (4, 6)]], ids=["one", "three"])
def test_loss_and_gradient_equal_the_reference(cfg: LossConfig, splits) -> None:
    logits, labels, mask, old, adv, ref, sw = _rollout()
    x = logits.clone().requires_grad_()
    loss, _ = _megatron_style(x, labels, mask, old, adv, ref, sw, cfg, splits)
    (grad,) = torch.autograd.grad(loss, x)
    x_ref = logits.double().requires_grad_()
    expected = _reference_objective(x_ref, labels, mask, old, adv, ref, sw, cfg)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=0, atol=1e-6)


def test_metrics_reduce_to_global_means() -> None:
    logits, labels, mask, old, adv, ref, sw = _rollout(1)
    cfg = LossConfig(clip_eps_low=0.1, clip_eps_high=0.1, kl_coef=0.05, log_entropy=True)
    loss, metrics = _megatron_style(logits.clone(), labels, mask, old, adv, ref, sw, cfg,
                                    [(0, 2), (2, 6)])

    def reduce(name):
        total = sum(m[name] for m in metrics)
        return (total[0] / total[1]).item()

    on = mask.bool()
    logp = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logp - old.double())[on]
    a = adv.unsqueeze(1).expand(B, S)[on].double()
    clipped = ((ratio < 0.9) & (a < 0)) | ((ratio > 1.1) & (a > 0))
    assert 0 < clipped.sum() < on.sum()  # the case is not trivial
    assert reduce("clip_frac") == pytest.approx(clipped.double().mean().item(), abs=1e-6)
    assert reduce("ratio_mean") == pytest.approx(ratio.mean().item(), rel=1e-5)
    assert reduce("approx_kl") == pytest.approx((ratio - 1 - ratio.log()).mean().item(), rel=1e-4)
    assert reduce("loss") == pytest.approx(loss.item(), rel=1e-6)  # the objective itself
    ent = -(torch.softmax(logits.double(), -1) * torch.log_softmax(logits.double(), -1)).sum(-1)
    assert reduce("entropy") == pytest.approx(ent[on].mean().item(), rel=1e-5)
    assert reduce("clip_frac_low") + reduce("clip_frac_high") == pytest.approx(reduce("clip_frac"))


@pytest.mark.parametrize("mode", ["logits", "fused"])
def test_first_step_ratio_is_exactly_one(mode: str) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(B, S, 16, generator=gen)
    weight = torch.randn(V, 16, generator=gen)
    _, labels, mask, _, adv, _, _ = _rollout()
    cfg = LossConfig(logprob_mode=mode, logprob_chunk_size=5)
    batch = {"labels": labels, "loss_mask": mask, "advantages": adv}
    output = hidden if mode == "fused" else hidden @ weight.t()
    weight_arg = weight if mode == "fused" else None
    # The trainer's recomputation of the rollout log-probs: the same function, no grad.
    with torch.no_grad():
        if mode == "fused":
            from megatron_rlpt.algo.logprobs import fused_output_logprobs

            old, _ = fused_output_logprobs(output, weight, labels, chunk_size=5, mask=mask)
        else:
            old, _ = vocab_parallel_logprobs(output, labels, chunk_size=5, mask=mask)
    batch["old_logprobs"] = old
    attach_global_denominators([batch])
    loss_sum, num_tokens, m = make_loss_func(batch, cfg, output_weight=weight_arg)(
        output.clone().requires_grad_())
    assert m["ratio_mean"][0].item() == m["ratio_mean"][1].item() == mask.sum().item()
    assert m["ratio_abs_dev"][0].item() == 0.0
    assert m["clip_frac"][0].item() == 0.0
    assert m["approx_kl"][0].item() == 0.0
    # With ratio 1 the token-mean loss is minus the mean advantage over response tokens.
    expected = -(adv.unsqueeze(1) * mask).sum() / mask.sum()
    assert (loss_sum / num_tokens).item() == pytest.approx(expected.item(), rel=1e-6)


def test_masked_positions_and_validation() -> None:
    logits, labels, mask, old, adv, ref, sw = _rollout()
    logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    batch = {"loss_mask": mask, "old_logprobs": old, "advantages": adv}
    attach_global_denominators([batch])
    loss_sum, num_tokens, metrics = policy_loss(logp.requires_grad_(), batch, LossConfig())
    assert math.isfinite(loss_sum.item())  # NaN rollout log-probs off the response stay out
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert num_tokens.item() == int(mask.sum())
    with pytest.raises(KeyError, match="ref_logprobs"):
        policy_loss(logp, batch, LossConfig(kl_coef=0.1))
    with pytest.raises(KeyError, match="advantages"):
        policy_loss(logp, {"loss_mask": mask, "old_logprobs": old, "global_num_tokens":
                           torch.tensor(1.0)}, LossConfig())
    with pytest.raises(ValueError, match="output weight"):
        make_loss_func(batch, LossConfig(logprob_mode="fused"))
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(logp, batch, LossConfig(aggregation="sum"))  # type: ignore[arg-type]
