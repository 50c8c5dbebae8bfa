"""Benchmark loaders: exact counts on the shared sets, the other common layouts, clear errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from megatron_rlpt.errors import UsageError
from megatron_rlpt.eval.items import CHOICE, KOR, MATH
from megatron_rlpt.eval.loaders import load_benchmark

from .conftest import GPQA_ROWS, write_gpqa_csv

EXPECTED = {
    "mmlu": 14042,
    "mmlu_pro": 12032,
    "math500": 500,
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "kor_bench": 1250,
    "gsm8k": 1319,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_counts(shared_data: Path, name: str) -> None:
    items = load_benchmark(name, shared_data / "benchmarks")
    assert len(items) == EXPECTED[name]
    assert len({item.id for item in items}) == len(items)
    assert all(item.question.strip() and item.answer.strip() for item in items)


def test_shared_fields(shared_data: Path) -> None:
    bench = shared_data / "benchmarks"
    mmlu = load_benchmark("mmlu", bench)
    assert len({i.category for i in mmlu}) == 57
    first = mmlu[0]  # abstract_algebra, answer index 1 in the re-formatted CSV
    assert (first.kind, first.category, first.answer, first.choices) == (
        CHOICE,
        "abstract_algebra",
        "B",
        ["0", "4", "2", "6"],
    )
    assert Counter(i.answer for i in mmlu).keys() == {"A", "B", "C", "D"}
    pro = load_benchmark("mmlu_pro", bench)
    assert len({i.category for i in pro}) == 14
    assert all(i.answer in "ABCDEFGHIJ"[: len(i.choices)] for i in pro)
    amc = load_benchmark("amc23", bench)
    assert amc[0].answer == "27" and amc[0].kind == MATH  # stored as 27.0
    assert load_benchmark("aime25", bench)[0].answer == "70"
    assert load_benchmark("gsm8k", bench)[0].answer == "18"
    kor = load_benchmark("kor_bench", bench)
    assert Counter(i.category for i in kor) == {
        c: 250 for c in ("cipher", "counterfactual", "logic", "operation", "puzzle")
    }
    assert kor[0].kind == KOR and kor[0].extra["rule"].startswith("**Encryption Rules:**")


def test_limit_spreads_over_subjects(shared_data: Path) -> None:
    items = load_benchmark("kor_bench", shared_data / "benchmarks", limit=5)
    assert [i.category for i in items] == [
        "cipher",
        "counterfactual",
        "logic",
        "operation",
        "puzzle",
    ]
    assert len(load_benchmark("mmlu", shared_data / "benchmarks", limit=7)) == 7


def test_original_mmlu_layout(tmp_path: Path) -> None:
    """hendrycks/test: data/test/<subject>_test.csv, no header, letter answers."""
    folder = tmp_path / "MMLU" / "data" / "test"
    folder.mkdir(parents=True)
    with open(folder / "virology_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["Q1, with a comma?", "a", "b", "c", "d", "C"], ["Q2", "w", "x", "y", "z", "A"]]
        )
    items = load_benchmark("mmlu", tmp_path)
    assert [(i.id, i.answer, i.category) for i in items] == [
        ("virology/0", "C", "virology"),
        ("virology/1", "A", "virology"),
    ]
    assert items[0].question == "Q1, with a comma?"


def test_hf_records_layouts(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "mmlu" / "all").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(
            [{"question": "Q", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 3}]
        ),
        tmp_path / "mmlu" / "all" / "test-00000-of-00001.parquet",
    )
    assert load_benchmark("mmlu", tmp_path)[0].answer == "D"
    # AIME 2025 as two files with capitalised fields and no ids.
    aime = tmp_path / "AIME2025"
    aime.mkdir()
    for part, answers in (("I", ["70", "588"]), ("II", ["16"])):
        with open(aime / f"aime2025-{part}.jsonl", "w") as f:
            for a in answers:
                f.write(json.dumps({"Problem": f"p{a}", "Answer": a}) + "\n")
    items = load_benchmark("aime25", tmp_path)
    assert [(i.id, i.answer) for i in items] == [("0", "70"), ("1", "588"), ("2", "16")]
    # MATH-style records without an answer field: the solution's last box.
    (tmp_path / "math500").mkdir()
    (tmp_path / "math500" / "test.jsonl").write_text(
        json.dumps({"problem": "p", "solution": "so \\boxed{\\frac{1}{2}}."}) + "\n"
    )
    assert load_benchmark("math500", tmp_path)[0].answer == "\\frac{1}{2}"


def test_gpqa_csv_shuffles_deterministically(tmp_path: Path) -> None:
    path = write_gpqa_csv(tmp_path / "gpqa.csv")
    items = load_benchmark("gpqa", None, gpqa_csv=path, seed=0)
    assert len(items) == len(GPQA_ROWS)
    for item, row in zip(items, GPQA_ROWS):
        assert sorted(item.choices) == sorted(row[1:])
        assert item.choices["ABCD".index(item.answer)] == row[1]  # the letter tracks the answer
    # Not always first: the correct option lands in several positions.
    assert len({i.answer for i in items}) > 1
    again = load_benchmark("gpqa", None, gpqa_csv=path, seed=0)
    assert [i.choices for i in again] == [i.choices for i in items]
    other = load_benchmark("gpqa", None, gpqa_csv=path, seed=1)
    assert [i.choices for i in other] != [i.choices for i in items]
    # Found under <data-dir>/gpqa/ as well.
    write_gpqa_csv(tmp_path / "data" / "gpqa" / "gpqa_diamond.csv")
    assert len(load_benchmark("gpqa", tmp_path / "data")) == len(GPQA_ROWS)


def test_gpqa_order_is_per_question(tmp_path: Path) -> None:
    """A question's option order depends on the question, not on its place in the file."""
    ids = [f"rec{i:03d}" for i in range(len(GPQA_ROWS))]
    full = load_benchmark("gpqa", None, gpqa_csv=write_gpqa_csv(tmp_path / "a.csv", GPQA_ROWS, ids))
    reordered = write_gpqa_csv(tmp_path / "b.csv", GPQA_ROWS[::-1], ids[::-1])
    by_id = {i.id: i.choices for i in load_benchmark("gpqa", None, gpqa_csv=reordered)}
    assert all(by_id[i.id] == i.choices for i in full)


def test_missing_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no mmlu_pro data under"):
        load_benchmark("mmlu_pro", tmp_path)
    with pytest.raises(UsageError, match="is not a directory"):
        load_benchmark("math500", tmp_path / "nope")
    with pytest.raises(UsageError, match="GPQA is not redistributed"):
        load_benchmark("gpqa", tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        load_benchmark("gpqa", None, gpqa_csv=tmp_path / "missing.csv")
    (tmp_path / "math500").mkdir()
    with pytest.raises(UsageError, match="no test split in"):
        load_benchmark("math500", tmp_path)
    (tmp_path / "kor_bench" / "cipher").mkdir(parents=True)
    with pytest.raises(UsageError, match="missing .*rule.jsonl"):
        load_benchmark("kor_bench", tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Correct Answer\nq,a\n")
    with pytest.raises(UsageError, match="missing column"):
        load_benchmark("gpqa", None, gpqa_csv=bad)
    with pytest.raises(UsageError, match="unknown benchmark"):
        load_benchmark("superglue", tmp_path)
