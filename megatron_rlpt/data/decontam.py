"""Benchmark decontamination (stage 5): word n-gram overlap with evaluation sets.

Words are runs of letters and digits, case-folded, so whitespace, case and punctuation changes
do not hide an overlap. Every string field of every benchmark record is indexed: its word
n-grams (default 13) when it is long enough, or the whole text when it is shorter than n words
but still distinctive (at least `short_min_words` words and `short_min_chars` letters/digits),
so that short problems ("Simplify $\\sqrt{242}$.") are caught too; such short texts match
only where a line or sentence of the document starts with them.

n-grams are stored as 64-bit hashes in a sorted array: a word maps to a stable id (blake2b), an
n-gram to a polynomial hash of its ids computed with numpy over the whole document at once;
both are the same in every process and every run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megatron_rlpt.data.config import DecontamConfig
from megatron_rlpt.errors import UsageError

_WORD = re.compile(r"[^\W_]+")
_word_ids_cache: dict[str, int] = {}


def _wid(word: str) -> int:
    i = _word_ids_cache.get(word)
    if i is None:
        if len(_word_ids_cache) > 2_000_000:
            _word_ids_cache.clear()
        i = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        _word_ids_cache[word] = i
    return i


_MATHY = re.compile(r"[0-9$\\^=+<>]")
_MULT = np.uint64(0x100000001B3)


def window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit polynomial hashes of every window of `n` consecutive word ids (wrapping)."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h = h * _MULT + ids[j:j + m]
    return h


def _ids(ws: list[str]) -> np.ndarray:
    return np.fromiter(map(_wid, ws), dtype=np.uint64, count=len(ws))


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _word_ids(text: str) -> np.ndarray:
    """Stable ids of the words of `text`, in order."""
    lowered = list(map(str.casefold, _WORD.findall(text)))
    vals = list(map(_word_ids_cache.get, lowered))
    if None in vals:
        vals = [v if v is not None else _wid(w) for v, w in zip(vals, lowered)]
    return np.array(vals, dtype=np.uint64)


def benchmark_texts(path: Path) -> Iterator[str]:
    """Every string field of every record of a benchmark file (JSONL, JSON, CSV, Parquet)."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    try:
                        yield from _strings(json.loads(line))
                    except json.JSONDecodeError:
                        yield line
    elif name.endswith(".json"):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from _strings(json.load(f))
    elif name.endswith((".csv", ".tsv")):
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.reader(f, delimiter="\t" if name.endswith(".tsv") else ","):
                yield from row
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(str(path)).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield from _strings(row)
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def benchmark_files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in
                              {".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"}))
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"--decontaminate {p}: no such file or directory")
    return out


@dataclass
class ContaminationIndex:
    """The n-grams (and short whole texts) of a set of benchmarks."""

    ngram: int = 13
    grams: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    """Sorted, unique n-gram hashes."""
    short: set[int] = field(default_factory=set)
    short_lengths: set[int] = field(default_factory=set)
    texts: int = 0
    files: list[str] = field(default_factory=list)
    _pending: list[np.ndarray] = field(default_factory=list, repr=False)
    _pending_words: int = 0

    @classmethod
    def build(cls, paths: Iterable[str | Path], cfg: DecontamConfig) -> ContaminationIndex:
        index = cls(ngram=cfg.ngram)
        for path in benchmark_files(paths):
            index.files.append(str(path))
            try:
                for text in benchmark_texts(path):
                    index.add(text, cfg)
            except (OSError, ValueError, csv.Error) as err:
                raise UsageError(f"cannot read benchmark file {path}: {err}") from err
        index.freeze()
        return index

    def add(self, text: str, cfg: DecontamConfig) -> None:
        ws = words(text)
        if len(ws) >= self.ngram:
            self._pending.append(_ids(ws))
            self._pending_words += len(ws)
            self.texts += 1
            if self._pending_words > 2_000_000:
                self.freeze()
        elif (len(ws) >= cfg.short_min_words and sum(map(len, ws)) >= cfg.short_min_chars
              and (not cfg.short_requires_math or _MATHY.search(text))):
            self.short.add(int(window_hashes(_ids(ws), len(ws))[0]))
            self.short_lengths.add(len(ws))
            self.texts += 1

    def freeze(self) -> None:
        """Hash the texts added since the last call into the sorted n-gram array."""
        if not self._pending:
            return
        n = self.ngram
        lengths = np.array([len(a) for a in self._pending])
        ids = np.concatenate(self._pending)
        h = window_hashes(ids, n)
        owner = np.repeat(np.arange(len(lengths)), lengths)
        h = h[owner[: len(h)] == owner[n - 1:]]  # windows inside one text only
        merged = np.sort(np.concatenate([self.grams, h]), kind="stable")
        keep = np.ones(len(merged), dtype=bool)
        keep[1:] = merged[1:] != merged[:-1]
        self.grams = merged[keep]
        self._pending = []
        self._pending_words = 0

    def __len__(self) -> int:
        return len(self.grams) + len(self.short)

    @property
    def _short_array(self) -> np.ndarray:
        if getattr(self, "_short_cache", None) is None or len(self._short_cache) != len(self.short):
            self._short_cache = np.array(sorted(self.short), dtype=np.uint64)
        return self._short_cache

    def find(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` that overlap the benchmarks, merged and sorted."""
        self.freeze()
        if not len(self.grams) and not self.short:
            return []
        ids = _word_ids(text)
        n = self.ngram
        hits: list[tuple[int, int]] = []  # word index ranges
        if len(self.grams) and len(ids) >= n:
            h = window_hashes(ids, n)
            pos = np.searchsorted(self.grams, h)
            pos[pos == len(self.grams)] = 0
            for i in np.flatnonzero(self.grams[pos] == h):
                hits.append((int(i), int(i) + n))
        spans: list[tuple[int, int]] | None = None
        if self.short:
            # A short benchmark text counts only where a line or sentence of the document
            # starts with it: "Simplify $\\sqrt{242}$." planted on its own, not a few words
            # inside a sentence.
            starts = _unit_word_starts(text)
            short = self._short_array
            if len(starts) and len(ids):
                last = len(ids) - 1
                h = np.zeros(len(starts), dtype=np.uint64)
                for j in range(max(self.short_lengths)):
                    h = h * _MULT + ids[np.minimum(starts + j, last)]
                    length = j + 1
                    if length not in self.short_lengths:
                        continue
                    pos = np.searchsorted(short, h)
                    pos[pos == len(short)] = 0
                    found = (short[pos] == h) & (starts + length <= len(ids))
                    for k in np.flatnonzero(found):
                        hits.append((int(starts[k]), int(starts[k]) + length))
        if not hits:
            return []
        hits.sort()
        merged: list[list[int]] = []
        for a, b in hits:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        if spans is None:
            spans = [m.span() for m in _WORD.finditer(text)]
        return [(spans[a][0], spans[b - 1][1]) for a, b in merged]


_UNIT_BREAK = re.compile(r"(?<=[.!?:])\s+|\n\s*")


def _unit_word_starts(text: str) -> np.ndarray:
    """Word indices at which a line or a sentence (after . ! ? or :) of `text` starts."""
    out = [0]
    count = 0
    pos = 0
    for m in _UNIT_BREAK.finditer(text):
        count += len(_WORD.findall(text, pos, m.end()))
        pos = m.end()
        if out[-1] != count:
            out.append(count)
    return np.array(out, dtype=np.int64)


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` without `spans`, each widened over adjacent punctuation (not whitespace)."""
    out, pos = [], 0
    for start, end in spans:
        while start > pos and not text[start - 1].isspace() and not text[start - 1].isalnum():
            start -= 1
        while end < len(text) and not text[end].isspace() and not text[end].isalnum():
            end += 1
        out.append(text[pos:start])
        pos = max(pos, end)
    out.append(text[pos:])
    joined = "".join(out)
    # Collapse the whitespace left where spans were cut.
    joined = re.sub(r"[ \t]{2,}", " ", joined)
    joined = re.sub(r"\n{3,}", "\n\n", joined)
    return joined.strip()


def describe(index: ContaminationIndex) -> dict:
    return {"files": index.files, "texts": index.texts, "ngrams": len(index.grams),
            "short_texts": len(index.short), "ngram": index.ngram}

