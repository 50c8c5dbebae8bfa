"""Rank functions for tests/scale/test_plan.py: real Megatron models, counted and measured.

Run under `tests.multirank.run_multirank` (torchrun, gloo on CPU), so that Megatron's parallel
state lives in its own processes and not in the test process.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_rlpt.config import ParallelConfig


def _init(tp: int, pp: int) -> None:
    from megatron_rlpt.runtime.distributed import init_distributed

    init_distributed(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))


def param_counts(configs: list[str], tp: int = 1, pp: int = 1) -> dict[str, int]:
    """Parameters this rank holds of each config's `GPTModel`, built on the meta device (no
    memory: an 8B model is only shapes)."""
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.runtime.model import build_model
    from megatron_rlpt.utils.config import load_config

    _init(tp, pp)
    out = {}
    for path in configs:
        cfg = load_config(TrainConfig, path, [])
        parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
        with torch.device("meta"):
            built = build_model(cfg.model, parallel)
        # parameters() yields a tied embedding once; the last stage's own copy under PP counts.
        out[path] = sum(p.numel() for chunk in built.chunks for p in chunk.parameters())
    return out


def activation_bytes(models: list[dict[str, Any]], tp: int = 1, seq_length: int = 64,
                     micro_batch: int = 2) -> list[dict[str, int]]:
    """Tensor bytes alive at the end of a training-mode forward pass of each model (inputs and
    parameters excluded), at 2 and at 4 layers: the difference over 2 is what one layer keeps
    for the backward pass. Also the peak over forward and backward."""
    from megatron_rlpt.algo.memory import LiveBytes
    from megatron_rlpt.runtime.model import ModelConfig, build_model

    _init(tp, 1)
    torch.manual_seed(0)
    parallel = ParallelConfig(tensor_parallel=tp)
    results = []
    for fields in models:
        row = {}
        for layers in (2, 4):
            model = build_model(ModelConfig(**{**fields, "num_layers": layers}), parallel).chunks[0]
            model.train()
            ids = torch.randint(0, fields["vocab_size"], (micro_batch, seq_length))
            pos = torch.arange(seq_length).expand(micro_batch, seq_length)

            def forward(model=model, ids=ids, pos=pos) -> torch.Tensor:
                return model(input_ids=ids, position_ids=pos, attention_mask=None)

            forward().float().sum().backward()  # first use allocates Megatron's global buffers
            model.zero_grad(set_to_none=True)
            with LiveBytes() as live:
                out = forward()
                row[f"forward_{layers}"] = live.current
                out.float().sum().backward()
                row[f"peak_{layers}"] = live.peak
            del out
        results.append(row)
    return results
