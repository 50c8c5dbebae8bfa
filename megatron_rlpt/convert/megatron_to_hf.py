"""Megatron dist-checkpoint -> Hugging Face directory.

Checked before anything is written: the checkpoint is complete, `model_config.json` describes a
supported architecture, every tensor the model needs is in the checkpoint with the shape the
config implies, a tokenizer is at hand and a template (if given) is the same model. Then the
tensors are read straight from the dist-checkpoint one layer at a time (no model is built),
mapped to Hugging Face names, trimmed of vocabulary padding and written into safetensors shards of
at most `max_shard_size`; memory holds one shard plus one layer. The output directory appears
complete or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.convert import hf_config, hf_files
from megatron_rlpt.convert.hf_to_megatron import HF_TEMPLATE_DIR, TOKENIZER_DIR
from megatron_rlpt.convert.model_config_file import load_model_config
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ExportPlan:
    """What an export will do, worked out before anything is written."""

    ckpt_dir: Path
    """The `iter_NNNNNNN` directory read."""
    cfg: ModelConfig
    """The model config of the checkpoint root."""
    config: dict[str, Any]
    """config.json to write."""
    generation: dict[str, Any]
    """generation_config.json to write."""
    tokenizer: list[Path]
    """Tokenizer files to copy."""
    dtype: torch.dtype | None
    """Dtype of the written weights; None keeps the checkpoint's."""
    source: str = "model_config.json"
    """Where the model config was read (for messages)."""


def _template(root: Path, hf_template: Path | None, name: str) -> dict[str, Any] | None:
    for directory in ([hf_template] if hf_template else []) + [root / HF_TEMPLATE_DIR]:
        if (directory / name).is_file():
            return hf_files.read_json(directory / name, name)
    return None


def _check_template(cfg: ModelConfig, template: dict[str, Any]) -> None:
    """A template config must describe the same model as the checkpoint."""
    other = hf_config.model_config_from_hf(template, params_dtype=cfg.params_dtype)
    for field in ("architecture", "num_layers", "hidden_size", "ffn_hidden_size",
                  "num_attention_heads", "num_query_groups", "vocab_size", "tie_embeddings"):
        mine, theirs = getattr(cfg, field), getattr(other, field)
        if field == "num_query_groups":
            mine, theirs = mine or cfg.num_attention_heads, theirs or other.num_attention_heads
        if mine != theirs:
            raise UsageError(f"template config.json has {field}={theirs}, the checkpoint {mine}")


def plan_export(ckpt: str | os.PathLike, hf_template: str | os.PathLike | None = None,
                dtype: str | None = None) -> ExportPlan:
    """Check the export's inputs (not the tensors); UsageError on the first problem."""
    from megatron_rlpt.convert.checkpoint_model import checkpoint_model
    from megatron_rlpt.runtime.checkpoint import resolve_checkpoint

    ref = resolve_checkpoint(ckpt)
    root, ckpt_dir = ref.root, ref.iter_dir
    template_dir = Path(hf_template) if hf_template else None
    if template_dir is not None and not template_dir.is_dir():
        raise UsageError(f"--hf-template directory not found: {template_dir}")
    if ref.megatron_lm:
        found = checkpoint_model(ref, tokenizer_hint=hf_template)
        cfg = found.model
        ckpt_tokenizer = found.tokenizer
    else:
        cfg = load_model_config(root)
        ckpt_tokenizer = root / TOKENIZER_DIR
    if dtype not in (None, *_TORCH_DTYPES):
        raise UsageError(f"dtype must be one of {', '.join(_TORCH_DTYPES)}, got {dtype!r}")
    template = _template(root, template_dir, "config.json")
    if template is not None:
        _check_template(cfg, template)
    tokenizer: list[Path] = []
    # Megatron-LM's own Hugging Face tokenizer (its vocabulary sized the model config) comes
    # before the template; our roots' saved tokenizer after it.
    directories = ([template_dir] if template_dir else []) + \
        ([ckpt_tokenizer] if ckpt_tokenizer else [])
    if ref.megatron_lm:
        directories.reverse()
    for directory in directories:
        tokenizer = hf_files.tokenizer_files(directory)
        if tokenizer:
            break
    if not tokenizer:
        raise UsageError(f"no tokenizer files in {root / TOKENIZER_DIR}; pass --hf-template DIR "
                         "(a Hugging Face directory with the model's tokenizer)")
    export_cfg = dataclasses.replace(cfg, fp8=None, transformer_impl="local")
    config = hf_config.hf_config_from_model(export_cfg, template, dtype)
    token_ids = hf_files.special_token_ids(tokenizer[0].parent)
    for key, value in token_ids.items():
        config.setdefault(key, value)
    generation = hf_files.generation_config(
        _template(root, template_dir, "generation_config.json"), config, token_ids)
    return ExportPlan(ckpt_dir=ckpt_dir, cfg=export_cfg, config=config, generation=generation,
                      tokenizer=tokenizer, dtype=_TORCH_DTYPES[dtype] if dtype else None,
                      source="the saved Megatron-LM arguments" if ref.megatron_lm
                      else "model_config.json")


def megatron_to_hf(src_ckpt_dir: str | os.PathLike, dst_dir: str | os.PathLike,
                   hf_template: str | os.PathLike | None = None, dtype: str | None = None,
                   max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    """Export a Megatron checkpoint (root or iter dir) as a Hugging Face directory; returns it.

    `dtype` (`float32`/`bfloat16`/`float16`) defaults to the model's `params_dtype`.
    """
    from megatron_rlpt.convert.dist_io import (
        check_checkpoint,
        checkpoint_hf_tensors,
        local_process_group,
    )
    from megatron_rlpt.utils.io import atomic_directory, atomic_write_json

    dst_dir = Path(dst_dir)
    max_bytes = hf_files.parse_size(max_shard_size)
    plan = plan_export(src_ckpt_dir, hf_template, dtype)
    if dst_dir.exists() and (not dst_dir.is_dir() or any(dst_dir.iterdir())) and not overwrite:
        raise UsageError(f"output {dst_dir} exists and is not empty (pass --overwrite to replace it)")
    written_dtype = plan.dtype or plan.cfg.torch_dtype
    plan.config["torch_dtype"] = plan.config["dtype"] = str(written_dtype).replace("torch.", "")
    padded, dtypes = check_checkpoint(plan.ckpt_dir, plan.cfg, plan.source)
    with local_process_group():  # reads need a process group, not Megatron's parallel state
        with atomic_directory(dst_dir) as tmp:
            writer = hf_files.ShardedSafetensorsWriter(tmp, max_bytes)
            for name, tensor in checkpoint_hf_tensors(plan.ckpt_dir, plan.cfg, padded, dtypes):
                writer.add(name, tensor.to(written_dtype))
            shards = writer.close()
            atomic_write_json(tmp / "config.json", plan.config)
            atomic_write_json(tmp / "generation_config.json", plan.generation)
            hf_files.copy_files(plan.tokenizer, tmp)
    logger.info("wrote %s: %d shards, %.1f MB, from %s", dst_dir, len(shards),
                writer.total_bytes / 1e6, plan.ckpt_dir)
    return dst_dir
