"""The on-disk triple dataset (stage 8) and its layout.

An output directory holds:

- `triples.bin` / `triples.idx` — a Megatron-Core `IndexedDataset` (prefix `triples`): one
  document per triple, three sequences `[context, target, next]` of token ids.
- `text.bin` — the UTF-8 text of every kept document, back to back (after normalisation, PII
  masking and decontamination: the text the triples were cut from).
- `documents.i64` — per document: byte start and end in `text.bin`, first segment, segment count.
- `segments.i64` — per segment: byte start and end in `text.bin`.
- `triples.i64` — per triple: document, target segment (global index), context byte start.
- `documents.jsonl` — per document: source file, record number, id.
- `manifest.json`, and `quarantine.jsonl` (dropped documents and their reasons) when enabled.

`*.i64` files are raw little-endian int64 arrays (row-major, the row widths above), read with
`numpy.memmap`. The context of triple t is `text[ctx_start : end of segment target-1]`, the
target and next are segments `target` and `target+1`, and the judge reference with k extra
segments is `text[start of target : end of segment min(target+k, last of document)]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

PREFIX = "triples"
DOC_COLS = 4
SEG_COLS = 2
TRIPLE_COLS = 3


class TripleWriter:
    def __init__(self, directory: Path, vocab_size: int) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

        self.directory = Path(directory)
        self.dtype = DType.optimal_dtype(vocab_size)
        self.builder = IndexedDatasetBuilder(str(self.directory / f"{PREFIX}.bin"),
                                             dtype=self.dtype)
        self._text: BinaryIO = open(self.directory / "text.bin", "wb")
        self._docs: BinaryIO = open(self.directory / "documents.i64", "wb")
        self._segs: BinaryIO = open(self.directory / "segments.i64", "wb")
        self._triples: BinaryIO = open(self.directory / "triples.i64", "wb")
        self._doc_meta = open(self.directory / "documents.jsonl", "w", encoding="utf-8")
        self.text_bytes = 0
        self.documents = 0
        self.segments = 0
        self.triples = 0
        self.tokens = 0

    def add_document(self, text_bytes: bytes, seg_bytes: np.ndarray, triples: list,
                     meta: dict[str, Any]) -> None:
        """One kept document: its UTF-8 text, its segments' byte spans (relative, shape [n, 2]),
        and its triples (`Triple` with `context_start` as a relative byte offset)."""
        base = self.text_bytes
        self._text.write(text_bytes)
        first_seg = self.segments
        segs = np.asarray(seg_bytes, dtype=np.int64).reshape(-1, SEG_COLS) + base
        self._segs.write(segs.astype("<i8").tobytes())
        self._docs.write(np.array([base, base + len(text_bytes), first_seg, len(segs)],
                                  dtype="<i8").tobytes())
        rows = np.empty((len(triples), TRIPLE_COLS), dtype="<i8")
        for r, tri in enumerate(triples):
            rows[r] = (self.documents, first_seg + tri.target, base + tri.context_start)
            ids = np.concatenate([tri.context_ids, tri.target_ids, tri.next_ids])
            self.builder.add_document(ids, lengths=[len(tri.context_ids), len(tri.target_ids),
                                                    len(tri.next_ids)])
            self.tokens += len(ids)
        self._triples.write(rows.tobytes())
        self._doc_meta.write(json.dumps(meta, sort_keys=True, ensure_ascii=False) + "\n")
        self.text_bytes += len(text_bytes)
        self.segments += len(segs)
        self.documents += 1
        self.triples += len(triples)

    def finalize(self) -> None:
        for f in (self._text, self._docs, self._segs, self._triples, self._doc_meta):
            f.flush()
            f.close()
        self.builder.finalize(str(self.directory / f"{PREFIX}.idx"))

    def abort(self) -> None:
        for f in (self._text, self._docs, self._segs, self._triples, self._doc_meta):
            f.close()
        self.builder.data_file.close()
