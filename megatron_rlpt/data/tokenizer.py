"""The tokenizer shipped with the package, and loading any Hugging Face tokenizer directory.

`megatron_rlpt/assets/tokenizer/` is a byte-level BPE (8192 tokens) trained on STEM prose by
`tools/train_tokenizer.py`: `<|endoftext|>` (id 0) is eos and pad, `<|im_start|>`/`<|im_end|>`
frame ChatML turns and its `chat_template` uses them. Byte-level BPE decodes every encoding back
to its exact text, which the triple dataset relies on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError


def default_tokenizer_path() -> Path:
    """The directory of the tokenizer shipped in the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "tokenizer"


def load_tokenizer(path: str | os.PathLike | None = None) -> Any:
    """`transformers.AutoTokenizer` from a local directory (default: the shipped tokenizer).

    Never reaches a hub: a path that is not a tokenizer directory is a UsageError.
    """
    path = Path(path) if path is not None else default_tokenizer_path()
    if not path.is_dir():
        raise UsageError(f"tokenizer {path} is not a directory")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loading failure is a bad argument
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load tokenizer from {path}: {first}") from err


def tokenizer_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What the manifest records about a tokenizer: its path, the sha256 of its files, size."""
    import hashlib

    path = Path(path)
    files = {}
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        files[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"path": str(path), "files_sha256": files}
