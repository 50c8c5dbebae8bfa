"""The GRPO policy-gradient loss in Megatron's `loss_func` contract.

Per response token t of sequence j, with ratio r = exp(logp − logp_old) and advantage A_j:

    l_t = −w_t·min(r·A_j, clip(r, 1−ε_low, 1+ε_high)·A_j)  [+ β·k3(π_ref‖π)]  [− c_H·H_t]

logp_old is the training model's log-prob at the rollout's weights (recomputed before the update,
`old_logprobs=recompute`), and w_t = min(exp(logp_old − logp_engine), C) the truncated
importance weight for the rollout engine's own numerics (1 without `engine_logprobs` or with
`tis_cap` 0). See `LossConfig.old_logprobs` for the `engine` variant.

The objective is a weighted sum over the *global* batch, Σ_t w_t·l_t, with

    token_mean:  w_t = s_j / T          (T: response tokens in the global batch)
    seq_mean:    w_t = s_j / (N·|o_j|)  (N: sequences in the global batch, |o_j| their lengths)

and s_j the sample weight (λ for MSR under `lambda_mode=loss_weight`, else 1).

Megatron contract (`calculate_per_token_loss=True`): a loss function returns `(loss_sum,
num_tokens, metrics)`; Megatron sums `num_tokens` over micro-batches and data-parallel ranks and
divides the gradients by that sum. We return `num_tokens` = this micro-batch's response-token
count and `loss_sum` = T·Σ_t w_t·l_t over its tokens, where T comes precomputed with the batch
(`global_num_tokens`, see `attach_global_denominators`). Megatron's sum of `num_tokens` is then
T, and the gradient is exactly that of Σ_global w_t·l_t however the batch is split. For
token_mean this is simply loss_sum = Σ_t s_j·l_t. Metrics are `[sum, count]` pairs whose global
ratio is the mean (the `loss` metric's global ratio is the objective itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from megatron_rlpt.algo.logprobs import fused_output_logprobs, vocab_parallel_logprobs


@dataclass
class LossConfig:
    """The policy-gradient loss."""

    clip_eps_low: float = 0.2
    """Lower clip: the ratio is clipped at 1 − ε_low for negative advantages."""
    clip_eps_high: float = 0.28
    """Upper clip: the ratio is clipped at 1 + ε_high for positive advantages (DAPO's
    'clip-higher' value; the paper states none, and on-policy single-step updates keep the
    ratio at 1 where clipping is inactive)."""
    aggregation: Literal["token_mean", "seq_mean"] = "token_mean"
    """`token_mean`: every response token of the global batch weighs the same (DAPO);
    `seq_mean`: each sequence's token mean, averaged over sequences (the original GRPO)."""
    kl_coef: float = 0.0
    """β of the k3 KL penalty to a reference policy (needs `ref_logprobs`). 0: none, as in the
    paper."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (subtracts c·H from the loss); 0: none."""
    log_entropy: bool = True
    """Compute the policy entropy as a metric even without a bonus (one more TP all-reduce and
    one more reduction per logits chunk; it enters the loss only through `entropy_coef`)."""
    logprob_mode: Literal["logits", "fused"] = "logits"
    """`logits`: log-probs from the model's vocab-parallel logits output; `fused`: from its
    final hidden states and the output weight, so no `[tokens, V/TP]` logits tensor or gradient
    exists at all (use with `output_layer_bypass`)."""
    logprob_chunk_size: int = 512
    """Tokens per chunk of the log-prob computation: the largest temporary is about
    chunk × V/TP × 4 bytes (311 MB for Qwen's 151,936-token vocabulary at TP=1)."""
    temperature: float = 1.0
    """Divide the logits by this before the softmax; must equal the rollout temperature for the
    ratio to compare like with like."""
    max_log_ratio: float = 20.0
    """|logp − logp_rollout| is clamped here before exp, so a stray token cannot overflow."""
    old_logprobs: Literal["recompute", "engine"] = "recompute"
    """Where the ratio's old log-probs come from. `recompute`: one forward-only pass of the
    training model over the rollouts before the update, so the ratio is exactly 1 on the single
    update and the clip is inactive, as in on-policy GRPO; the rollout engine's log-probs serve
    only the mismatch metrics and the `tis_cap` correction. `engine`: no extra forward; the
    engine's log-probs are the behaviour policy, corrected by the truncated importance weight
    (with `tis_cap` 0, the ratio is taken against them and the clip acts on the train-inference
    mismatch)."""
    tis_cap: float = 2.0
    """C of the truncated importance-sampling weight min(exp(logp_train_old − logp_engine), C)
    that multiplies each token's policy-gradient term when the batch carries the engine's
    log-probs; 0 disables it. It is 1 wherever the engine reproduces the training model."""


# Keys of a micro-batch dict that `policy_loss` reads (`make_loss_func` also needs `labels`).
REQUIRED_KEYS = ("loss_mask", "old_logprobs", "advantages", "global_num_tokens")


def attach_global_denominators(micro_batches: Sequence[dict[str, torch.Tensor]],
                               dp_group: Any = None) -> tuple[int, int]:
    """Count response tokens T and sequences N over the whole global batch; store them in
    every micro-batch (`global_num_tokens`, `global_num_seqs`).

    `micro_batches` are this rank's; with `dp_group` the counts are summed over data-parallel
    ranks. A sequence counts when it has at least one response token. Call once per step before
    `forward_backward_func`.
    """
    counts = torch.zeros(2, dtype=torch.float64)
    for mb in micro_batches:
        mask = mb["loss_mask"].reshape(mb["loss_mask"].shape[0], -1) != 0
        counts[0] += mask.sum()
        counts[1] += mask.any(dim=1).sum()
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(counts, group=dp_group)
    tokens, seqs = int(counts[0]), int(counts[1])
    for mb in micro_batches:
        mb["global_num_tokens"] = torch.tensor(float(tokens))
        mb["global_num_seqs"] = torch.tensor(float(seqs))
    return tokens, seqs


def token_weights(batch: dict[str, torch.Tensor], aggregation: str) -> torch.Tensor:
    """w_t of the module docstring for one micro-batch, `[b, s]` fp32 (0 off the response)."""
    mask = batch["loss_mask"].float()
    b = mask.shape[0]
    sample = batch.get("sample_weight")
    sample = torch.ones(b, device=mask.device) if sample is None else sample.float().to(mask.device)
    if aggregation == "token_mean":
        total = batch["global_num_tokens"].float().to(mask.device)
        return mask * sample.view(b, 1) / total.clamp(min=1)
    if aggregation == "seq_mean":
        if "global_num_seqs" not in batch:
            raise KeyError("seq_mean needs global_num_seqs in the batch")
        seqs = batch["global_num_seqs"].float().to(mask.device)
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
        return mask * sample.view(b, 1) / (lengths * seqs.clamp(min=1))
    raise ValueError(f"unknown aggregation {aggregation!r}; use 'token_mean' or 'seq_mean'")


def _keep_max(extremes: dict[str, float], name: str, value: float) -> None:
    extremes[name] = max(extremes.get(name, float("-inf")), value)


def _old_and_engine_logprobs(
    logp: torch.Tensor, batch: dict[str, torch.Tensor], cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """(old log-probs of the ratio, the engine's log-probs or None, whether TIS applies).

    `old_logprobs` in the batch is the training model's recompute (`recompute` mode) or, in
    `engine` mode and without `engine_logprobs`, the engine's own.
    """
    if cfg.old_logprobs not in ("recompute", "engine"):
        raise ValueError(f"unknown old_logprobs {cfg.old_logprobs!r}; use 'recompute' or 'engine'")
    engine = batch.get("engine_logprobs")
    if cfg.old_logprobs == "recompute":
        old = batch["old_logprobs"].float().to(logp.device)
        engine = None if engine is None else engine.float().to(logp.device)
        return old, engine, engine is not None and cfg.tis_cap > 0
    engine = (batch["old_logprobs"] if engine is None else engine).float().to(logp.device)
    if cfg.tis_cap > 0:
        # One update per rollout batch: the training model's log-probs at the rollout's weights
        # are this forward's own, so the ratio is sg-normalised to 1 and the engine enters only
        # through the truncated weight.
        return logp.detach(), engine, True
    return engine, engine, False


def policy_loss(
    logp: torch.Tensor,
    batch: dict[str, torch.Tensor],
    cfg: LossConfig,
    entropy: torch.Tensor | None = None,
    extremes: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`(loss_sum, num_tokens, metrics)` for per-token log-probs `logp` `[b, s]`.

    With `engine_logprobs` in the batch the mismatch metrics are computed (and the TIS weight
    applied, see `LossConfig.tis_cap`); `extremes`, when given, receives the running maxima
    `mismatch/ratio_max` and `mismatch/ratio_min` (negated), which a mean cannot carry.
    """
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise KeyError(f"policy batch lacks {missing}")
    mask_f = batch["loss_mask"].float().to(logp.device)
    on = mask_f != 0
    adv = batch["advantages"].float().to(logp.device)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1).expand_as(logp)
    old, engine, tis_on = _old_and_engine_logprobs(logp, batch, cfg)
    metrics_extra: dict[str, torch.Tensor] = {}
    weight = None
    if engine is not None:
        # Train-inference mismatch: the training model's log-probs of the sampled tokens at the
        # rollout's weights (recomputed, or this forward's own on the single update) against the
        # engine's. Tokens the engine gave no log-prob for (NaN) are left out.
        train_old = old if cfg.old_logprobs == "recompute" else logp.detach()
        known = on & torch.isfinite(engine)
        delta = torch.where(known, train_old - engine, torch.zeros_like(logp))
        delta = delta.clamp(-cfg.max_log_ratio, cfg.max_log_ratio)
        mismatch_ratio = torch.exp(delta)
        metrics_extra["mismatch/logp_abs_diff"] = delta.abs()
        # k3 estimate of KL(π_engine ‖ π_train) over the engine's samples.
        metrics_extra["mismatch/k3_kl"] = mismatch_ratio - 1.0 - delta
        if extremes is not None and bool(known.any()):
            values = mismatch_ratio[known]
            _keep_max(extremes, "mismatch/ratio_max", float(values.max()))
            _keep_max(extremes, "mismatch/ratio_min", -float(values.min()))
        if tis_on:
            weight = mismatch_ratio.clamp(max=cfg.tis_cap)
            metrics_extra["tis/weight_mean"] = weight
            metrics_extra["tis/capped_frac"] = (known & (mismatch_ratio > cfg.tis_cap)).float()

    # Off the response the old log-prob may be anything (even NaN): keep it out of exp.
    log_ratio = torch.where(on, logp - old, torch.zeros_like(logp))
    log_ratio = log_ratio.clamp(-cfg.max_log_ratio, cfg.max_log_ratio)
    ratio = torch.exp(log_ratio)
    surr = ratio * adv
    surr_clipped = ratio.clamp(1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high) * adv
    pg = -torch.minimum(surr, surr_clipped)
    if weight is not None:
        pg = weight * pg
    per_token = pg
    clipped = (surr_clipped < surr) & on

    if cfg.kl_coef:
        if "ref_logprobs" not in batch:
            raise KeyError("kl_coef > 0 needs ref_logprobs in the batch")
        ref = batch["ref_logprobs"].float().to(logp.device)
        diff = torch.where(on, ref - logp, torch.zeros_like(logp)).clamp(-cfg.max_log_ratio,
                                                                          cfg.max_log_ratio)
        kl = torch.exp(diff) - diff - 1.0  # k3: unbiased, non-negative estimate of KL(π‖π_ref)
        per_token = per_token + cfg.kl_coef * kl
        metrics_extra["kl_ref"] = kl
    if entropy is not None:
        if cfg.entropy_coef:
            per_token = per_token - cfg.entropy_coef * entropy
        metrics_extra["entropy"] = entropy

    weights = token_weights(batch, cfg.aggregation).to(logp.device)
    total = batch["global_num_tokens"].float().to(logp.device).clamp(min=1)
    loss_sum = (per_token * weights).sum() * total
    num_tokens = on.sum().to(torch.int)

    count = mask_f.sum().detach()

    def pair(values: torch.Tensor) -> torch.Tensor:
        return torch.stack([(values.detach().float() * mask_f).sum(), count])

    with torch.no_grad():
        metrics = {
            "loss": torch.stack([loss_sum.detach(), count]),
            "pg_loss": pair(pg),
            "clip_frac": pair(clipped.float()),
            "clip_frac_low": pair((clipped & (adv < 0)).float()),
            "clip_frac_high": pair((clipped & (adv > 0)).float()),
            # k3 estimate of KL(π_rollout ‖ π): (r − 1) − log r, exactly 0 when r = 1.
            "approx_kl": pair((ratio - 1.0) - log_ratio),
            "ratio_mean": pair(ratio),
            "ratio_abs_dev": pair((ratio - 1.0).abs()),
            "advantage_mean": pair(adv),
        }
        for name, values in metrics_extra.items():
            metrics[name] = pair(values)
    return loss_sum, num_tokens, metrics


def make_loss_func(
    batch: dict[str, torch.Tensor],
    cfg: LossConfig,
    *,
    output_weight: torch.Tensor | None = None,
    tp_group: Any = None,
    vocab_size: int | None = None,
    extremes: dict[str, float] | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """The `loss_func` a forward step returns alongside the model output.

    The output is `[b, s, V/TP]` logits (`logprob_mode=logits`), or `[b, s, H]` hidden states
    with `output_weight` (`logprob_mode=fused`, under `output_layer_bypass`). Only response
    positions are computed. `vocab_size` (the tokenizer's) keeps Megatron's padded vocabulary
    ids out of the softmax. In logits mode the backward writes the gradient over the logits
    (they are the model's private output copy), so no second full-size tensor is allocated.
    """
    if cfg.logprob_mode == "fused" and output_weight is None:
        raise ValueError("logprob_mode 'fused' needs the output weight (see output_layer_bypass)")

    def loss_func(output: torch.Tensor):
        labels = batch["labels"].to(output.device)
        mask = batch["loss_mask"].to(output.device)
        want_entropy = bool(cfg.entropy_coef) or cfg.log_entropy
        kwargs = dict(tp_group=tp_group, chunk_size=cfg.logprob_chunk_size,
                      temperature=cfg.temperature, mask=mask, compute_entropy=want_entropy,
                      vocab_size=vocab_size)
        if cfg.logprob_mode == "fused":
            logp, entropy = fused_output_logprobs(output, output_weight, labels, **kwargs)
        else:
            logp, entropy = vocab_parallel_logprobs(output, labels, inplace_backward=True,
                                                    **kwargs)
        return policy_loss(logp, batch, cfg, entropy, extremes)

    return loss_func
