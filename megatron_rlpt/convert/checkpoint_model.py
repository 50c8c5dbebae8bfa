"""What model a checkpoint holds: its architecture and the tokenizer saved with it.

Roots written by `rlpt convert hf-to-megatron` and `rlpt train` carry `model_config.json` and
`tokenizer/`; Megatron-LM's checkpoints carry the training arguments (`convert.megatron_lm`).
`run.init_from` builds the model from what is found here, and export reads the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_rlpt.convert import hf_files
from megatron_rlpt.convert.hf_to_megatron import TOKENIZER_DIR
from megatron_rlpt.convert.model_config_file import MODEL_CONFIG_FILE, load_model_config
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.checkpoint import CheckpointRef
from megatron_rlpt.runtime.model import ModelConfig


@dataclass(frozen=True)
class CheckpointModel:
    """The model a checkpoint describes."""

    model: ModelConfig | None
    """Its architecture; None when the checkpoint records none."""
    tokenizer: Path | None
    """A Hugging Face tokenizer directory saved with it; None when there is none."""
    source: str
    """Where the architecture was read, for messages."""


def checkpoint_model(ref: CheckpointRef, tokenizer_hint: str | None = None) -> CheckpointModel:
    """The architecture and tokenizer saved with the checkpoint `ref`.

    `tokenizer_hint` is a tokenizer the user named (data.tokenizer, --hf-template); it is used
    only where the checkpoint carries none.
    """
    if ref.megatron_lm:
        return _megatron_lm_model(ref, tokenizer_hint)
    config_file = ref.root / MODEL_CONFIG_FILE
    model = load_model_config(config_file) if config_file.is_file() else None
    tokenizer = ref.root / TOKENIZER_DIR
    return CheckpointModel(model=model,
                           tokenizer=tokenizer if hf_files.tokenizer_files(tokenizer) else None,
                           source=str(config_file))


def _megatron_lm_model(ref: CheckpointRef, tokenizer_hint: str | None) -> CheckpointModel:
    """Architecture from Megatron-LM's saved arguments; tokenizer from args.tokenizer_model when
    that is a Hugging Face directory here, else the one the user named, else an error."""
    from megatron_rlpt.convert import megatron_lm
    from megatron_rlpt.data.tokenizer import load_tokenizer

    args = megatron_lm.checkpoint_args(ref.iter_dir)
    source = f"{ref.iter_dir / megatron_lm.COMMON_FILE} (Megatron-LM arguments)"
    own = megatron_lm.tokenizer_dir(args)
    tokenizer = own or (Path(tokenizer_hint) if tokenizer_hint else None)
    if tokenizer is None:
        raise UsageError(
            f"{ref.iter_dir} is a Megatron-LM checkpoint whose tokenizer "
            f"(tokenizer_type={getattr(args, 'tokenizer_type', None)!r}, tokenizer_model="
            f"{getattr(args, 'tokenizer_model', None)!r}) is not a Hugging Face directory on "
            "this machine; name the model's Hugging Face tokenizer with --hf-template (export) "
            "or data.tokenizer (rlpt train)")
    vocab = len(load_tokenizer(tokenizer))
    model = megatron_lm.model_config_from_args(args, vocab, source)
    return CheckpointModel(model=model, tokenizer=own, source=source)
