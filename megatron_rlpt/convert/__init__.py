"""Megatron dist-checkpoints ⇄ Hugging Face (Llama 3.x, Qwen2.5, Qwen3), and the weight push.

- `mapping`: the one set of name/shape rules between Hugging Face tensors and Megatron's full
  tensors (import, export and the rollout weight push all use it).
- `hf_config`: Hugging Face `config.json` ⇄ `ModelConfig`.
- `hf_to_megatron` / `megatron_to_hf`: checkpoint conversion (streaming, checked up front).
- `live.hf_named_tensors`: Hugging Face tensors from a live model on any TP/PP rank.
- `model_config_file`: the `model_config.json` a checkpoint root carries.

Megatron itself is imported only when a converter runs.
"""

from __future__ import annotations

# The package names the functions, not their same-named modules: import those as
# `megatron_rlpt.convert.hf_to_megatron` etc. with `from ... import`.
from megatron_rlpt.convert.hf_to_megatron import hf_to_megatron
from megatron_rlpt.convert.live import hf_named_tensors
from megatron_rlpt.convert.megatron_to_hf import megatron_to_hf
from megatron_rlpt.convert.model_config_file import (
    MODEL_CONFIG_FILE,
    load_model_config,
    save_model_config,
)

__all__ = [
    "MODEL_CONFIG_FILE", "hf_named_tensors", "hf_to_megatron", "load_model_config",
    "megatron_to_hf", "save_model_config",
]
