"""Streaming readers: every format, every kind of broken record, one record each."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from megatron_rlpt.data.readers import InputReader, expand_inputs
from megatron_rlpt.errors import UsageError

LINES = [json.dumps({"id": f"d{i}", "meta": {"body": f"text {i}"}, "text": f"hello {i}"})
         for i in range(5)]


def _read(paths, **kw):
    reader = InputReader(paths, **kw)
    return list(reader), reader


def test_jsonl_plain_gz_zst_give_the_same_records(tmp_path):
    data = ("\n".join(LINES) + "\n").encode()
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(data)
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(data))
    recs, reader = _read([plain, gz, zst])
    texts = [r.text for r in recs]
    assert texts == [f"hello {i}" for i in range(5)] * 3
    assert [r.doc_id for r in recs[:2]] == ["d0", "d1"]
    assert len(reader.checksums) == 3 and all(len(v) == 64 for v in reader.checksums.values())
    nested, _ = _read([plain], text_field="meta.body")
    assert [r.text for r in nested] == [f"text {i}" for i in range(5)]


def test_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"], "text": ["one doc", None, "three"]}), path)
    recs, reader = _read([path], parquet_batch_rows=2)
    assert [(r.text, r.reason) for r in recs] == [("one doc", None), (None, "not_text"),
                                                 ("three", None)]
    assert str(path) in reader.checksums


def test_text_units(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("para one\nline two\n\n\npara two\n")
    assert [r.text for r in _read([path], text_unit="file")[0]] == [
        "para one\nline two\n\n\npara two\n"]
    assert [r.text for r in _read([path], text_unit="paragraph")[0]] == [
        "para one\nline two", "para two"]
    lines = _read([path], text_unit="line")[0]
    assert [r.text for r in lines] == ["para one", "line two", None, None, "para two"]
    assert [r.reason for r in lines][2:4] == ["empty", "empty"]


def test_broken_records_are_counted_not_fatal(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join([
        b'{"text": "ok"}', b'{"text": "trunc', b'{"text": "\xff\xfe"}', b'{"nope": 1}',
        b'{"text": 3}', b'', b'[1, 2]', b'{"text": "\\ud800"}', b'{"text": "' + b"y" * 5000 +
        b'"}', b'{"text": "last"}']) + b"\n")
    recs, _ = _read([path], max_document_bytes=2048)
    assert [r.reason for r in recs] == [None, "malformed_json", "invalid_utf8", "missing_field",
                                        "not_text", "empty", "malformed_json", "invalid_utf8",
                                        "too_large", None]
    assert recs[-1].text == "last" and [r.index for r in recs] == list(range(10))


def test_truncated_gzip_becomes_one_read_error(tmp_path):
    data = gzip.compress(("\n".join(LINES * 200) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    recs, reader = _read([path])
    assert recs[-1].reason == "read_error"
    assert all(r.reason is None for r in recs[:-1]) and len(recs) > 1
    assert str(path) in reader.checksums


def test_expand_inputs(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    files = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path)])
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl", "c.txt"]
    with pytest.raises(UsageError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(UsageError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.parquet")])
