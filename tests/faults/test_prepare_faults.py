"""`rlpt prepare` on 1,000 hostile records, and killed with SIGKILL part-way.

- Every record is accounted for: dropped with the reason its kind calls for (binary, invalid
  UTF-8, wrong types, 100,000-level nesting, 10 MB lines, ...) or kept; nothing crashes.
- A run killed at seeded random moments after it started writing leaves nothing under the final
  name (or the previous output untouched), and the rerun's files are byte-identical to a clean
  run's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.adversarial import N_RECORDS, write_corpus
from tests.multirank import REPO_ROOT


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _prepare(corpus: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "megatron_rlpt.cli", "prepare", "--input", str(corpus),
         "--output", str(out), "--workers", "2", "--no-progress"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _writing(out: Path) -> bool:
    """The run has its temporary directory and has started writing into it."""
    return any((t / "quarantine.jsonl").exists() for t in out.parent.glob(f".{out.name}.*.tmp"))


@pytest.fixture(scope="module")
def clean(shared_data, tmp_path_factory) -> dict:
    """The hostile corpus and one uninterrupted run over it (with its timing)."""
    root = tmp_path_factory.mktemp("hostile")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        sections = [json.loads(line) for line in f][1:41]
    corpus = root / "hostile.jsonl"
    plan = write_corpus(corpus, sections)
    out = root / "clean"
    proc = _prepare(corpus, out)
    while proc.poll() is None and not _writing(out):
        time.sleep(0.01)
    t_writing = time.monotonic()
    while proc.poll() is None and not out.exists():
        time.sleep(0.01)
    writing_s = time.monotonic() - t_writing  # until the output is renamed into place
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log.decode(errors="replace")[-3000:]
    return {"corpus": corpus, "plan": plan, "out": out, "writing_s": writing_s}


def test_every_hostile_record_is_accounted_for(clean):
    out, plan = clean["out"], clean["plan"]
    assert len(plan) == N_RECORDS
    manifest = json.loads((out / "manifest.json").read_text())
    docs = manifest["documents"]
    assert docs["in"] == N_RECORDS
    assert docs["in"] == docs["out"] + sum(docs["dropped"].values())
    assert manifest["inputs"][0]["records"] == N_RECORDS

    quarantine = [json.loads(line) for line in open(out / "quarantine.jsonl", encoding="utf-8")]
    kept = [json.loads(line) for line in open(out / "documents.jsonl", encoding="utf-8")]
    assert len(quarantine) == sum(docs["dropped"].values()) and len(kept) == docs["out"]
    seen = [q["record"] for q in quarantine] + [k["record"] for k in kept]
    assert sorted(seen) == list(range(N_RECORDS))  # each record once: kept or dropped

    # Each record got the read-stage outcome its kind calls for.
    read_reason = {q["record"]: q["reason"] for q in quarantine if q["stage"] == "read"}
    wrong = [(i, kind, want, read_reason.get(i)) for i, (kind, want) in enumerate(plan)
             if read_reason.get(i) != want]
    assert not wrong, wrong[:10]
    assert manifest["stages"]["read"]["dropped"] == dict(Counter(r for _, r in plan if r))
    # The usable kinds went on: the 10 MB document was read and filtered, not a crash.
    big = plan.index(("ten_mb_doc", None))
    assert {q["record"]: q["reason"] for q in quarantine}.get(big) == "too_long"
    assert any(plan[k["record"]][0] == "good" for k in kept)
    assert {plan[k["record"]][0] for k in kept} <= {"good", "nested_id", "control_chars"}


@pytest.mark.slow
def test_killed_prepare_leaves_no_partial_output_and_rerun_is_identical(clean, tmp_path):
    corpus, reference = clean["corpus"], _files(clean["out"])
    out = tmp_path / "out"
    rng = random.Random(31337)
    for k in range(3):
        previous = out.exists()
        proc = _prepare(corpus, out)
        deadline = time.monotonic() + 300
        while proc.poll() is None and not _writing(out) and time.monotonic() < deadline:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 0.9 * clean["writing_s"])
        time.sleep(delay)
        print(f"prepare kill {k}: {delay:.2f} s into {clean['writing_s']:.2f} s of writing")
        assert proc.poll() is None, f"kill {k}: the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # Under the final name: nothing, or a complete output (the earlier one, or this run's
        # if the kill came after its rename); never a partial one.
        if previous or out.exists():
            assert _files(out) == reference, f"kill {k}"
        if k == 0 and not out.exists():  # later kills interrupt a run that replaces an output
            shutil.copytree(clean["out"], out)
    proc = _prepare(corpus, out)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log.decode(errors="replace")[-3000:]
    assert _files(out) == reference
    # The killed runs' temporary directories were removed by the rerun.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
