"""Old log-probs: recomputed by the training model (the ratio is exactly 1 on the only update,
whatever the engine reported) or the engine's with a truncated importance weight; the mismatch
between the two is measured every step."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_rlpt.algo.loss import LossConfig, policy_loss
from tests.multirank import run_multirank

B, S, CAP = 3, 7, 1.5


def _batch(engine: torch.Tensor, old: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = torch.zeros(B, S)
    for b, start in enumerate([1, 3, 2]):
        mask[b, start:] = 1
    return {"loss_mask": mask, "old_logprobs": old, "engine_logprobs": engine,
            "advantages": torch.tensor([1.0, -0.7, 0.4]),
            "global_num_tokens": mask.sum(), "global_num_seqs": torch.tensor(float(B))}


def _policy() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the current policy (a leaf, for its gradient) and an engine's
    view of them perturbed by up to ±1 nat."""
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(B, S, generator=gen) * 3).requires_grad_()
    engine = logp.detach() + (torch.rand(B, S, generator=gen) * 2 - 1)
    return logp, engine


def _run(logp: torch.Tensor, batch: dict, cfg: LossConfig) -> tuple[dict[str, float], torch.Tensor,
                                                                      dict[str, float]]:
    logp.grad = None
    extremes: dict[str, float] = {}
    loss_sum, _, metrics = policy_loss(logp, batch, cfg, extremes=extremes)
    total = batch["global_num_tokens"]
    (loss_sum / total).backward()
    means = {k: float(v[0] / v[1]) for k, v in metrics.items()}
    return means, logp.grad.clone(), extremes


def _expected_weights(train: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor,
                      cap: float) -> torch.Tensor:
    return torch.where(mask != 0, torch.exp(train - engine).clamp(max=cap), torch.zeros_like(mask))


def test_recompute_ratio_is_one_whatever_the_engine_reported():
    logp, engine = _policy()
    batch = _batch(engine, logp.detach().clone())  # old = the training model's recompute
    m, grad, extremes = _run(logp, batch, LossConfig(tis_cap=0))
    assert m["ratio_mean"] == 1.0 and m["ratio_abs_dev"] == 0.0
    assert m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0
    mask = batch["loss_mask"]
    delta = (logp.detach() - engine)[mask != 0]
    assert m["mismatch/logp_abs_diff"] == pytest.approx(delta.abs().mean().item(), rel=1e-6)
    assert m["mismatch/logp_abs_diff"] > 0.3
    assert m["mismatch/k3_kl"] == pytest.approx((delta.exp() - 1 - delta).mean().item(), rel=1e-5)
    assert extremes["mismatch/ratio_max"] == pytest.approx(delta.exp().max().item(), rel=1e-6)
    assert -extremes["mismatch/ratio_min"] == pytest.approx(delta.exp().min().item(), rel=1e-6)
    assert "tis/weight_mean" not in m
    # The gradient is plain on-policy policy gradient: −A_j / T per response token.
    adv = batch["advantages"].view(B, 1).expand(B, S)
    assert torch.allclose(grad, -adv * mask / mask.sum(), atol=1e-7)


def test_recompute_with_tis_weights_each_token():
    logp, engine = _policy()
    batch = _batch(engine, logp.detach().clone())
    m, grad, _ = _run(logp, batch, LossConfig(tis_cap=CAP))
    assert m["ratio_mean"] == 1.0 and m["clip_frac"] == 0.0
    mask = batch["loss_mask"]
    w = _expected_weights(logp.detach(), engine, mask, CAP)
    adv = batch["advantages"].view(B, 1).expand(B, S)
    assert torch.allclose(grad, -w * adv / mask.sum(), atol=1e-7)
    assert m["tis/weight_mean"] == pytest.approx(w[mask != 0].mean().item(), rel=1e-6)
    capped = (torch.exp(logp.detach() - engine) > CAP)[mask != 0].float().mean().item()
    assert 0 < capped < 1 and m["tis/capped_frac"] == pytest.approx(capped)


def test_engine_mode_with_tis_applies_the_capped_weight():
    logp, engine = _policy()
    batch = _batch(engine, engine.clone())  # what the stage hands the loss in engine mode
    m, grad, extremes = _run(logp, batch, LossConfig(old_logprobs="engine", tis_cap=CAP))
    # The ratio is normalised to 1 (one update per rollout batch); the engine enters only
    # through w = min(exp(logp − logp_engine), C).
    assert m["ratio_mean"] == 1.0 and m["clip_frac"] == 0.0
    mask = batch["loss_mask"]
    w = _expected_weights(logp.detach(), engine, mask, CAP)
    adv = batch["advantages"].view(B, 1).expand(B, S)
    assert torch.allclose(grad, -w * adv / mask.sum(), atol=1e-7)
    assert m["loss"] == pytest.approx((-w * adv)[mask != 0].mean().item(), rel=1e-6)
    assert (w[mask != 0] == CAP).any() and (w[mask != 0] < 1).any()
    assert extremes["mismatch/ratio_max"] > CAP


def test_engine_mode_without_tis_clips_on_the_mismatch():
    logp, engine = _policy()
    batch = _batch(engine, engine.clone())
    m, _, _ = _run(logp, batch, LossConfig(old_logprobs="engine", tis_cap=0))
    mask = batch["loss_mask"]
    ratio = torch.exp(logp.detach() - engine)[mask != 0]
    assert m["ratio_mean"] == pytest.approx(ratio.mean().item(), rel=1e-6)
    assert m["clip_frac"] > 0 and "tis/weight_mean" not in m


def test_tokens_without_engine_logprobs_stay_out_of_the_mismatch():
    logp, engine = _policy()
    engine[0] = float("nan")  # an engine that reported nothing for the first sequence
    batch = _batch(engine, logp.detach().clone())
    m, grad, extremes = _run(logp, batch, LossConfig(tis_cap=CAP))
    assert all(math.isfinite(v) for v in m.values())
    assert torch.isfinite(grad).all()
    mask = batch["loss_mask"]
    adv = batch["advantages"]
    assert torch.allclose(grad[0], -adv[0] * mask[0] / mask.sum(), atol=1e-7)  # weight 1
    assert math.isfinite(extremes["mismatch/ratio_max"])


def test_batches_without_engine_logprobs_keep_the_old_loss():
    logp, engine = _policy()
    batch = _batch(engine, logp.detach().clone())
    del batch["engine_logprobs"]
    m, _, extremes = _run(logp, batch, LossConfig())
    assert not any(k.startswith(("mismatch", "tis")) for k in m) and not extremes


# -- inside Megatron: the stage's recompute at TP=1, TP=2 and PP=2 ------------------------------

TOL = 1e-5


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> dict:
    from tests.rollout.workers import make_tokenizer

    tokenizer_dir = make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))
    ckpt = str(tmp_path_factory.mktemp("ckpt"))
    tp1 = run_multirank("tests.algo.workers:old_logprobs_suite", nproc=1, ckpt=ckpt,
                        tokenizer_dir=tokenizer_dir, tp=1, pp=1, save=True, tis_cap=CAP)[0]
    runs = {"tp1": [tp1]}
    for name, tp, pp in (("tp2", 2, 1), ("pp2", 1, 2)):
        runs[name] = run_multirank("tests.algo.workers:old_logprobs_suite", nproc=2, ckpt=ckpt,
                                   tokenizer_dir=tokenizer_dir, tp=tp, pp=pp, save=False,
                                   completions=tp1["completions"], tis_cap=CAP)
    return runs


def _flat(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([x for r in rows for x in r], dtype=torch.float64)


@pytest.mark.multirank
@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_recomputed_logprobs_equal_the_in_process_engines(suite, layout):
    last = [r for r in suite[layout] if r["last_stage"]]
    assert last
    engine = _flat(suite["tp1"][0]["engine_lp"])
    assert engine.numel() >= 6 * 2
    for r in last:
        assert (_flat(r["recomputed"]) - engine).abs().max().item() <= TOL


@pytest.mark.multirank
@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_recompute_mode_in_megatron(suite, layout):
    ref = suite["tp1"][0]
    rec, pert = _flat(ref["recomputed"]), _flat(ref["perturbed"])
    ratio = torch.exp(rec - pert)
    for r in suite[layout]:  # metrics are the same on every rank
        m = r["recompute"]
        assert m["ratio_mean"] == 1.0 and m["ratio_abs_dev"] == 0.0
        assert m["clip_frac"] == 0.0 and m["approx_kl"] == 0.0
        assert m["mismatch/logp_abs_diff"] == pytest.approx((rec - pert).abs().mean().item(),
                                                            abs=TOL)
        assert m["mismatch/ratio_max"] == pytest.approx(ratio.max().item(), rel=TOL)
        assert m["mismatch/ratio_min"] == pytest.approx(ratio.min().item(), rel=TOL)
        assert m["tis/weight_mean"] == pytest.approx(ratio.clamp(max=CAP).mean().item(), abs=TOL)


@pytest.mark.multirank
@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_engine_mode_with_tis_in_megatron(suite, layout):
    from tests.algo.workers import ADVANTAGES

    ref = suite["tp1"][0]
    rec, pert = _flat(ref["recomputed"]), _flat(ref["perturbed"])
    w = torch.exp(rec - pert).clamp(max=CAP)
    adv = _flat([[ADVANTAGES[j % len(ADVANTAGES)]] * len(row)
                 for j, row in enumerate(ref["recomputed"])])
    for r in suite[layout]:
        m = r["engine"]
        assert m["ratio_mean"] == 1.0 and m["clip_frac"] == 0.0
        assert m["tis/capped_frac"] > 0
        assert m["loss"] == pytest.approx((-w * adv).mean().item(), abs=TOL)
