"""Fixtures for the data-pipeline tests: small corpora built from the shared OpenStax text."""

from __future__ import annotations

import json
import random

import pytest
from prepare_testlib import GIGANTIC


def malformed_records(n: int, rng: random.Random) -> list[bytes]:
    """`n` unusable JSONL lines of every kind the reader must survive."""
    kinds = [
        lambda i: b'{"id": "bad%d", "text": "unterminated' % i,
        lambda i: b'{"id": "bad%d", "text": "caf\xe9 \xff\xfe"}' % i,
        lambda i: b'{"id": "bad%d", "body": "no text field here"}' % i,
        lambda i: b'{"id": "bad%d", "text": 12345}' % i,
        lambda i: b'{"id": "bad%d", "text": "   "}' % i,
        lambda i: b"",
        lambda i: b'["a", "list", %d]' % i,
        lambda i: b'{"id": "bad%d", "text": "lone \\ud800 surrogate"}' % i,
        lambda i: b'{"id": "bad%d", "text": "too short"}' % i,
        lambda i: b'{"id": "bad%d", "text": "%s"}' % (i, b"x" * GIGANTIC),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


@pytest.fixture(scope="session")
def mixed_corpus(shared_data, tmp_path_factory) -> dict:
    """40 chemistry sections, 3 near-duplicate copies, 2 planted MATH-500 problems and 1,000
    malformed records, interleaved deterministically in one JSONL file."""
    rng = random.Random(1234)
    root = tmp_path_factory.mktemp("mixed")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        sections = [json.loads(line) for line in f][1:43]
    docs, hosts = sections[:40], sections[40:]
    with open(shared_data / "benchmarks/math500/test.jsonl", encoding="utf-8") as f:
        problems = [json.loads(line)["problem"] for line in f][:2]
    good = [json.dumps({"id": d["id"], "text": d["text"]}).encode() for d in docs]
    for k, src in enumerate((docs[2], docs[5], docs[9])):  # near-duplicates: small edits
        text = src["text"].replace(" the ", " the  ", 3) + "\n\nA closing remark."
        good.append(json.dumps({"id": f"dup{k}", "text": text}).encode())
    for k, p in enumerate(problems):  # contaminated: a problem planted into a section
        text = hosts[k]["text"]
        cut = text.index(". ", len(text) // 2) + 2
        planted = text[:cut] + p + "\n\n" + text[cut:]
        good.append(json.dumps({"id": f"planted{k}", "text": planted}).encode())
    bad = malformed_records(1000, rng)
    lines = [(b, True) for b in good] + [(b, False) for b in bad]
    # keep the good ones in their order (duplicates after their originals), bad ones anywhere
    order = sorted(range(len(lines)), key=lambda i: (rng.random() if not lines[i][1] else
                                                     i / len(good)))
    path = root / "mixed.jsonl"
    with open(path, "wb") as f:
        for i in order:
            f.write(lines[i][0] + b"\n")
    bench = shared_data / "benchmarks/math500/test.jsonl"
    return {"path": path, "good": len(good), "bad": len(bad), "bench": bench}
