"""A JSONL corpus of 1,000 records, most of them malformed or hostile, for `rlpt prepare`.

Each record is one line (no record contains a newline byte), so the reader sees exactly 1,000
records. `KINDS` names each kind with the read-stage outcome it must get: a drop reason, or
None for records that parse into a usable document (they may still be filtered later).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

N_RECORDS = 1000
TEN_MB = 10 * 1024 * 1024
DEEP = 100_000  # nesting levels: far past the JSON decoder's recursion limit


def _prose(rng: random.Random, words: int) -> str:
    vocab = ("the reaction releases heat while the solution turns blue and the pressure rises "
             "slowly as gas forms in the closed flask near the warm bench").split()
    return " ".join(rng.choice(vocab) for _ in range(words)) + "."


def _binary(rng: random.Random) -> bytes:
    return bytes(b if b != 0x0A else 0x0B for b in rng.randbytes(rng.randint(1, 4096)))


def kinds(sections: list[dict]) -> list[tuple[str, str | None, Callable[[int, random.Random], bytes]]]:
    """(name, read-stage drop reason or None, maker) for every kind of record."""

    def good(i: int, rng: random.Random) -> bytes:
        d = sections[i % len(sections)]
        return json.dumps({"id": f"good{i}", "text": d["text"]}).encode()

    return [
        ("good", None, good),
        ("binary", "invalid_utf8", lambda i, rng: b"\xff\xfe" + _binary(rng)),
        ("nul_bytes", "malformed_json", lambda i, rng: b"\x00" * 64 + b'{"text": "x"}'),
        ("invalid_utf8", "invalid_utf8",
         lambda i, rng: b'{"id": "u%d", "text": "caf\xe9 \xc3\x28 \xed\xa0\x80"}' % i),
        ("lone_surrogate", "invalid_utf8",
         lambda i, rng: b'{"id": "s%d", "text": "%s \\udfff tail"}' % (i, _prose(rng, 60).encode())),
        ("text_int", "not_text", lambda i, rng: b'{"id": "n%d", "text": 5}' % i),
        ("text_null", "not_text", lambda i, rng: b'{"id": "n%d", "text": null}' % i),
        ("text_list", "not_text", lambda i, rng: b'{"id": "n%d", "text": ["a", "b"]}' % i),
        ("text_object", "not_text", lambda i, rng: b'{"id": "n%d", "text": {"en": "hi"}}' % i),
        ("text_bool", "not_text", lambda i, rng: b'{"id": "n%d", "text": true}' % i),
        ("top_list", "malformed_json", lambda i, rng: b'["text", %d]' % i),
        ("top_null", "malformed_json", lambda i, rng: b"null"),
        ("top_string", "malformed_json", lambda i, rng: b'"just a string"'),
        ("top_nan", "malformed_json", lambda i, rng: b"NaN"),
        ("missing_text", "missing_field", lambda i, rng: b'{"id": "m%d", "body": "x"}' % i),
        ("empty_object", "missing_field", lambda i, rng: b"{}"),
        ("empty_line", "empty", lambda i, rng: b""),
        ("blank_line", "empty", lambda i, rng: b" \t \r"),
        ("blank_text", "empty", lambda i, rng: b'{"id": "b%d", "text": " \\n\\t "}' % i),
        ("truncated", "malformed_json", lambda i, rng: b'{"id": "t%d", "text": "cut' % i),
        ("nested_list", "malformed_json", lambda i, rng: b"[" * DEEP + b"]" * DEEP),
        ("nested_text", "malformed_json",
         lambda i, rng: b'{"id": "d%d", "text": ' % i + b"[" * DEEP + b"]" * DEEP + b"}"),
        # Deep but within the decoder's reach: parses; the id is a structure, not a string.
        ("nested_id", None,
         lambda i, rng: b'{"id": ' + b"[" * 400 + b"]" * 400 + b', "text": "%s"}'
         % _prose(rng, 80).encode()),
        ("huge_number", "not_text", lambda i, rng: b'{"text": 1e999999}'),
        ("duplicate_key", "not_text", lambda i, rng: b'{"text": "fine words", "text": 7}'),
        ("control_chars", None, lambda i, rng: json.dumps(
            {"id": f"c{i}", "text": "\x07\x1b[31m" + _prose(rng, 80) + "\u202e\ufeff"}).encode()),
    ]


def write_corpus(path: Path, sections: list[dict], seed: int = 9) -> list[tuple[str, str | None]]:
    """Write 1,000 records (plus two 10 MB lines among them) to `path`; returns, per line, its
    kind and expected read-stage drop reason."""
    rng = random.Random(seed)
    table = kinds(sections)
    plan = [table[i % len(table)] for i in range(N_RECORDS - 2)]
    rng.shuffle(plan)
    lines = [(name, reason, make(i, rng)) for i, (name, reason, make) in enumerate(plan)]
    # Two 10 MB lines: one valid document of repeated prose, one of JSON-looking junk.
    big_text = (_prose(rng, 40) + " ") * (TEN_MB // 300)
    lines.insert(137, ("ten_mb_doc", None, json.dumps({"id": "big", "text": big_text}).encode()))
    lines.insert(611, ("ten_mb_junk", "malformed_json", b'{"text": "' + b"\\x" * (TEN_MB // 2)))
    with open(path, "wb") as f:
        for _, _, data in lines:
            assert b"\n" not in data
            f.write(data + b"\n")
    return [(name, reason) for name, reason, _ in lines]
