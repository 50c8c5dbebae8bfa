"""`TripleDataset`: random access to the triples `rlpt prepare` wrote, as ids and exact text.

    ds = TripleDataset("data/prepared")          # the output directory of rlpt prepare
    t = ds[i]                                    # TripleItem
    t.context_ids, t.target_ids, t.next_ids      # numpy int arrays (Megatron IndexedDataset)
    t.context, t.target, t.next                  # exact source text
    ds.reference(i, k=3)                         # s_i and the k segments after it, exact text

Token ids come from Megatron-Core's own `IndexedDataset` (memory-mapped); texts from `text.bin`
(memory-mapped) through the offsets in `segments.i64` / `triples.i64`, so neither is loaded
whole. The trainer samples triples by index; `ds.sample_indices(n, seed, epoch)` gives a
deterministic permutation for that.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_rlpt.data.writer import DOC_COLS, PREFIX, SEG_COLS, TRIPLE_COLS
from megatron_rlpt.errors import UsageError


@dataclass
class TripleItem:
    index: int
    document: int
    target_segment: int
    """Index of s_i among its document's segments."""
    context_ids: np.ndarray
    target_ids: np.ndarray
    next_ids: np.ndarray
    context: str
    target: str
    next: str


def _i64(path: Path, cols: int) -> np.ndarray:
    size = path.stat().st_size
    if size == 0:
        return np.zeros((0, cols), dtype="<i8")
    return np.memmap(path, dtype="<i8", mode="r").reshape(-1, cols)


class TripleDataset:
    """The triples of one `rlpt prepare` output directory."""

    def __init__(self, path: str | Path, mmap: bool = True) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise UsageError(f"{self.path} is not an rlpt prepare output (no manifest.json)")
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefix = str(self.path / PREFIX)
        self.indexed = IndexedDataset(self.prefix, mmap=mmap)
        self.documents = _i64(self.path / "documents.i64", DOC_COLS)
        self.segments = _i64(self.path / "segments.i64", SEG_COLS)
        self.triples = _i64(self.path / "triples.i64", TRIPLE_COLS)
        text_path = self.path / "text.bin"
        self._text = (np.memmap(text_path, dtype=np.uint8, mode="r")
                      if text_path.stat().st_size else np.zeros(0, dtype=np.uint8))
        if len(self.triples) * 3 != len(self.indexed):
            raise UsageError(f"{self.path}: triples.i64 and {PREFIX}.idx disagree")
        self.default_k = int(self.manifest.get("config", {}).get("triples", {})
                             .get("reference_segments", 3))

    def __len__(self) -> int:
        return len(self.triples)

    def _bytes(self, start: int, end: int) -> str:
        return bytes(self._text[start:end]).decode("utf-8")

    def ids(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(context, target, next) token ids of triple `index`."""
        base = 3 * index
        return (self.indexed[base], self.indexed[base + 1], self.indexed[base + 2])

    def texts(self, index: int) -> tuple[str, str, str]:
        """(context, target, next) exact texts of triple `index`."""
        _doc, seg, ctx_start = (int(v) for v in self.triples[index])
        prev_end = int(self.segments[seg - 1][1])
        t0, t1 = (int(v) for v in self.segments[seg])
        n0, n1 = (int(v) for v in self.segments[seg + 1])
        return self._bytes(ctx_start, prev_end), self._bytes(t0, t1), self._bytes(n0, n1)

    def context_pieces(self, index: int) -> list[str]:
        """The context of triple `index` cut at segment starts: the pieces join to exactly
        `texts(index)[0]`, and every piece but the first begins a segment (the first may begin
        inside one, where prepare cut a single over-long segment). Dropping leading pieces
        left-truncates the context by whole sentences."""
        doc, seg, ctx_start = (int(v) for v in self.triples[index])
        end = int(self.segments[seg - 1][1])
        starts = np.asarray(self.segments[int(self.documents[doc][2]):seg, 0])
        cuts = [ctx_start] + [int(v) for v in starts[starts > ctx_start]]
        return [self._bytes(a, b) for a, b in zip(cuts, cuts[1:] + [end])]

    def reference(self, index: int, k: int | None = None) -> str:
        """s_i and the next `k` segments (fewer at the end of the document), exact text with the
        document's own spacing between them."""
        k = self.default_k if k is None else k
        if k < 0:
            raise ValueError("k must be >= 0")
        doc, seg, _ = (int(v) for v in self.triples[index])
        first, count = int(self.documents[doc][2]), int(self.documents[doc][3])
        last = min(seg + k, first + count - 1)
        return self._bytes(int(self.segments[seg][0]), int(self.segments[last][1]))

    def document_text(self, doc: int) -> str:
        start, end = int(self.documents[doc][0]), int(self.documents[doc][1])
        return self._bytes(start, end)

    def __getitem__(self, index: int) -> TripleItem:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        doc, seg, _ = (int(v) for v in self.triples[index])
        ctx_ids, tgt_ids, nxt_ids = self.ids(index)
        ctx, tgt, nxt = self.texts(index)
        return TripleItem(index, doc, seg - int(self.documents[doc][2]), ctx_ids, tgt_ids,
                          nxt_ids, ctx, tgt, nxt)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def sample_indices(self, n: int, seed: int = 0, epoch: int = 0) -> np.ndarray:
        """`n` triple indices from a permutation fixed by (seed, epoch); wraps into further
        epochs when `n` exceeds the dataset."""
        if len(self) == 0:
            raise UsageError(f"{self.path} holds no triples")
        out = []
        while sum(map(len, out)) < n:
            rng = np.random.default_rng([seed, epoch])
            out.append(rng.permutation(len(self)))
            epoch += 1
        return np.concatenate(out)[:n]


class WeightedTriples:
    """Several `rlpt prepare` directories sampled by weight (`[w1, dirA, w2, dirB, ...]`).

    Positions come in blocks of `BLOCK`; each block gives every directory its share of slots
    (largest remainder of weight x BLOCK) in an order shuffled from (seed, block), so the mix
    is exact to 1/BLOCK per block and a position's source is found without replaying the ones
    before it. Each directory is walked in its own seeded permutation, epoch after epoch.
    """

    BLOCK = 4096

    def __init__(self, datasets: list[TripleDataset], weights: list[float], seed: int) -> None:
        if len(datasets) != len(weights) or not datasets:
            raise UsageError("a weighted data.path needs one weight per directory")
        for ds in datasets:
            if len(ds) == 0:
                raise UsageError(f"{ds.path} holds no triples")
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise UsageError("data.path weights must be >= 0 and not all 0")
        self.datasets, self.seed = datasets, seed
        exact = np.asarray(weights, dtype=np.float64) / total * self.BLOCK
        slots = np.floor(exact).astype(np.int64)
        for k in np.argsort(-(exact - slots), kind="stable")[: self.BLOCK - int(slots.sum())]:
            slots[k] += 1
        self.slots = slots
        self._pattern = np.repeat(np.arange(len(datasets)), slots)
        self._cache: dict[tuple[str, int, int], np.ndarray] = {}

    def _cached(self, key: tuple[str, int, int], make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            if len(self._cache) > 2 * len(self.datasets) + 2:
                self._cache.clear()
            self._cache[key] = make()
        return self._cache[key]

    def locate(self, position: int) -> tuple[TripleDataset, int]:
        """The directory and triple index at `position` of the endless data order."""
        block, i = divmod(position, self.BLOCK)
        order = self._cached(("block", block, 0), lambda: np.random.default_rng(
            [self.seed, 1, block]).permutation(self._pattern))
        k = int(order[i])
        nth = block * int(self.slots[k]) + int(np.count_nonzero(order[:i] == k))
        ds = self.datasets[k]
        epoch, j = divmod(nth, len(ds))
        perm = self._cached(("source", k, epoch), lambda: np.random.default_rng(
            [self.seed, 2, k, epoch]).permutation(len(ds)))
        return ds, int(perm[j])
