"""`model_config.json`: the ModelConfig that travels with a Megatron checkpoint root.

Written by `rlpt convert hf-to-megatron` and by `rlpt train` into the checkpoint root; read back
by export (and by anything that rebuilds the model from a checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig
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
