"""`rlpt prepare` end to end: Megatron reads the output, triples decode to their source text,
every document is accounted for, any worker count and any rerun give the same bytes, and a
killed run leaves nothing under the final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prepare_testlib import small_config

from megatron_rlpt.data.pipeline import prepare
from megatron_rlpt.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(mixed_corpus, tmp_path_factory):
    cfg = small_config()
    cfg.decontaminate.benchmarks = [str(mixed_corpus["bench"])]
    out = tmp_path_factory.mktemp("prep") / "out"
    result = prepare([str(mixed_corpus["path"])], out, cfg=cfg, workers=1, progress=False)
    return out, result.manifest, cfg


def test_megatron_indexed_dataset_opens_the_output(prepared):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out, manifest, _ = prepared
    ds = IndexedDataset(str(out / "triples"))
    n = manifest["stages"]["write"]["triples"]
    assert n > 100
    assert len(ds) == 3 * n  # three sequences per triple
    assert len(ds.document_indices) == n + 1
    assert int(ds.sequence_lengths.sum()) == manifest["stages"]["write"]["tokens"]


def test_every_triple_decodes_to_its_source_text(prepared):
    from megatron_rlpt.data.dataset import TripleDataset

    out, manifest, cfg = prepared
    tok = load_tokenizer()
    ds = TripleDataset(out)
    ids = [json.loads(line)["id"] for line in open(out / "documents.jsonl", encoding="utf-8")]
    assert len(ids) == manifest["documents"]["out"]
    for item in ds:
        assert tok.decode(item.context_ids.tolist()) == item.context
        assert tok.decode(item.target_ids.tolist()) == item.target
        assert tok.decode(item.next_ids.tolist()) == item.next
        assert 0 < len(item.context_ids) <= cfg.triples.max_context_tokens
        doc = ds.document_text(item.document)
        # context, target and next are consecutive pieces of the document text
        ctx_at = doc.index(item.context)
        assert doc.index(item.target, ctx_at) < doc.index(item.next, ctx_at + len(item.context))
        ref = ds.reference(item.index, 2)
        assert ref.startswith(item.target) and item.next in ref
        assert doc.endswith(ds.reference(item.index, 10_000))  # never past its document


def test_reference_is_exact_segment_text(prepared):
    from megatron_rlpt.data.dataset import TripleDataset

    out, _, _ = prepared
    ds = TripleDataset(out)
    text = bytes(np.asarray(ds._text)).decode("utf-8")
    for i in range(0, len(ds), 7):
        item = ds[i]
        doc = int(ds.triples[i][0])
        first, count = int(ds.documents[doc][2]), int(ds.documents[doc][3])
        seg = first + item.target_segment
        last = min(seg + 2, first + count - 1)
        seg_texts = [bytes(np.asarray(ds._text[a:b])).decode()
                     for a, b in ds.segments[seg:last + 1]]
        assert seg_texts[0] == item.target and seg_texts[1] == item.next
        ref = ds.reference(i, 2)
        assert ref.startswith(seg_texts[0]) and ref.endswith(seg_texts[-1])
        assert ref in text
        assert ds.reference(i, 0) == item.target
        # the context ends right where the target's preceding segment ends
        prev_end = int(ds.segments[seg - 1][1])
        assert bytes(np.asarray(ds._text[:prev_end])).decode().endswith(item.context)


def test_accounting_with_1000_malformed_records(prepared, mixed_corpus):
    out, manifest, _ = prepared
    docs = manifest["documents"]
    assert docs["in"] == mixed_corpus["good"] + mixed_corpus["bad"]
    assert docs["in"] == docs["out"] + sum(docs["dropped"].values())
    read_drops = manifest["stages"]["read"]["dropped"]
    for reason in ("malformed_json", "invalid_utf8", "missing_field", "not_text", "empty",
                   "too_large"):
        assert read_drops.get(reason, 0) > 0, reason
    quarantine = [json.loads(line) for line in open(out / "quarantine.jsonl", encoding="utf-8")]
    by_id = {q["id"]: q["reason"] for q in quarantine if q["id"]}
    assert [by_id.get(f"dup{k}") for k in range(3)] == ["near_duplicate"] * 3
    assert [by_id.get(f"planted{k}") for k in range(2)] == ["contaminated"] * 2
    assert docs["dropped"]["contaminated"] == 2
    assert len(quarantine) == sum(docs["dropped"].values())
    assert {q["reason"] for q in quarantine} == set(docs["dropped"])
    # every stage's counts chain
    s = manifest["stages"]
    assert s["read"]["out"] == s["filter"]["in"] and s["filter"]["out"] == s["dedup"]["in"]
    assert s["triples"]["out"] == docs["out"]
    assert manifest["inputs"][0]["sha256"] and manifest["inputs"][0]["records"] == docs["in"]


def test_two_workers_write_identical_bytes(prepared, mixed_corpus, tmp_path):
    out, _, cfg = prepared
    out2 = tmp_path / "out2"
    prepare([str(mixed_corpus["path"])], out2, cfg=cfg, workers=2, progress=False)
    assert _files(out2) == _files(out)


def test_killed_run_leaves_nothing_and_rerun_is_identical(prepared, mixed_corpus, tmp_path):
    out, _, cfg = prepared
    target = tmp_path / "killed"
    cfg_file = tmp_path / "prepare.yaml"
    import yaml

    from megatron_rlpt.data.config import config_to_dict

    data = config_to_dict(cfg)
    data["decontaminate"]["benchmarks"] = []
    cfg_file.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_rlpt.cli", "prepare", "--input",
         str(mixed_corpus["path"]), "--output", str(target), "--config", str(cfg_file),
         "--decontaminate", str(mixed_corpus["bench"]), "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(".killed.*.tmp/triples.bin")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # nothing under the final name
    prepare([str(mixed_corpus["path"])], target, cfg=cfg, workers=1, progress=False)
    assert _files(target) == _files(out)
    assert not list(tmp_path.glob(".killed.*.tmp"))  # the dead run's temp dir was cleaned


def test_cli_rejects_unusable_arguments(tmp_path, mixed_corpus, capsys):
    cases = [
        ["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")],
        ["--input", str(mixed_corpus["path"]), "--output", str(tmp_path / "o"),
         "--workers", "0"],
        ["--input", str(mixed_corpus["path"]), "--output", str(tmp_path / "o"),
         "--set", "dedup.threshold=2"],
        ["--input", str(mixed_corpus["path"]), "--output", str(tmp_path / "o"),
         "--set", "nosuch.key=1"],
        ["--input", str(mixed_corpus["path"]), "--output", str(tmp_path / "o"),
         "--tokenizer", str(tmp_path)],
        ["--input", str(mixed_corpus["path"]), "--output", str(REPO / "megatron_rlpt")],
    ]
    from megatron_rlpt.cli import main

    for argv in cases:  # in-process: the same code path as the console script
        assert main(["prepare", *argv]) == 2, argv
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("rlpt prepare: error:"), (argv, lines)
    assert not (tmp_path / "o").exists()
    # and once as a real process, for the exit status
    proc = subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "prepare", *cases[0]],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"rlpt prepare: error: input {cases[0][1]!r}: no such file"]
