"""Triples (stage 7): (s_<i, s_i, s_i+1) for i = 2..n-1 of a segmented document.

Tokens come from tokenizing each segment once alone and once with the whitespace before it, so a
context of many segments costs no re-tokenization; concatenated pieces decode back to exactly
the document text they cover (for byte-level tokenizers; other tokenizers are checked and
counted). The context is left-truncated to a token budget by dropping whole leading segments;
a single segment longer than the budget is cut on a token boundary whose tokens decode to a
suffix of the segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megatron_rlpt.data.config import TripleConfig


class TokenCodec:
    """Encode/decode without special tokens, through the Rust backend when there is one."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.vocab_size = len(tokenizer)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.backend is not None:
            return self.backend.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        if self.backend is not None:
            return self.backend.decode_batch(batch, skip_special_tokens=False)
        return [self.decode(ids) for ids in batch]


@dataclass
class Triple:
    target: int
    """Index of the target segment s_i within the document (0-based)."""
    context_start: int
    """Character offset in the document where the (truncated) context begins; the context ends
    where segment `target - 1` ends."""
    context_ids: np.ndarray
    target_ids: np.ndarray
    next_ids: np.ndarray


@dataclass
class TripleStats:
    triples: int = 0
    segment_too_long: int = 0
    context_truncated: int = 0
    context_cut_in_segment: int = 0
    inexact_roundtrip: int = 0
    tokens: int = 0
    subsampled_out: int = 0
    extra: dict = field(default_factory=dict)


def _suffix_cut(codec: TokenCodec, ids: list[int], text: str, budget: int) -> tuple[int, int]:
    """(k, char offset): the last k <= budget tokens of `ids` decode to `text[offset:]`."""
    k = min(budget, len(ids))
    while k > 0:
        piece = codec.decode(ids[len(ids) - k:])
        if piece and text.endswith(piece):
            return k, len(text) - len(piece)
        k -= 1
    return 0, len(text)


def pick_targets(n_segments: int, limit: int) -> list[int]:
    """Target indices 1..n-2 (0-based), or `limit` of them spread evenly (deterministic)."""
    targets = list(range(1, n_segments - 1))
    if limit and len(targets) > limit:
        if limit == 1:
            return [targets[len(targets) // 2]]
        step = (len(targets) - 1) / (limit - 1)
        return sorted({targets[round(j * step)] for j in range(limit)})
    return targets


def build_triples(text: str, spans: list[tuple[int, int]], codec: TokenCodec,
                  cfg: TripleConfig, check_roundtrip: bool = True
                  ) -> tuple[list[Triple], TripleStats]:
    stats = TripleStats()
    n = len(spans)
    if n < 3:
        return [], stats
    seg_texts = [text[s:e] for s, e in spans]
    joined_texts = [""] + [text[spans[j - 1][1]:spans[j][1]] for j in range(1, n)]
    encoded = codec.encode_batch(seg_texts + joined_texts[1:])
    seg_ids, joined_ids = encoded[:n], [[]] + encoded[n:]
    if check_roundtrip:
        decoded = codec.decode_batch(seg_ids + joined_ids[1:])
        stats.inexact_roundtrip = sum(
            d != t for d, t in zip(decoded, seg_texts + joined_texts[1:]))
    seg_arr = [np.asarray(x, dtype=np.int64) for x in seg_ids]
    joined_arr = [np.asarray(x, dtype=np.int64) for x in joined_ids]
    prefix = np.zeros(n + 1, dtype=np.int64)  # prefix[j] = sum of joined lengths 1..j
    for j in range(1, n):
        prefix[j] = prefix[j - 1] + len(joined_ids[j])
    budget = cfg.max_context_tokens
    targets = pick_targets(n, cfg.max_triples_per_document)
    stats.subsampled_out = (n - 2) - len(targets)
    out: list[Triple] = []
    a = 0
    for t in targets:
        if len(seg_ids[t]) > cfg.max_segment_tokens or len(seg_ids[t + 1]) > cfg.max_segment_tokens:
            stats.segment_too_long += 1
            continue
        a = max(a, 0)

        def ctx_len(a_: int, t_: int = t) -> int:
            return len(seg_ids[a_]) + int(prefix[t_ - 1] - prefix[a_])

        while a < t - 1 and ctx_len(a) > budget:
            a += 1
        # the smallest feasible start may have moved left of a (lengths are near-monotone)
        while a > 0 and ctx_len(a - 1) <= budget:
            a -= 1
        if ctx_len(a) <= budget:
            ctx = np.concatenate([seg_arr[a]] + joined_arr[a + 1:t])
            start = spans[a][0]
            if a > 0:
                stats.context_truncated += 1
        else:  # a == t - 1 and that one segment alone is over budget
            ids = seg_ids[t - 1]
            k, offset = _suffix_cut(codec, ids, seg_texts[t - 1], budget)
            if k == 0:
                stats.segment_too_long += 1
                continue
            ctx = np.asarray(ids[len(ids) - k:], dtype=np.int64)
            start = spans[t - 1][0] + offset
            stats.context_truncated += 1
            stats.context_cut_in_segment += 1
        tri = Triple(t, start, ctx, seg_arr[t], seg_arr[t + 1])
        stats.tokens += len(ctx) + len(tri.target_ids) + len(tri.next_ids)
        out.append(tri)
    stats.triples = len(out)
    return out, stats
