"""Near-dedup: the derived statistics textbook is caught, distinct books are never confused."""

from __future__ import annotations

import itertools
import json

from megatron_rlpt.data.config import DedupConfig, FilterConfig
from megatron_rlpt.data.dedup import NearDupIndex, shingles, signature
from megatron_rlpt.data.filters import normalize


def _load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _run_dedup(docs, cfg=None):
    """Exactly the pipeline's stage: normalise, sign, offer in input order."""
    cfg = cfg or DedupConfig()
    index = NearDupIndex(cfg)
    dropped = {}
    for i, d in enumerate(docs):
        match = index.offer(i, signature(normalize(d["text"], FilterConfig()), cfg))
        if match is not None:
            dropped[i] = match.key
    return dropped


def test_statistics_near_duplicates_are_removed(shared_data):
    docs = _load(shared_data / "corpus/openstax_statistics_neardup.jsonl")
    dropped = _run_dedup(docs)
    sh = [shingles(normalize(d["text"], FilterConfig()), 5) for d in docs]
    pairs = [(i, j) for i, j in itertools.combinations(range(len(docs)), 2)
             if len(sh[i] & sh[j]) / len(sh[i] | sh[j]) >= 0.9]
    assert len(pairs) >= 5
    removed = [p for p in pairs if p[0] in dropped or p[1] in dropped]
    assert len(removed) / len(pairs) >= 0.9, (pairs, dropped)
    # keep-first: the earlier document of a pair survives
    for i, _j in pairs:
        assert i not in dropped
    # every drop points to a kept, earlier document
    assert all(k < i and k not in dropped for i, k in dropped.items())


def test_distinct_books_are_not_duplicates_of_each_other(shared_data):
    docs = []
    for name in ("openstax_university_physics", "openstax_calculus", "openstax_chemistry_2e"):
        docs += _load(shared_data / f"corpus/{name}.jsonl")
    subject = [d["book_slug"].split("-")[0] for d in docs]  # university / calculus / chemistry
    dropped = _run_dedup(docs)
    cross = [(docs[i]["id"], docs[k]["id"]) for i, k in dropped.items()
             if subject[i] != subject[k]]
    assert cross == []
