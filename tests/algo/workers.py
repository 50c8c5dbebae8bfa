"""Rank functions for the old-log-prob tests (run under torchrun by tests/multirank.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

NOISE_SEED = 7
ADVANTAGES = [1.0, -0.5, 0.8]


def _response(batches: list[dict[str, torch.Tensor]], key: str) -> list[list[float]]:
    """Per sequence, `key` at its response positions, in row order."""
    out = []
    for b in batches:
        for row, mask in zip(b[key], b["loss_mask"]):
            out.append(row[mask != 0].tolist())
    return out


def old_logprobs_suite(ckpt: str, tokenizer_dir: str, tp: int, pp: int, save: bool,
                       completions: list[list[Any]] | None = None,
                       tis_cap: float = 1.5) -> dict[str, Any]:
    """Recompute the old log-probs of rollouts at this layout, then take one forward/backward
    per `old_logprobs` mode with the engine's log-probs perturbed.

    With `save` (TP=1) the model is initialised, saved to `ckpt` and its in-process engine
    samples the rollouts (returned, so other layouts train on the same tokens).
    """
    from megatron.core import parallel_state as ps

    from megatron_rlpt.algo.loss import LossConfig, attach_global_denominators
    from megatron_rlpt.rollout.base import Completion, SamplingParams
    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint
    from megatron_rlpt.runtime.distributed import destroy_distributed
    from megatron_rlpt.runtime.step import run_forward_backward
    from megatron_rlpt.stages.rl import (
        RLStage,
        Rollout,
        make_forward_step,
        pack_micro_batches,
        recompute_old_logprobs,
        reduce_extremes,
    )
    from tests.rollout.workers import PROMPTS, _setup, _tokenizer, model_vocab, tiny_model

    tok = _tokenizer(tokenizer_dir)
    cfg = tiny_model(model_vocab(len(tok)))
    state = _setup(cfg, tp=tp, pp=pp)
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]
    if save:
        save_checkpoint(ckpt, 0, state.chunks)
        from megatron_rlpt.rollout.megatron_engine import MegatronEngine

        engine = MegatronEngine(state.chunks, tok, cfg)
        groups = engine.generate_ids(prompt_ids, len(ADVANTAGES),
                                     SamplingParams(max_tokens=8, temperature=1.0, seed=3))
        completions = [[{"token_ids": list(c.token_ids), "logprobs": list(c.logprobs)}
                        for c in g] for g in groups]
    else:
        load_checkpoint(ckpt, state.chunks)
    assert completions is not None
    kept = [(Rollout(p, "asr", 1.0, [Completion("", c["token_ids"], c["logprobs"], "length")
                                      for c in g]), torch.tensor(ADVANTAGES))
            for p, g in zip(prompt_ids, completions)]
    stage = SimpleNamespace(cfg=SimpleNamespace(loss=LossConfig()))
    rows = RLStage._sequences(stage, kept)
    batches = pack_micro_batches(rows, 2, pad_id=tok.eos_token_id)
    attach_global_denominators(batches, ps.get_data_parallel_group())
    seq = max(b["tokens"].shape[1] for b in batches)
    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    out: dict[str, Any] = {"completions": completions, "last_stage": last,
                           "engine_lp": _response(batches, "engine_logprobs")}

    recompute_old_logprobs(state.chunks, batches, cfg.vocab_size, LossConfig(), 2)
    out["recomputed"] = _response(batches, "old_logprobs") if last else None

    # The engine's log-probs perturbed by up to ±1 nat: a mismatch a clip would act on.
    gen = torch.Generator().manual_seed(NOISE_SEED)
    for b in batches:
        noise = (torch.rand(b["engine_logprobs"].shape, generator=gen) * 2 - 1) * b["loss_mask"]
        b["engine_logprobs"] = b["engine_logprobs"] + noise
    out["perturbed"] = _response(batches, "engine_logprobs")

    for mode in ("recompute", "engine"):
        loss_cfg = LossConfig(old_logprobs=mode, tis_cap=tis_cap, log_entropy=False)
        if mode == "engine":  # what the stage hands the loss in engine mode
            for b in batches:
                b["old_logprobs"] = b["engine_logprobs"].clone()
        for chunk in state.chunks:
            chunk.zero_grad_buffer()
        extremes: dict[str, float] = {}
        metrics = run_forward_backward(state.chunks, make_forward_step(cfg.vocab_size, loss_cfg,
                                                                       extremes),
                                       iter(batches), len(batches), 2, seq)
        metrics.update(reduce_extremes(extremes))
        out[mode] = metrics
    destroy_distributed()
    return out
