"""Streaming readers: JSONL (plain, .gz, .zst), Parquet and plain text, one record at a time.

Every record read is yielded exactly once, usable or not: a record that cannot be used carries a
`reason` (`malformed_json`, `invalid_utf8`, `missing_field`, `not_text`, `empty`, `too_large`,
`read_error`) and no text, so that the pipeline can count and quarantine it. Nothing holds more
than one record (at most `max_document_bytes`) in memory; Parquet is read a row batch at a time.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError

_COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_JSONL = {".jsonl", ".ndjson", ".json"}
_CHUNK = 1 << 20


@dataclass
class Record:
    """One input record: `text` when usable, else `reason` (and `detail`) saying why not."""

    source: int
    """Index of the input file in the run's ordered input list."""
    index: int
    """Record number within its file (0-based; lines for JSONL, rows for Parquet)."""
    text: str | None
    doc_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    nbytes: int = 0
    """Uncompressed bytes this record occupied in its file."""


def input_format(path: str | os.PathLike) -> tuple[str, str | None]:
    """(`jsonl` | `parquet` | `text`, compression or None) from the file name."""
    name = Path(path).name.lower()
    suffix = Path(name).suffix
    compression = _COMPRESSED.get(suffix)
    if compression:
        name = name[: -len(suffix)]
    inner = Path(name).suffix
    if inner == ".parquet":
        if compression:
            raise UsageError(f"{path}: compressed Parquet is not supported (Parquet compresses itself)")
        return "parquet", None
    if inner in _JSONL:
        return "jsonl", compression
    return "text", compression


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Paths, globs and directories to an ordered, de-duplicated file list.

    Order: the order of `patterns`; within a glob or a directory, sorted by path. A pattern that
    matches nothing is a UsageError.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
        else:
            matches = [pattern]
        files: list[Path] = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                files.extend(sorted(q for q in p.rglob("*") if q.is_file()
                                    and not q.name.startswith(".")))
            elif p.is_file():
                files.append(p)
        if not files:
            globbed = any(ch in pattern for ch in "*?[")
            raise UsageError(f"input {pattern!r} matches no file" if globbed
                             else f"input {pattern!r}: no such file")
        for f in files:
            key = str(f.resolve())
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


class _HashingReader(io.RawIOBase):
    """A raw file wrapper that feeds every byte read into sha256 (the manifest's checksum)."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
        return n or 0

    def finish(self) -> str:
        """Hash the bytes not read yet (a reader stopped early) and return the hex digest."""
        while True:
            chunk = self._f.read(_CHUNK)
            if not chunk:
                break
            self.sha.update(chunk)
        return self.sha.hexdigest()

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_stream(raw: _HashingReader, compression: str | None) -> io.BufferedIOBase:
    buffered = io.BufferedReader(raw, buffer_size=_CHUNK)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(buffered),
                                 buffer_size=_CHUNK)
    return buffered


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _get_field(obj: dict, dotted: str) -> tuple[bool, Any]:
    cur: Any = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _check_text(text: Any) -> str | None:
    """The reason `text` is unusable, or None."""
    if not isinstance(text, str):
        return "not_text"
    if not text.strip():
        return "empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a JSON \ud800 escape
        return "invalid_utf8"
    return None


def _make_record(source: int, index: int, obj: Any, text_field: str, id_field: str | None,
                 nbytes: int) -> Record:
    if not isinstance(obj, dict):
        return Record(source, index, None, reason="malformed_json",
                      detail=f"top-level {type(obj).__name__}, not an object", nbytes=nbytes)
    doc_id = None
    if id_field:
        found, value = _get_field(obj, id_field)
        if found and value is not None:
            doc_id = str(value)
    found, text = _get_field(obj, text_field)
    if not found:
        return Record(source, index, None, doc_id, "missing_field", f"no field {text_field!r}",
                      nbytes)
    reason = _check_text(text)
    if reason:
        return Record(source, index, None, doc_id, reason, None, nbytes)
    return Record(source, index, text, doc_id, nbytes=nbytes)


def _read_lines(stream: io.BufferedIOBase, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, nbytes) per line; a line longer than `limit` yields (None, its length) unread."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            n = len(line)
            while True:  # skip the rest of the giant line without keeping it
                rest = stream.readline(_CHUNK)
                n += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None, n
            continue
        yield line, len(line)


def _decode(data: bytes) -> tuple[str | None, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"byte {err.start}: {err.reason}"


def read_jsonl(stream, source: int, text_field: str, id_field: str | None,
               limit: int) -> Iterator[Record]:
    for index, (line, nbytes) in enumerate(_read_lines(stream, limit)):
        if line is None:
            yield Record(source, index, None, reason="too_large",
                         detail=f"{nbytes} bytes > read.max_document_bytes", nbytes=nbytes)
            continue
        text, err = _decode(line)
        if text is None:
            yield Record(source, index, None, reason="invalid_utf8", detail=err, nbytes=nbytes)
            continue
        if not text.strip():
            yield Record(source, index, None, reason="empty", detail="blank line", nbytes=nbytes)
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            yield Record(source, index, None, reason="malformed_json", detail=str(err)[:200],
                         nbytes=nbytes)
            continue
        yield _make_record(source, index, obj, text_field, id_field, nbytes)


def read_text(stream, source: int, unit: str, limit: int, name: str) -> Iterator[Record]:
    if unit == "file":
        data = stream.read(limit + 1)
        if len(data) > limit:
            n = len(data)
            while chunk := stream.read(_CHUNK):
                n += len(chunk)
            yield Record(source, 0, None, name, "too_large",
                         f"{n} bytes > read.max_document_bytes", n)
            return
        yield _text_record(source, 0, data, f"{name}")
        return
    index = 0
    buf: list[bytes] = []
    size = 0
    oversize = 0
    for line, nbytes in _read_lines(stream, limit):
        if unit == "line":
            if line is None:
                yield Record(source, index, None, f"{name}:{index}", "too_large",
                             f"{nbytes} bytes > read.max_document_bytes", nbytes)
            else:
                yield _text_record(source, index, line.rstrip(b"\r\n"), f"{name}:{index}", nbytes)
            index += 1
            continue
        # paragraphs: blank-line separated
        if line is not None and not line.strip():
            if buf or oversize:
                yield _para_record(source, index, buf, size, oversize, name, limit)
                index += 1
                buf, size, oversize = [], 0, 0
            continue
        size += nbytes
        if line is None or size > limit:
            oversize = size
            buf = []
        else:
            buf.append(line)
    if buf or oversize:
        yield _para_record(source, index, buf, size, oversize, name, limit)


def _para_record(source, index, buf, size, oversize, name, limit) -> Record:
    if oversize:
        return Record(source, index, None, f"{name}:{index}", "too_large",
                      f"{size} bytes > read.max_document_bytes", size)
    return _text_record(source, index, b"".join(buf).rstrip(b"\r\n"), f"{name}:{index}", size)


def _text_record(source: int, index: int, data: bytes, doc_id: str,
                 nbytes: int | None = None) -> Record:
    nbytes = len(data) if nbytes is None else nbytes
    text, err = _decode(data)
    if text is None:
        return Record(source, index, None, doc_id, "invalid_utf8", err, nbytes)
    reason = _check_text(text)
    return Record(source, index, None if reason else text, doc_id, reason, None, nbytes)


def read_parquet(path: Path, source: int, text_field: str, id_field: str | None,
                 limit: int, batch_rows: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    names = set(pf.schema_arrow.names)
    columns = [c for c in {text_field.split(".")[0], (id_field or "").split(".")[0]}
               if c and c in names]
    index = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=sorted(columns) or None):
        for row in batch.to_pylist():
            nbytes = 0
            found, text = _get_field(row, text_field)
            if isinstance(text, bytes):
                decoded, err = _decode(text)
                if decoded is None:
                    yield Record(source, index, None, None, "invalid_utf8", err, len(text))
                    index += 1
                    continue
                row = dict(row)
                _set_field(row, text_field, decoded)
            if isinstance(text, (str, bytes)):
                nbytes = len(text.encode("utf-8", "surrogatepass")
                             if isinstance(text, str) else text)
            if nbytes > limit:
                rec = Record(source, index, None, None, "too_large",
                             f"{nbytes} bytes > read.max_document_bytes", nbytes)
            else:
                rec = _make_record(source, index, row, text_field, id_field, nbytes)
            yield rec
            index += 1


def _set_field(obj: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        obj = obj[part]
    obj[leaf] = value


class InputReader:
    """All records of all inputs, in order, with per-file sha256 and byte counts.

    `checksums[path]` is filled as each file is finished (read to its end).
    """

    def __init__(self, paths: list[Path], text_field: str = "text", id_field: str | None = "id",
                 text_unit: str = "file", max_document_bytes: int = 16 << 20,
                 parquet_batch_rows: int = 1024) -> None:
        self.paths = paths
        self.text_field = text_field
        self.id_field = id_field
        self.text_unit = text_unit
        self.limit = max_document_bytes
        self.batch_rows = parquet_batch_rows
        self.checksums: dict[str, str] = {}
        self.formats = [input_format(p) for p in paths]

    def __iter__(self) -> Iterator[Record]:
        for source, path in enumerate(self.paths):
            fmt, compression = self.formats[source]
            index = -1
            try:
                if fmt == "parquet":
                    for rec in read_parquet(path, source, self.text_field, self.id_field,
                                            self.limit, self.batch_rows):
                        index = rec.index
                        yield rec
                    self.checksums[str(path)] = file_sha256(path)
                    continue
                raw = _HashingReader(open(path, "rb"))
                try:
                    stream = _open_stream(raw, compression)
                    if fmt == "jsonl":
                        records = read_jsonl(stream, source, self.text_field, self.id_field,
                                             self.limit)
                    else:
                        records = read_text(stream, source, self.text_unit, self.limit,
                                            path.name)
                    for rec in records:
                        index = rec.index
                        yield rec
                    self.checksums[str(path)] = raw.finish()
                finally:
                    raw.close()
            except (OSError, EOFError, ValueError) as err:
                # Truncated or corrupt compressed files, unreadable Parquet: one record that
                # stands for the unreadable rest of the file.
                if str(path) not in self.checksums:
                    self.checksums[str(path)] = file_sha256(path)
                yield Record(source, index + 1, None, None, "read_error",
                             f"{type(err).__name__}: {str(err)[:200]}", 0)
            except Exception as err:  # noqa: BLE001 - e.g. zstd/arrow errors
                if str(path) not in self.checksums:
                    self.checksums[str(path)] = file_sha256(path)
                yield Record(source, index + 1, None, None, "read_error",
                             f"{type(err).__name__}: {str(err)[:200]}", 0)
