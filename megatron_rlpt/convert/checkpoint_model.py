"""What model a checkpoint holds: its architecture and the tokenizer saved with it.

Roots written by `rlpt convert hf-to-megatron` and `rlpt train` carry `model_config.json` and
`tokenizer/`; `run.init_from` builds the model from them, and export reads the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_rlpt.convert import hf_files
from megatron_rlpt.convert.hf_to_megatron import TOKENIZER_DIR
from megatron_rlpt.convert.model_config_file import MODEL_CONFIG_FILE, load_model_config
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
    config_file = ref.root / MODEL_CONFIG_FILE
    model = load_model_config(config_file) if config_file.is_file() else None
    tokenizer = ref.root / TOKENIZER_DIR
    return CheckpointModel(model=model,
                           tokenizer=tokenizer if hf_files.tokenizer_files(tokenizer) else None,
                           source=str(config_file))
