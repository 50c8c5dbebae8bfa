"""`model_config.json`: the ModelConfig that travels with a Megatron checkpoint root.

Written by `rlpt convert hf-to-megatron` and by `rlpt train` into the checkpoint root; read back
by export (and by anything that rebuilds the model from a checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import FUSIONS, ModelConfig
from megatron_rlpt.utils.io import atomic_write_json

MODEL_CONFIG_FILE = "model_config.json"


def save_model_config(root: str | os.PathLike, cfg: ModelConfig) -> Path:
    """Write `cfg` to `<root>/model_config.json` atomically; returns the path."""
    path = Path(root) / MODEL_CONFIG_FILE
    atomic_write_json(path, cfg.to_dict())
    return path


def load_model_config(root: str | os.PathLike) -> ModelConfig:
    """Read `<root>/model_config.json` (or the file itself); UsageError if missing or invalid."""
    path = Path(root)
    if path.is_dir():
        path = path / MODEL_CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"{path} not found (a Megatron checkpoint root carries its model config)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - names) if isinstance(data, dict) else ["<not an object>"]
    if unknown:
        raise UsageError(f"{path}: unknown ModelConfig field {unknown[0]!r}")
    cfg = ModelConfig(**data)
    # FP8 / Transformer Engine are how a model runs, not what it is: export needs neither.
    dataclasses.replace(cfg, fp8=None, transformer_impl="local").validate()
    return cfg


RUNTIME_FIELDS = frozenset({
    "params_dtype", "fp8", "transformer_impl", "recompute_granularity", "hidden_dropout",
    "attention_dropout", "init_method_std", "max_position_embeddings", *FUSIONS,
})
"""ModelConfig fields that say how a model runs, not what its weights mean: a training config may
set them over a checkpoint's model config. Every other field is the checkpoint's to decide."""


def _canonical(cfg: ModelConfig, name: str) -> Any:
    """A field's value with the implicit defaults spelled out, for comparison."""
    value = getattr(cfg, name)
    if name == "num_query_groups":
        return value or cfg.num_attention_heads
    if name == "kv_channels":
        return value or cfg.hidden_size // cfg.num_attention_heads
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, int) and not isinstance(value, bool) and name in ("rotary_base",
                                                                            "norm_epsilon"):
        return float(value)
    return value


def merge_model_config(saved: ModelConfig, given: ModelConfig, fields: Iterable[str],
                       source: str) -> ModelConfig:
    """The checkpoint's model config `saved`, with the runtime fields among `fields` (those the
    user set) taken from `given`. An architectural field set to another value than the
    checkpoint's is a UsageError naming both values and `source`."""
    updates = {}
    for name in sorted(fields):
        if name in RUNTIME_FIELDS:
            updates[name] = getattr(given, name)
        elif _canonical(given, name) != _canonical(saved, name):
            raise UsageError(
                f"model.{name} is {getattr(given, name)!r} in the config but "
                f"{getattr(saved, name)!r} in {source}; the architecture comes from the "
                f"checkpoint (drop model.{name}, or set it to the checkpoint's value)")
    return dataclasses.replace(saved, **updates)
