"""Hugging Face model directories: safetensors weights (read lazily, written in shards), config,
generation config and tokenizer files."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.utils.io import atomic_write_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
# Any one of these is a usable tokenizer; the others only configure it.
TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Tensors a Hugging Face checkpoint may carry that are not weights.
_IGNORED_RE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; UsageError naming `what` if missing or malformed."""
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path} is not a JSON object")
    return data


@dataclass
class HFWeights:
    """The safetensors files of a Hugging Face directory and their tensors' headers."""

    files: list[Path]
    """Weight files, in index order."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor name -> shape, read from the file headers (no tensor data)."""
    dtypes: dict[str, str] = field(default_factory=dict)
    """Tensor name -> safetensors dtype string (`F32`, `BF16`, ...)."""


def is_ignored(name: str) -> bool:
    """Whether a checkpoint tensor is a buffer rather than a weight (old rotary caches)."""
    return bool(_IGNORED_RE.search(name))


def scan_weights(hf_dir: Path) -> HFWeights:
    """Find the safetensors files of `hf_dir` and read their headers; UsageError if unusable."""
    from safetensors import safe_open

    index = hf_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UsageError(f"{index} has no weight_map")
        files = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
    elif (hf_dir / SINGLE_FILE).is_file():
        weight_map, files = None, [hf_dir / SINGLE_FILE]
    else:
        other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pt"))
        hint = f" (found {', '.join(other[:3])}; only safetensors is read)" if other else ""
        raise UsageError(f"no {SINGLE_FILE} or {INDEX_FILE} in {hf_dir}{hint}")
    weights = HFWeights(files=files)
    for path in files:
        if not path.is_file():
            raise UsageError(f"weight file listed in the index is missing: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name in weights.shapes:
                        raise UsageError(f"tensor {name} appears in two weight files")
                    sl = f.get_slice(name)
                    weights.shapes[name] = tuple(sl.get_shape())
                    weights.dtypes[name] = sl.get_dtype()
        except UsageError:
            raise
        except Exception as err:  # a truncated or foreign file
            raise UsageError(f"cannot read {path}: {err}") from None
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in weights.shapes:
                raise UsageError(f"index lists {name} in {file}, but the file lacks it")
    return weights


def parse_size(text: str | int) -> int:
    """`5GB` -> 5·10⁹ bytes, `2GiB` -> 2·2³⁰, `500MB`, `100KB`, or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"bad size {text!r}; use e.g. 5GB, 500MB or a byte count")
    number, unit, binary = match.groups()
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    size = int(float(number) * ((1024 if binary else 1000) ** power))
    if size <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return size


class ShardedSafetensorsWriter:
    """Writes tensors into `model-0000i-of-0000N.safetensors` files of at most `max_bytes`
    each (a larger tensor gets a file of its own) plus `model.safetensors.index.json`.

    Holds at most one shard in memory. Shards get their final names in `close()`, when N is known;
    the caller writes into a temporary directory that is renamed once everything is there.
    """

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir = out_dir
        self.max_bytes = max_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out_dir / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> list[Path]:
        """Flush, give the shards their final names, write the index; returns the shard paths."""
        if self._buffer:
            self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        final = []
        for i, (tmp, names) in enumerate(self._shards):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, self.out_dir / name)
            final.append(self.out_dir / name)
            weight_map.update(dict.fromkeys(names, name))
        atomic_write_json(self.out_dir / INDEX_FILE,
                          {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})
        return final


def tokenizer_files(directory: Path) -> list[Path]:
    """Tokenizer files present in `directory` (empty if it has no usable tokenizer)."""
    if not any((directory / name).is_file() for name in TOKENIZER_CORE):
        return []
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def copy_files(files: list[Path], dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, dst / path.name)


def special_token_ids(tokenizer_dir: Path) -> dict[str, int]:
    """bos/eos/pad token ids named by tokenizer_config.json, looked up in tokenizer.json."""
    config_path, tok_path = tokenizer_dir / "tokenizer_config.json", tokenizer_dir / "tokenizer.json"
    if not (config_path.is_file() and tok_path.is_file()):
        return {}
    from tokenizers import Tokenizer

    config = read_json(config_path, "tokenizer config")
    tokenizer = Tokenizer.from_file(str(tok_path))
    out = {}
    for kind in ("bos", "eos", "pad"):
        token = config.get(f"{kind}_token")
        if isinstance(token, dict):
            token = token.get("content")
        token_id = tokenizer.token_to_id(token) if isinstance(token, str) else None
        if token_id is not None:
            out[f"{kind}_token_id"] = token_id
    return out


def generation_config(template: dict[str, Any] | None, config: dict[str, Any],
                      token_ids: dict[str, int]) -> dict[str, Any]:
    """generation_config.json: the template's, else the token ids of the model config/tokenizer."""
    if template:
        return template
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key, token_ids.get(key))
        if value is not None:
            out[key] = value
    return out
