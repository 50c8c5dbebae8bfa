"""Code run outside pytest's process for the SmolLM2 tests: the conversion job (a plain process,
through the CLI) and the multi-rank worker (under torchrun via tests/multirank.py).

One launch per layout: TP=3 (SmolLM2's 9 heads / 3 KV heads allow TP 1 or 3, not 2) runs the
logits and the in-process engine's greedy generation; PP=2 runs the logits and the vLLM engine
(a sidecar fed with the weights gathered across the pipeline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

MAX_NEW_TOKENS = 10


def _completions(groups: list[list[Any]]) -> list[dict[str, Any]]:
    return [{"ids": list(g[0].token_ids), "text": g[0].text} for g in groups]


def forward_and_generate(root: str, tokens: list[list[int]], prompts: list[list[int]], tp: int,
                         pp: int, engine: str, vllm_python: str = "") -> dict[str, Any]:
    """Load the converted root at TP×PP; logits of `tokens` (last stage, else None) and greedy
    completions of `prompts` by `engine` (`megatron` or `vllm`)."""
    from transformers import AutoTokenizer

    from megatron_rlpt.convert import load_model_config
    from megatron_rlpt.rollout.base import SamplingParams
    from megatron_rlpt.runtime.checkpoint import load_checkpoint
    from megatron_rlpt.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        init_distributed,
    )
    from megatron_rlpt.runtime.model import build_model
    from tests.convert.workers import megatron_logits

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_distributed(parallel)
    cfg = load_model_config(root)
    built = build_model(cfg, parallel)
    load_checkpoint(root, built.chunks, restore_rng=False)
    for chunk in built.chunks:
        chunk.eval()
    out: dict[str, Any] = {"logits": megatron_logits(built.chunks, torch.tensor(tokens),
                                                     cfg.vocab_size)}
    tokenizer = AutoTokenizer.from_pretrained(str(Path(root) / "tokenizer"))
    greedy = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0)
    if engine == "megatron":
        from megatron_rlpt.rollout.megatron_engine import MegatronEngine

        gen = MegatronEngine(built.chunks, tokenizer, cfg, max_batch_size=len(prompts))
        out["greedy"] = _completions(gen.generate_ids(prompts, 1, greedy))
    else:
        from megatron_rlpt.rollout.vllm_engine import VLLMConfig, VLLMEngine

        gen = VLLMEngine(built.chunks, tokenizer, cfg, VLLMConfig(python=vllm_python))
        try:
            out["greedy"] = _completions(gen.generate_ids(prompts, 1, greedy))
        finally:
            gen.close()
    destroy_distributed()
    return out


def convert(hf: Path, base: Path) -> None:
    """HF -> Megatron (laid out for TP 3 and PP 2: one dist-checkpoint serves both) -> HF."""
    from megatron_rlpt.cli import main

    ckpt, back = base / "megatron", base / "exported"
    assert main(["convert", "hf-to-megatron", "--hf", str(hf), "--out", str(ckpt),
                 "--tp", "3", "--pp", "2"]) == 0
    assert main(["convert", "megatron-to-hf", "--ckpt", str(ckpt), "--out", str(back)]) == 0


if __name__ == "__main__":  # python -m tests.real.workers HF_DIR BASE
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps({"ok": True}))
