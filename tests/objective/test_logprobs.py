"""Chunked vocab-parallel log-probs (single rank) against plain `torch.log_softmax`."""

from __future__ import annotations

import pytest
import torch

from megatron_rlpt.algo.logprobs import LOCAL, fused_output_logprobs, vocab_parallel_logprobs
from megatron_rlpt.algo.memory import LiveBytes

B, S, V, H = 3, 11, 257, 24


def _reference(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0):
    logs = torch.log_softmax(logits.double() / temperature, dim=-1)
    logp = logs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logs.exp() * logs).sum(-1)
    return logp, entropy


def _data(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, S, V, generator=gen) * 4).to(dtype)
    target = torch.randint(0, V, (B, S), generator=gen)
    mask = torch.rand(B, S, generator=gen) > 0.35
    weights = torch.randn(B, S, generator=gen, dtype=torch.float64)
    return logits, target, mask, weights


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_values_and_gradients_match_log_softmax(chunk: int, temperature: float, use_mask: bool,
                                                inplace: bool) -> None:
    logits, target, mask, w = _data()
    m = mask if use_mask else None
    x = logits.clone().requires_grad_()
    logp, entropy = vocab_parallel_logprobs(x, target, chunk_size=chunk, temperature=temperature,
                                            mask=m, compute_entropy=True, inplace_backward=inplace)
    assert logp.dtype == torch.float32 and logp.shape == target.shape
    ref_x = logits.double().requires_grad_()
    ref_logp, ref_ent = _reference(ref_x, target, temperature)
    keep = mask if use_mask else torch.ones_like(mask)
    ref_logp, ref_ent = ref_logp * keep, ref_ent * keep
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_ent.detach(), rtol=0, atol=1e-5)
    if not inplace:
        assert torch.equal(x.detach(), logits)  # the forward never writes into its input
    (g,) = torch.autograd.grad((logp * w).sum() + (entropy * w.flip(0)).sum(), x)
    (g_ref,) = torch.autograd.grad((ref_logp * w).sum() + (ref_ent * w.flip(0)).sum(), ref_x)
    torch.testing.assert_close(g.double(), g_ref, rtol=0, atol=1e-5)
    if not inplace:
        assert torch.equal(x.detach(), logits)


def test_bf16_logits() -> None:
    logits, target, _, w = _data(dtype=torch.bfloat16)
    x = logits.clone().requires_grad_()
    logp, _ = vocab_parallel_logprobs(x, target, chunk_size=5)
    ref_x = logits.double().requires_grad_()
    ref, _ = _reference(ref_x, target)
    # The bf16 values are exact inputs; the arithmetic is fp32.
    torch.testing.assert_close(logp.double(), ref.detach(), rtol=0, atol=1e-5)
    (g,) = torch.autograd.grad((logp * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), ref_x)
    assert g.dtype == torch.bfloat16
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-2, atol=1e-3)  # one bf16 rounding


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("entropy", [False, True])
def test_fused_output_layer(use_mask: bool, entropy: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(B, S, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / H**0.5
    _, target, mask, w = _data(2)
    m = mask if use_mask else None
    h, wt = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = fused_output_logprobs(h, wt, target, chunk_size=4, mask=m, compute_entropy=entropy)
    h_ref, w_ref = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref_logp, ref_ent = _reference(h_ref @ w_ref.t(), target)
    keep = mask if use_mask else torch.ones_like(mask)
    loss = (logp * w).sum() + ((ent * w).sum() * 0.5 if entropy else 0)
    ref_loss = (ref_logp * keep * w).sum() + ((ref_ent * keep * w).sum() * 0.5 if entropy else 0)
    torch.testing.assert_close(logp.double(), (ref_logp * keep).detach(), rtol=0, atol=1e-5)
    grads = torch.autograd.grad(loss, [h, wt])
    ref_grads = torch.autograd.grad(ref_loss, [h_ref, w_ref])
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), g_ref, rtol=0, atol=1e-5)


def test_logits_and_fused_paths_agree() -> None:
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, S, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    _, target, _, _ = _data()
    a, _ = fused_output_logprobs(hidden, weight, target, chunk_size=3, tp_group=LOCAL)
    b, _ = vocab_parallel_logprobs(hidden @ weight.t(), target, chunk_size=5, tp_group=LOCAL)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_no_full_vocabulary_fp32_tensor_is_built() -> None:
    n, v, chunk = 512, 2048, 64
    gen = torch.Generator().manual_seed(0)
    full = n * v * 4
    block = chunk * v * 4
    logits = torch.randn(1, n, v, generator=gen).bfloat16().requires_grad_()
    target = torch.randint(0, v, (1, n), generator=gen)
    with LiveBytes() as live:
        logp, _ = vocab_parallel_logprobs(logits, target, chunk_size=chunk, inplace_backward=True)
        torch.autograd.grad(logp.sum(), logits)
    assert live.largest <= block < full
    assert live.peak <= 3 * block + 64 * n
    naive_logits = torch.randn(1, n, v, generator=gen).bfloat16().requires_grad_()
    with LiveBytes() as naive:
        logs = torch.log_softmax(naive_logits.float(), -1)
        torch.autograd.grad(logs.gather(-1, target.unsqueeze(-1)).sum(), naive_logits)
    assert naive.largest >= full  # the tracker sees the naive path's fp32 logits
    assert live.peak < 0.1 * naive.peak
    # Fused: neither the logits nor their gradient ever exist whole.
    hidden = torch.randn(n, 32, generator=gen).requires_grad_()
    weight = torch.randn(v, 32, generator=gen).requires_grad_()
    with LiveBytes() as fused:
        logp, _ = fused_output_logprobs(hidden, weight, target.view(-1), chunk_size=chunk)
        torch.autograd.grad(logp.sum(), [hidden, weight])
    assert fused.largest < full / 4


@pytest.mark.parametrize("fused", [False, True])
def test_padded_vocabulary_is_left_out(fused: bool) -> None:
    true_vocab = 200  # of V = 257 columns; ids 200.. are Megatron's padding
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(B, S, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    target = torch.randint(0, true_vocab, (B, S), generator=gen)
    w = torch.randn(B, S, generator=gen, dtype=torch.float64)
    if fused:
        h, wt = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logp, ent = fused_output_logprobs(h, wt, target, chunk_size=4, compute_entropy=True,
                                          vocab_size=true_vocab)
        inputs = [h, wt]
    else:
        x = (hidden @ weight.t()).requires_grad_()
        logp, ent = vocab_parallel_logprobs(x, target, chunk_size=4, compute_entropy=True,
                                            vocab_size=true_vocab)
        inputs = [x]
    h_ref, w_ref = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logits_ref = h_ref @ w_ref.t()
    ref_logp, ref_ent = _reference(logits_ref[..., :true_vocab], target)
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), rtol=0, atol=1e-5)
    loss, ref_loss = (logp * w).sum() + ent.sum(), (ref_logp * w).sum() + ref_ent.sum()
    grads = torch.autograd.grad(loss, inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    if fused:
        ref_grads = torch.autograd.grad(ref_loss, [h_ref, w_ref])
    else:
        ref_grads = torch.autograd.grad(ref_loss, [logits_ref])
        assert (grads[0][..., true_vocab:] == 0).all()
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), g_ref, rtol=0, atol=2e-5)


def test_validation() -> None:
    logits, target, _, _ = _data()
    with pytest.raises(ValueError):
        vocab_parallel_logprobs(logits, target[:, :3])
    with pytest.raises(ValueError):
        vocab_parallel_logprobs(logits, target, chunk_size=0)
