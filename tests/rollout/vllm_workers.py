"""Run by tests/multirank.py on every rank for the vLLM rollout engine test."""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

import psutil
import torch

from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.runtime.distributed import destroy_distributed
from tests.rollout.workers import (
    PROMPTS,
    _inner,
    _setup,
    _tokenizer,
    _train_one_step,
    reference_logprobs,
    tiny_model,
)


def _max_error(model: Any, prompts: list[list[int]], groups: list[list[Any]],
               vocab: int) -> float:
    """Largest |engine log-prob − Megatron recomputation| over every sampled token."""
    worst = 0.0
    for prompt, group in zip(prompts, groups):
        for c in group:
            ref = reference_logprobs(model, prompt, list(c.token_ids), vocab)
            worst = max(worst, (ref - torch.tensor(c.logprobs)).abs().max().item())
    return worst


def vllm_suite(tokenizer_dir: str, tp: int, python: str) -> dict[str, Any]:
    """Sample from vLLM, train one step, push, sample again; compare with Megatron each time."""
    from megatron_rlpt.rollout.vllm_engine import VLLMConfig, VLLMEngine

    tokenizer = _tokenizer(tokenizer_dir)
    # vLLM's CPU attention kernels need a head size of at least 32.
    cfg = dataclasses.replace(tiny_model(len(tokenizer)), hidden_size=128, ffn_hidden_size=192)
    state = _setup(cfg, tp)
    model = _inner(state.chunks)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    sampling = SamplingParams(max_tokens=12, temperature=1.0, seed=11)

    t0 = time.perf_counter()
    engine = VLLMEngine(state, tokenizer, cfg, VLLMConfig(python=python))
    startup_s = time.perf_counter() - t0
    # Slurm sends the trainer's stop signal to every process of the job step: the sidecar and
    # vLLM's own processes must survive it (the trainer closes them after its final save).
    sidecar = psutil.Process(engine.sidecar.proc.pid)
    signalled = [sidecar, *sidecar.children(recursive=True)]
    for proc in signalled:
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            proc.send_signal(sig)
    time.sleep(1.0)
    survived = all(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                   for proc in signalled)
    before = engine.generate_ids(prompts, 3, sampling)
    error_before = _max_error(model, prompts, before, cfg.vocab_size)

    old = {k: v.detach().clone() for k, v in model.state_dict().items() if "extra_state" not in k}
    _train_one_step(state, cfg.vocab_size)
    moved = max((old[k] - v).abs().max().item() for k, v in model.state_dict().items()
                if k in old)
    t0 = time.perf_counter()
    engine.push()
    push_s = time.perf_counter() - t0
    after = engine.generate_ids(prompts, 3, sampling)
    error_after = _max_error(model, prompts, after, cfg.vocab_size)
    # The same samples under the weights before the step: the push must have changed them.
    model.load_state_dict(old, strict=False)
    stale = _max_error(model, prompts, after, cfg.vocab_size)
    engine.close()
    destroy_distributed()
    return {"error_before": error_before, "error_after": error_after, "stale": stale,
            "moved": moved, "startup_s": startup_s, "push_s": push_s,
            "signalled": len(signalled), "survived_stop_signals": survived,
            "lengths": [len(c.token_ids) for g in after for c in g],
            "finish": [c.finish_reason for g in after for c in g],
            "texts_match": all(c.text == tokenizer.decode(c.token_ids) for g in after for c in g)}
