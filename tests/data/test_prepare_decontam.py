"""Decontamination: MATH-500 and GSM8K problems planted into OpenStax prose are found, verbatim
and with whitespace/case/punctuation changes; unplanted prose survives."""

from __future__ import annotations

import json
import random
import re

import pytest

from megatron_rlpt.data.config import DecontamConfig
from megatron_rlpt.data.decontam import ContaminationIndex, cut_spans


@pytest.fixture(scope="module")
def bench(shared_data):
    files = [shared_data / "benchmarks/math500/test.jsonl",
             shared_data / "benchmarks/gsm8k/test.jsonl"]
    index = ContaminationIndex.build(files, DecontamConfig())
    problems = []
    for f, key in zip(files, ("problem", "question")):
        with open(f, encoding="utf-8") as fh:
            problems += [json.loads(line)[key] for line in fh]
    return index, problems


@pytest.fixture(scope="module")
def hosts(shared_data):
    docs = []
    for name in ("openstax_university_physics", "openstax_calculus", "openstax_chemistry_2e",
                 "openstax_statistics_neardup"):
        with open(shared_data / f"corpus/{name}.jsonl", encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f]
    return docs


def _perturb(problem: str, rng: random.Random) -> str:
    """Change whitespace, case and sentence punctuation (not the words themselves)."""
    out = problem
    choice = rng.randrange(3)
    if choice == 0:
        out = out.upper() if rng.random() < 0.5 else out.lower()
    elif choice == 1:
        out = re.sub(r"\s+", lambda m: rng.choice(["  ", "\n", " \t ", " "]), out)
    else:
        out = re.sub(r"[.,;:!?](?=\s|$)", lambda m: rng.choice(["", ";", " ,", "!"]), out)
    # and always a second, different change
    out = re.sub(r"\s+", " ", out) if choice == 1 else re.sub(r" ", "  ", out)
    return out


def _plant(host: str, problem: str, rng: random.Random) -> str:
    """Put `problem` at a sentence boundary of a ~1500-character window of `host`."""
    start = rng.randrange(max(1, len(host) - 1500))
    window = host[start:start + 1500]
    cuts = [m.end() for m in re.finditer(r"[.!?]\s", window)]
    if not cuts:
        return window + "\n\n" + problem
    at = rng.choice(cuts)
    sep = rng.choice([" ", "\n\n"])
    return window[:at] + problem + sep + window[at:]


def test_planted_problems_are_found(bench, hosts):
    index, problems = bench
    rng = random.Random(0)
    verbatim_missed, perturbed_missed = [], []
    for i, p in enumerate(problems):
        host = hosts[i % len(hosts)]
        if not index.find(_plant(host, p, rng)):
            verbatim_missed.append(p)
        if not index.find(_plant(host, _perturb(p, rng), rng)):
            perturbed_missed.append(p)
    n = len(problems)
    print(f"\nplanted {n}: verbatim missed {len(verbatim_missed)}, "
          f"perturbed missed {len(perturbed_missed)}")
    assert verbatim_missed == []
    assert len(perturbed_missed) / n <= 0.05, perturbed_missed[:5]


def test_unplanted_documents_survive(bench, hosts):
    index, _ = bench
    flagged = [d[:80] for d in hosts if index.find(d)]
    assert len(flagged) / len(hosts) <= 0.01, flagged


def test_cut_mode_removes_only_the_plant(bench, hosts):
    index, problems = bench
    rng = random.Random(1)
    host = hosts[3][:1500]
    planted = _plant(host, problems[7], rng)
    cut = cut_spans(planted, index.find(planted))
    assert not index.find(cut)
    assert len(cut) >= len(host) - 40  # the prose is kept


def test_every_text_field_counts(tmp_path):
    bench = tmp_path / "b.jsonl"
    long_answer = ("the quick brown fox jumps over the lazy dog while seventeen purple "
                   "elephants dance quietly")
    bench.write_text(json.dumps({"q": "x", "meta": {"answer": long_answer}}) + "\n")
    csv = tmp_path / "b.csv"
    csv.write_text('"Which planet has 2 moons named Phobos and Deimos?",Mars,Venus\n')
    index = ContaminationIndex.build([bench, csv], DecontamConfig())
    assert index.find("Intro. " + long_answer.upper() + ". Outro.")
    assert index.find("Quiz.\nWhich planet has 2 moons named Phobos and Deimos\nDone.")
    assert not index.find("Mars and Venus are planets. None of this is a benchmark.")


def _tiny_corpus(tmp_path):
    text = " ".join(f"The lamp number {i} stands in room {i % 7} and glows all night." for i in
                    range(8))
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"Document {d}. {text}"}) + "\n"
                            for d in range(3)))
    return path


def test_no_benchmarks_warns_and_the_manifest_says_none(tmp_path):
    import subprocess
    import sys

    from megatron_rlpt.data.pipeline import prepare
    from tests.data.prepare_testlib import small_config
    from tests.multirank import REPO_ROOT

    corpus = _tiny_corpus(tmp_path)
    with pytest.warns(UserWarning, match="NOT decontaminated"):
        result = prepare([str(corpus)], tmp_path / "plain", cfg=small_config(), progress=False)
    assert result.manifest["decontamination"] == "none"
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["decontamination"] == "none"

    # The command line says it on stderr, once, as a plain line.
    proc = subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", "prepare", "--input",
                           str(corpus), "--output", str(tmp_path / "cli"), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("NOT decontaminated") == 1
