"""Helpers shared by the data-pipeline tests."""

from __future__ import annotations

from megatron_rlpt.data.config import PrepareConfig

GIGANTIC = 300_000  # bytes; small_config() sets read.max_document_bytes below it


def small_config() -> PrepareConfig:
    """Settings that keep test outputs small: short contexts, a few triples per document."""
    cfg = PrepareConfig()
    cfg.triples.max_context_tokens = 96
    cfg.triples.max_triples_per_document = 6
    cfg.read.max_document_bytes = 200_000
    return cfg
