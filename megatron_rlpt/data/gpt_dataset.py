"""Pretraining data through Megatron-Core's own GPT datasets, as Megatron-LM reads it.

    train, valid = build_gpt_datasets(cfg, tokenizer, train_samples, valid_samples)
    train[i]   # {"tokens", "labels", "loss_mask", "position_ids"}, sample i of the seeded order

`data.path` is Megatron-LM's blend: one IndexedDataset prefix, a list of prefixes (weighted by
their sizes) or `[w1, prefix1, w2, prefix2, ...]`. A JSONL/text file or an `rlpt prepare`
directory is tokenized once into an IndexedDataset in the cache directory and then read the same
way. `GPTDataset` memory-maps the `.bin` and keeps only its index arrays (saved as `.npy` in the
cache directory and memory-mapped back), so a rank's memory does not grow with the corpus.
Caches are built on rank 0 while the other ranks wait, and reused by later runs.

Sample i of the training split is a pure function of (seed, seq_length, blend, number of
samples), so resuming at `consumed samples` reads exactly what an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from megatron_rlpt.errors import UsageError

Blend = tuple[list[str], list[float] | None]


def _quiet_import() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def parse_blend(value: str | list[Any], key: str = "data.path") -> Blend:
    """Megatron-LM's blend syntax: a path, `[path, ...]` or `[w1, path1, w2, path2, ...]`."""
    if isinstance(value, str):
        if not value:
            raise UsageError(f"{key} is empty")
        return [value], None
    items = list(value)
    if not items:
        raise UsageError(f"{key} is an empty list")
    if all(isinstance(v, str) for v in items):
        return items, None
    if len(items) % 2:
        raise UsageError(f"{key}: a weighted blend alternates weight and path "
                         f"([w1, path1, w2, path2, ...]); got {len(items)} items")
    weights, paths = items[0::2], items[1::2]
    for w, p in zip(weights, paths):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise UsageError(f"{key}: weight {w!r} (before {p!r}) is not a number >= 0")
        if not isinstance(p, str) or not p:
            raise UsageError(f"{key}: {p!r} (after weight {w}) is not a path")
    if sum(weights) <= 0:
        raise UsageError(f"{key}: the weights sum to 0")
    return [str(p) for p in paths], [float(w) for w in weights]


class TokenizerInfo:
    """What GPTDataset needs of a tokenizer: the end-of-document id. `pad` is -1, an id that
    never occurs, so no real token is masked as padding (an HF tokenizer's pad is often EOS)."""

    def __init__(self, tokenizer: Any) -> None:
        self.eod = int(tokenizer.eos_token_id)
        self.pad = -1
        self.vocab_size = len(tokenizer)
        # Part of the cache key of every index GPTDataset saves.
        self.unique_identifiers = {"class": "TokenizerInfo", "eod": self.eod,
                                   "vocab_size": self.vocab_size}


def _rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _iter_texts(path: Path) -> Any:
    """Documents of a JSONL file (`text` field), a plain text file (one document) or an
    `rlpt prepare` directory (its kept documents), one at a time."""
    if path.is_dir():
        from megatron_rlpt.data.dataset import TripleDataset

        ds = TripleDataset(path)
        for doc in range(len(ds.documents)):
            yield ds.document_text(doc)
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield str(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise UsageError(f"{path}:{n}: expected a JSON object with 'text'") from err
    else:
        yield path.read_text(encoding="utf-8")


def _source_key(path: Path, tokenizer: Any) -> str:
    """Identifies a text source and the tokenizer: changes when either does."""
    files = [path / "manifest.json", path / "text.bin"] if path.is_dir() else [path]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    tok = [getattr(tokenizer, "name_or_path", ""), len(tokenizer), tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps([stats, tok]).encode()).hexdigest()[:16]


def _tokenize_to_indexed(path: Path, tokenizer: Any, prefix: str) -> None:
    """Write `path`'s documents, each followed by end-of-text, as an IndexedDataset; streamed,
    and renamed into place only when complete."""
    idx_mod = _quiet_import()
    tmp = f"{prefix}.tmp{os.getpid()}"
    builder = idx_mod.IndexedDatasetBuilder(tmp + ".bin",
                                            dtype=idx_mod.DType.optimal_dtype(len(tokenizer)))
    eos = tokenizer.eos_token_id
    documents = 0
    for text in _iter_texts(path):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        builder.add_document(np.asarray(ids), [len(ids)])
        documents += 1
    builder.finalize(tmp + ".idx")
    if documents == 0:
        raise UsageError(f"pretrain data {path} holds no documents")
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")


def resolve_prefix(path: str, tokenizer: Any, cache_dir: Path) -> str:
    """An IndexedDataset prefix for `path`: the prefix itself, or the cached tokenization of a
    JSONL/text file or an `rlpt prepare` directory (built on rank 0; all ranks call this)."""
    idx_mod = _quiet_import()
    if idx_mod.IndexedDataset.exists(path):
        return path
    p = Path(path)
    if p.is_dir() and not (p / "manifest.json").is_file():
        raise UsageError(f"pretrain data {path} is a directory but not an rlpt prepare output "
                         "(no manifest.json)")
    if not p.exists():
        raise UsageError(f"pretrain data {path} is neither an IndexedDataset prefix "
                         f"({path}.bin/.idx), a JSONL/text file nor an rlpt prepare directory")
    prefix = str(cache_dir / f"text_{p.name}_{_source_key(p, tokenizer)}")
    if _rank() == 0 and not idx_mod.IndexedDataset.exists(prefix):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _tokenize_to_indexed(p, tokenizer, prefix)
    _barrier()
    return prefix


def cache_dir_of(cfg: Any) -> Path:
    """`data.cache_dir`, else `<run.output_dir>/data_cache`."""
    return Path(cfg.data.cache_dir or Path(cfg.run.output_dir) / "data_cache")


def _resolve_blend(value: Any, key: str, tokenizer: Any, cache: Path) -> Blend:
    paths, weights = parse_blend(value, key)
    return [resolve_prefix(p, tokenizer, cache) for p in paths], weights


def build_gpt_datasets(cfg: Any, tokenizer: Any, train_samples: int,
                       valid_samples: int) -> tuple[Any, Any]:
    """The training and validation datasets (validation None when there is none).

    Validation comes from `data.valid_path` (its own blend) or from `data.split`'s second part
    of `data.path`; `valid_samples` 0 builds none.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    d = cfg.data
    cache = cache_dir_of(cfg)
    train_blend = _resolve_blend(d.path, "data.path", tokenizer, cache)
    kwargs: dict[str, Any] = {}
    if d.valid_path:
        valid_blend = _resolve_blend(d.valid_path, "data.valid_path", tokenizer, cache)
        kwargs["blend_per_split"] = [train_blend, valid_blend if valid_samples else None, None]
    else:
        kwargs.update(blend=train_blend, split=d.split or "1,0,0")
    config = GPTDatasetConfig(
        random_seed=cfg.run.seed, sequence_length=d.seq_length, path_to_cache=str(cache),
        tokenizer=TokenizerInfo(tokenizer), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False, create_attention_mask=False, mmap_bin_files=True, **kwargs)
    has_valid = bool(d.valid_path) or (d.split is not None and config.split_matrix[1] is not None)
    sizes = [train_samples, valid_samples if has_valid else 0, 0]
    if _rank() == 0:
        cache.mkdir(parents=True, exist_ok=True)
    # Megatron logs every index it builds at INFO; keep the run's output to our own lines.
    logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True,
                                                            config).build()
        except AssertionError as err:  # Megatron states its preconditions as asserts
            raise UsageError(f"cannot build the pretrain datasets from data.path="
                             f"{d.path!r}: {err}") from err
    if train is None or len(train) < train_samples:
        raise UsageError(f"data.path={d.path!r} yields {0 if train is None else len(train)} "
                         f"training sequences of {d.seq_length + 1} tokens, fewer than the "
                         f"{train_samples} the run needs")
    if has_valid and valid_samples and (valid is None or len(valid) == 0):
        raise UsageError(f"the validation data holds no sequence of {d.seq_length + 1} tokens")
    return train, (valid if has_valid and valid_samples else None)


def blend_source_counts(dataset: Any, n: int) -> list[int]:
    """How many of the first `n` samples of a blended dataset come from each of its parts."""
    index = np.asarray(dataset.dataset_index[:n])
    return np.bincount(index, minlength=len(dataset.datasets)).tolist()
