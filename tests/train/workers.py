"""Rank functions for the trainer tests (run under torchrun by tests/multirank.py)."""

from __future__ import annotations

from typing import Any

import torch

from megatron_rlpt.runtime.distributed import ParallelConfig, destroy_distributed, init_distributed
from megatron_rlpt.runtime.optim import OptimConfig
from tests.runtime.workers import VOCAB, tiny_model


def _rl_rows(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Eight sequences of varied lengths with rollout log-probs and advantages."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for j in range(8):
        n_prompt, n_resp = 5 + j % 3, 6 + (j * 5) % 7
        ids = torch.randint(0, VOCAB, (n_prompt + n_resp,), generator=gen)
        n = len(ids) - 1
        mask = torch.zeros(n)
        mask[n_prompt - 1 :] = 1
        rows.append({
            "tokens": ids[:-1], "labels": ids[1:], "loss_mask": mask,
            # Rollout log-probs a little off the policy's, so the ratio and clipping matter.
            "old_logprobs": (torch.log(torch.tensor(1.0 / VOCAB)) + 0.3 * torch.randn(n, generator=gen)) * mask,
            "advantages": torch.full((n,), 1.0 if j % 2 else -0.7),
            "sample_weight": torch.tensor(1.0),
        })
    return rows


def rl_train_step(ckpt: str, tp: int, pp: int) -> dict[str, Any]:
    """One policy-gradient step on the fixed batch at this layout, from the reference weights."""
    from megatron.core import parallel_state as ps

    from megatron_rlpt.algo.loss import LossConfig, attach_global_denominators
    from megatron_rlpt.runtime.checkpoint import load_checkpoint
    from megatron_rlpt.runtime.step import setup_training, train_step
    from megatron_rlpt.stages.rl import make_forward_step, pack_micro_batches

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_distributed(parallel, seed=5)
    state = setup_training(tiny_model("qwen3"), parallel, OptimConfig(lr=1e-3), total_steps=4)
    load_checkpoint(ckpt, state.chunks)
    first, count = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    rows = _rl_rows()[first::count]
    batches = pack_micro_batches(rows, 2, pad_id=0)
    attach_global_denominators(batches, ps.get_data_parallel_group())
    seq = max(b["tokens"].shape[1] for b in batches)
    metrics = train_step(state, make_forward_step(VOCAB, LossConfig()), iter(batches),
                         len(batches), 2, seq)
    destroy_distributed()
    return metrics


def checkpoint_weights_diff(config: str, ckpt_a: str, ckpt_b: str) -> float:
    """Largest absolute difference between the weights of two checkpoints of one model."""
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.runtime.checkpoint import load_checkpoint
    from megatron_rlpt.runtime.model import build_model
    from megatron_rlpt.utils.config import load_config

    cfg = load_config(TrainConfig, config)
    init_distributed(cfg.parallel, seed=0)
    weights = []
    for ckpt in (ckpt_a, ckpt_b):
        model = build_model(cfg.model, cfg.parallel).chunks
        load_checkpoint(ckpt, model, restore_rng=False)
        weights.append({k: v.clone() for k, v in model[0].state_dict().items()
                        if not k.endswith("_extra_state")})
    destroy_distributed()
    return max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0])


def megatron_logits(config: str, ckpt: str, tokens: list[list[int]]) -> torch.Tensor:
    """Logits of the model in `ckpt` (built from the run's config) on `tokens`, TP=1."""
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.runtime.checkpoint import load_checkpoint
    from megatron_rlpt.runtime.model import build_model
    from megatron_rlpt.utils.config import load_config

    cfg = load_config(TrainConfig, config)
    init_distributed(cfg.parallel, seed=0)
    chunks = build_model(cfg.model, cfg.parallel).chunks
    load_checkpoint(ckpt, chunks, restore_rng=False)
    ids = torch.tensor(tokens)
    with torch.no_grad():
        logits = chunks[0](input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids),
                           attention_mask=None)
    destroy_distributed()
    return logits[..., : cfg.model.vocab_size].float()
