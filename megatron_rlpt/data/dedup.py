"""Near-duplicate detection (stage 3): MinHash signatures of word shingles, LSH, keep-first.

Signatures are computed where the documents are (any worker); the LSH index lives in one
process and sees documents strictly in input order, so the document kept out of a group of near
duplicates is always the first one read, whatever the number of workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from megatron_rlpt.data.config import DedupConfig

_WORD = re.compile(r"[^\W_]+")


def shingles(text: str, size: int) -> set[bytes]:
    """The set of lower-cased word n-grams of `text` (one shingle for shorter texts)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def _shingle_hashes(text: str, size: int) -> list[int]:
    """32-bit hashes of the distinct word n-grams (stable across processes and runs)."""
    from megatron_rlpt.data.decontam import _wid

    ids = [_wid(w) for w in _WORD.findall(text.lower())]
    if len(ids) <= size:
        grams = {hash(tuple(ids))}
    else:
        grams = {hash(tuple(ids[i:i + size])) for i in range(len(ids) - size + 1)}
    return sorted(g & 0xFFFFFFFF for g in grams)


def _identity(x: int) -> int:
    return x


def signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """The MinHash hash values (uint64, `cfg.num_perm` of them) of `text`'s shingles."""
    from datasketch import MinHash

    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=_identity)
    m.update_batch(_shingle_hashes(text, cfg.shingle_size))
    return np.asarray(m.hashvalues, dtype=np.uint64)


def jaccard(a: str, b: str, size: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and reports)."""
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / (len(sa | sb) or 1)


@dataclass
class DupMatch:
    key: int
    """Sequence number (input order) of the kept document this one duplicates."""
    similarity: float
    """Estimated Jaccard similarity."""


class NearDupIndex:
    """Keep-first near-duplicate filter over documents offered in input order."""

    def __init__(self, cfg: DedupConfig) -> None:
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        # Bands tuned to miss few true pairs (false negatives weigh 0.95): every candidate is
        # verified against the threshold with the signatures, so false positives only cost time.
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm,
                              weights=(0.05, 0.95))
        self._scheme = MinHash(num_perm=cfg.num_perm, seed=cfg.seed).scheme
        self._kept: dict[int, np.ndarray] = {}

    def _lean(self, hashvalues: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.cfg.seed, hashvalues=hashvalues, scheme=self._scheme)

    def offer(self, key: int, hashvalues: np.ndarray) -> DupMatch | None:
        """Check a document against the kept ones; keep it (and return None) if it is new."""
        m = self._lean(hashvalues)
        best: DupMatch | None = None
        for other in sorted(self.lsh.query(m)):
            sim = float(np.mean(self._kept[other] == hashvalues))
            if sim >= self.cfg.threshold:
                best = DupMatch(other, sim)
                break  # the earliest kept document it duplicates
        if best is not None:
            return best
        self.lsh.insert(key, m, check_duplication=False)
        self._kept[key] = hashvalues
        return None

    def __len__(self) -> int:
        return len(self._kept)
