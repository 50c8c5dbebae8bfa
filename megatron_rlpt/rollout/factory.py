"""Build the configured rollout engine and keep its weights in step with the trainer."""

from __future__ import annotations

from typing import Any

from megatron_rlpt.errors import UsageError


def build_rollout_engine(cfg: Any, state: Any, tokenizer: Any) -> Any:
    """The engine named by `cfg.rollout.engine` for this rank."""
    kind = cfg.rollout.engine
    if kind == "megatron":
        from megatron_rlpt.rollout.megatron_engine import MegatronEngine

        return MegatronEngine(state.chunks, tokenizer, cfg.model)
    if kind == "vllm":
        from megatron_rlpt.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(state, tokenizer, cfg.model, cfg.rollout.vllm)
    if kind == "sglang":
        from megatron_rlpt.rollout.sglang_engine import SGLangEngine

        return SGLangEngine(state, tokenizer, cfg.model, cfg.rollout.sglang)
    raise UsageError(f"rollout.engine={kind!r} is not available in this version; use megatron")


def push_weights(engine: Any, state: Any, cfg: Any) -> None:
    """Hand the trainer's new weights to the engine after an optimizer step.

    Every rank calls this (the gathers inside are collectives). The in-process Megatron engine
    samples from the training weights themselves, so it has nothing to receive.
    """
    if cfg.rollout.engine == "megatron":
        return
    if cfg.rollout.engine in ("vllm", "sglang"):
        engine.push()
        return
    raise UsageError(f"rollout.engine={cfg.rollout.engine!r} has no weight push")
