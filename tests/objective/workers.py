"""Functions run on every rank by tests/multirank.py (torchrun, gloo, CPU) for the objective."""

from __future__ import annotations

from typing import Any

import torch

B, S, V, H = 3, 10, 254, 16  # V splits evenly over 2 ranks


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _reference(logits: torch.Tensor, target: torch.Tensor):
    logs = torch.log_softmax(logits.double(), -1)
    return logs.gather(-1, target.unsqueeze(-1)).squeeze(-1), -(logs.exp() * logs).sum(-1)


def tp2_objective(seed: int = 0) -> dict[str, Any]:
    """One TP=2 process group for both checks below (each launch costs seconds of imports)."""
    from megatron_rlpt.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        init_distributed,
    )

    init_distributed(ParallelConfig(tensor_parallel=2), seed=seed + 1)
    try:
        return {"logprobs": _tp_logprobs(seed), "gpt": _gpt_rl_step(seed)}
    finally:
        destroy_distributed()


def _tp_logprobs(seed: int) -> dict[str, Any]:
    """Log-probs, entropy and gradients at TP=2 against TP=1, log_softmax and Megatron's CE."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from megatron_rlpt.algo.logprobs import LOCAL, fused_output_logprobs, vocab_parallel_logprobs

    rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    part = slice(rank * V // tp, (rank + 1) * V // tp)
    gen = torch.Generator().manual_seed(seed)  # the same data on every rank
    full = torch.randn(B, S, V, generator=gen) * 3
    target = torch.randint(0, V, (B, S), generator=gen)
    mask = torch.rand(B, S, generator=gen) > 0.3
    w1 = torch.randn(B, S, generator=gen)
    w2 = torch.randn(B, S, generator=gen)
    out: dict[str, Any] = {"rank": rank, "tp": tp}

    ref_x = full.double().requires_grad_()
    ref_logp, ref_ent = _reference(ref_x, target)
    (ref_grad,) = torch.autograd.grad((ref_logp * w1).sum() + (ref_ent * w2).sum(), ref_x)

    for name, kwargs in {"plain": {}, "masked": {"mask": mask},
                         "inplace": {"inplace_backward": True}}.items():
        keep = mask if name == "masked" else torch.ones_like(mask)
        # TP=2: this rank's vocabulary shard; the group comes from Megatron's parallel state.
        shard = full[..., part].clone().requires_grad_()
        logp, ent = vocab_parallel_logprobs(shard, target, chunk_size=4, compute_entropy=True,
                                            **kwargs)
        (grad,) = torch.autograd.grad((logp * w1).sum() + (ent * w2).sum(), shard)
        # TP=1 on this rank alone, over the whole vocabulary.
        whole = full.clone().requires_grad_()
        logp1, ent1 = vocab_parallel_logprobs(whole, target, tp_group=LOCAL, chunk_size=4,
                                              compute_entropy=True, **kwargs)
        (grad1,) = torch.autograd.grad((logp1 * w1).sum() + (ent1 * w2).sum(), whole)
        out[name] = {
            "tp2_vs_tp1_logp": _max_diff(logp, logp1),
            "tp2_vs_tp1_entropy": _max_diff(ent, ent1),
            "tp2_vs_tp1_grad": _max_diff(grad, grad1[..., part]),
            "tp2_vs_ref_logp": _max_diff(logp, ref_logp.detach() * keep),
            "tp2_vs_ref_entropy": _max_diff(ent, ref_ent.detach() * keep),
            "logp": logp.detach(),
        }
        if name != "masked":
            out[name]["tp2_vs_ref_grad"] = _max_diff(grad, ref_grad[..., part])

    # Megatron's own vocab-parallel cross-entropy at TP=2 (it overwrites its input: a copy).
    ce = tensor_parallel.vocab_parallel_cross_entropy(full[..., part].clone(), target)
    out["megatron_ce_vs_logp"] = _max_diff(-ce, out["plain"]["logp"])

    # Fused output layer at TP=2: replicated hidden states, this rank's weight shard.
    hidden = torch.randn(B, S, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    h, wt = hidden.clone().requires_grad_(), weight[part].clone().requires_grad_()
    logp, ent = fused_output_logprobs(h, wt, target, chunk_size=4, compute_entropy=True)
    g_h, g_w = torch.autograd.grad((logp * w1).sum() + (ent * w2).sum(), [h, wt])
    h_ref, w_ref = hidden.double().requires_grad_(), weight.double().requires_grad_()
    f_logp, f_ent = _reference(h_ref @ w_ref.t(), target)
    r_h, r_w = torch.autograd.grad((f_logp * w1).sum() + (f_ent * w2).sum(), [h_ref, w_ref])
    out["fused"] = {"logp": _max_diff(logp, f_logp.detach()), "entropy": _max_diff(ent, f_ent.detach()),
                    "grad_hidden": _max_diff(g_h, r_h), "grad_weight": _max_diff(g_w, r_w[part])}
    return out


def _gpt_rl_step(seed: int) -> dict[str, Any]:
    """The loss inside Megatron's forward_backward_func on a TP=2 GPTModel.

    Rollout log-probs are recomputed forward-only, then one forward/backward per log-prob mode
    (logits, fused): the first-step invariants hold and both modes give the same gradients.
    """
    from megatron_rlpt.algo.logprobs import output_layer_bypass, vocab_parallel_logprobs
    from megatron_rlpt.algo.loss import LossConfig, attach_global_denominators, make_loss_func
    from megatron_rlpt.runtime.distributed import ParallelConfig
    from megatron_rlpt.runtime.model import ModelConfig
    from megatron_rlpt.runtime.optim import OptimConfig
    from megatron_rlpt.runtime.step import run_forward_backward, setup_training

    vocab, seq, batch_size, micro = 300, 12, 4, 2
    parallel = ParallelConfig(tensor_parallel=2)
    model_cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=96,
                            num_attention_heads=4, num_query_groups=2, vocab_size=vocab,
                            max_position_embeddings=64)
    state = setup_training(model_cfg, parallel, OptimConfig(lr=1e-3, schedule="constant"),
                           total_steps=1)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch_size, seq + 1), generator=gen)
    loss_mask = torch.zeros(batch_size, seq)
    for b, start in enumerate([3, 5, 2, 7]):  # prompts of different lengths, then the response
        loss_mask[b, start:] = 1
    batches = [{
        "tokens": tokens[i : i + micro, :-1], "labels": tokens[i : i + micro, 1:],
        "loss_mask": loss_mask[i : i + micro],
        "position_ids": torch.arange(seq).expand(micro, seq).contiguous(),
        "advantages": torch.randn(micro, generator=gen),
    } for i in range(0, batch_size, micro)]
    attach_global_denominators(batches)

    def forward(model, batch):
        return model(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                     attention_mask=None)

    # Rollout log-probs: the policy itself, forward only (what the trainer recomputes).
    old: list[torch.Tensor] = []

    def record_step(data_iterator, model):
        batch = next(data_iterator)
        output = forward(model, batch)

        def loss_func(logits):
            logp, _ = vocab_parallel_logprobs(logits, batch["labels"], mask=batch["loss_mask"],
                                              vocab_size=vocab, chunk_size=5)
            old.append(logp.detach())
            return logp.sum() * 0, batch["loss_mask"].sum().to(torch.int), {}

        return output, loss_func

    with torch.no_grad():
        run_forward_backward(state.chunks, record_step, iter(batches), len(batches), micro, seq,
                             forward_only=True)
    for batch, logp in zip(batches, old):
        batch["old_logprobs"] = logp

    out: dict[str, Any] = {}
    grads: dict[str, list[torch.Tensor]] = {}
    for mode in ("logits", "fused"):
        cfg = LossConfig(logprob_mode=mode, logprob_chunk_size=5, log_entropy=True)
        for chunk in state.chunks:
            chunk.zero_grad_buffer()

        def rl_step(data_iterator, model, cfg=cfg, weight=None):
            batch = next(data_iterator)
            return forward(model, batch), make_loss_func(batch, cfg, output_weight=weight,
                                                         vocab_size=vocab)

        if mode == "fused":
            with output_layer_bypass(state.chunks[0]) as weight:
                metrics = run_forward_backward(
                    state.chunks, lambda it, m, w=weight: rl_step(it, m, weight=w),
                    iter(batches), len(batches), micro, seq)
        else:
            metrics = run_forward_backward(state.chunks, rl_step, iter(batches), len(batches),
                                           micro, seq)
        out[mode] = metrics
        grads[mode] = [p.main_grad.detach().clone() for p in state.chunks[0].parameters()]
    out["grad_diff"] = max(_max_diff(a, b) for a, b in zip(grads["logits"], grads["fused"]))
    out["grad_norm"] = sum(g.double().pow(2).sum() for g in grads["logits"]).sqrt().item()
    from megatron.core.utils import get_attr_wrapped_model

    gpt = get_attr_wrapped_model(state.chunks[0], "output_layer", return_model_obj=True)
    out["bypass_restored"] = "forward" not in vars(gpt.output_layer)
    return out
