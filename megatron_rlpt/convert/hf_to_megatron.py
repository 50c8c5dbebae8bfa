"""Hugging Face directory -> Megatron dist-checkpoint.

Everything is checked before anything is written: the architecture, the TP/PP layout, every
tensor's name and shape (from the safetensors headers), the tokenizer. Then one process builds
the model at TP=PP=1, streams the Hugging Face tensors into it one at a time (each copied into
its part of the Megatron tensor, so at most one extra tensor is held) and saves a dist-checkpoint.
That layout is TP/PP-independent; `tp` only fixes the vocabulary padding (rows padded to a
multiple of `make_vocab_size_divisible_by × tp`, what `build_model` makes at that TP) and `tp`/`pp`
are checked for feasibility.

Output root:

    latest_checkpointed_iteration.txt, iter_0000000/     the dist-checkpoint (step 0)
    model_config.json                                    ModelConfig for `rlpt train` and export
    tokenizer/                                           the source's tokenizer files
    hf/config.json, hf/generation_config.json            the source's configs (export template)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_rlpt.convert import hf_config, hf_files, mapping
from megatron_rlpt.convert.model_config_file import save_model_config
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig

logger = logging.getLogger(__name__)

HF_TEMPLATE_DIR = "hf"
TOKENIZER_DIR = "tokenizer"


@dataclass
class ImportPlan:
    """What an import will do, worked out and checked before anything is written."""

    hf_dir: Path
    """The Hugging Face directory read."""
    cfg: ModelConfig
    """The model config written to the output (padding multiple as given)."""
    tensor_parallel: int
    """The TP size the checkpoint is padded for."""
    padded_vocab: int
    """Embedding rows in the checkpoint: `cfg.padded_vocab_size(tensor_parallel)`."""
    weights: hf_files.HFWeights
    """The weight files and their tensors' headers."""
    tokenizer: list[Path]
    """Tokenizer files, copied to `<out>/tokenizer/`."""
    templates: list[Path]
    """config.json and generation_config.json of the source, kept for export."""


def plan_import(hf_dir: str | os.PathLike, tp: int = 1, pp: int = 1,
                params_dtype: str | None = None, make_vocab_size_divisible_by: int = 128,
                ) -> ImportPlan:
    """Check a Hugging Face directory against a target layout; UsageError on the first problem."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise UsageError(f"Hugging Face directory not found: {hf_dir}")
    if params_dtype not in (None, "fp32", "bf16"):
        raise UsageError(f"dtype must be fp32 or bf16, got {params_dtype!r}")
    if make_vocab_size_divisible_by < 1:
        raise UsageError("make_vocab_size_divisible_by must be >= 1")
    hf = hf_files.read_json(hf_dir / "config.json", "config.json")
    cfg = hf_config.model_config_from_hf(hf, params_dtype)
    cfg.make_vocab_size_divisible_by = make_vocab_size_divisible_by
    hf_config.check_layout(cfg, tp, pp)
    weights = hf_files.scan_weights(hf_dir)
    expected = mapping.expected_hf_shapes(cfg)
    found = {n: s for n, s in weights.shapes.items() if not hf_files.is_ignored(n)}
    if cfg.tie_embeddings:
        found.pop("lm_head.weight", None)  # some tied checkpoints still store the shared copy
    for name, shape in expected.items():
        if name not in found:
            raise UsageError(f"{hf_dir} lacks tensor {name}")
        if tuple(found[name]) != shape:
            raise UsageError(f"tensor {name} has shape {tuple(found[name])}, config.json implies {shape}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise UsageError(f"unexpected tensor {extra[0]} (+{len(extra) - 1} more) for {cfg.architecture}"
                         f" with {cfg.num_layers} layers")
    tokenizer = hf_files.tokenizer_files(hf_dir)
    if not tokenizer:
        raise UsageError(f"no tokenizer in {hf_dir} (need one of {', '.join(hf_files.TOKENIZER_CORE)})")
    templates = [hf_dir / n for n in ("config.json", "generation_config.json") if (hf_dir / n).is_file()]
    return ImportPlan(hf_dir=hf_dir, cfg=cfg, tensor_parallel=tp,
                      padded_vocab=cfg.padded_vocab_size(tp), weights=weights,
                      tokenizer=tokenizer, templates=templates)


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"output {out_dir} is not empty (pass --overwrite to replace it)")


def load_hf_weights(plan: ImportPlan, params: dict[str, torch.Tensor]) -> None:
    """Stream the Hugging Face tensors, file by file and tensor by tensor, into `params`."""
    from safetensors import safe_open

    by_hf = {r.hf: r for r in mapping.rules(plan.cfg)}
    for path in plan.weights.files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                rule = by_hf.get(name)
                if rule is None:  # ignored buffers and a tied model's stored lm_head
                    continue
                mapping.place(plan.cfg, rule, params[rule.megatron], f.get_tensor(name))


def hf_to_megatron(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, tp: int = 1,
                   pp: int = 1, params_dtype: str | None = None,
                   make_vocab_size_divisible_by: int = 128, overwrite: bool = False) -> Path:
    """Convert a Hugging Face model directory into a Megatron checkpoint root; returns it."""
    from megatron_rlpt.convert.dist_io import single_process
    from megatron_rlpt.convert.live import _unwrap
    from megatron_rlpt.runtime.checkpoint import save_checkpoint
    from megatron_rlpt.runtime.model import build_model
    from megatron_rlpt.utils.io import atomic_directory

    out_dir = Path(out_dir)
    plan = plan_import(hf_dir, tp, pp, params_dtype, make_vocab_size_divisible_by)
    _check_output(out_dir, overwrite)
    # Built at TP=1 with the rows the target TP pads to, so the checkpoint loads at that TP.
    build_cfg = dataclasses.replace(
        plan.cfg, make_vocab_size_divisible_by=make_vocab_size_divisible_by * tp,
        transformer_impl="local", fp8=None)
    with single_process():
        built = build_model(build_cfg)
        assert built.padded_vocab_size == plan.padded_vocab
        gpt = _unwrap(built.chunks[0])
        params = {mapping.canonical_name(n): p for n, p in gpt.named_parameters()}
        missing = set(mapping.rules_by_megatron(plan.cfg)) - set(params)
        if missing or len(params) != len(mapping.rules_by_megatron(plan.cfg)):
            raise RuntimeError(f"model parameters and mapping disagree: {sorted(missing)[:3]}")
        with torch.no_grad():
            for p in params.values():
                p.zero_()  # vocabulary padding rows stay zero
        load_hf_weights(plan, params)
        with atomic_directory(out_dir) as tmp:
            save_checkpoint(tmp, 0, built.chunks, trainer_state={
                "converted_from": str(plan.hf_dir.resolve()),
                "padded_vocab_size": plan.padded_vocab,
                "tensor_parallel": tp,
            })
            save_model_config(tmp, plan.cfg)
            hf_files.copy_files(plan.tokenizer, tmp / TOKENIZER_DIR)
            hf_files.copy_files(plan.templates, tmp / HF_TEMPLATE_DIR)
    logger.info("wrote %s (%s, %d layers, vocab %d padded to %d)", out_dir, plan.cfg.architecture,
                plan.cfg.num_layers, plan.cfg.vocab_size, plan.padded_vocab)
    return out_dir
