"""Benchmark loaders for the common file layouts of each benchmark.

Every loader reads one directory under `--data-dir` (matched case-insensitively, `-`/`_`
ignored, so `MMLU-Pro/` serves `mmlu_pro`) and returns a list of `Item`s in a fixed order.
A file that is missing or unreadable raises `UsageError` naming what was looked for.
See docs/eval.md for the layouts each loader accepts.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.eval.extract import LETTERS, last_boxed
from megatron_rlpt.eval.items import CHOICE, KOR, MATH, Item
from megatron_rlpt.eval.kor import CATEGORIES as KOR_CATEGORIES
from megatron_rlpt.eval.math_check import gold_text

Record = dict[str, Any]


# -- reading record files --------------------------------------------------------------------


def read_records(path: Path) -> list[Record]:
    """Records of a `.jsonl`, `.json` (a list, or `{"data": [...]}`), `.parquet` or `.csv` file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("data", data.get("test"))
            if not isinstance(data, list):
                raise UsageError(f"{path}: expected a JSON list of records")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from err
    raise UsageError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or .csv)")


def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


def find_dir(data_dir: Path, aliases: tuple[str, ...]) -> Path:
    """The directory under `data_dir` named like one of `aliases` (case, `-` and `_` ignored)."""
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a directory")
    wanted = {_key(a) for a in aliases}
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and _key(child.name) in wanted:
            return child
    raise UsageError(
        f"no {aliases[0]} data under {data_dir}: expected a directory named "
        + " or ".join(sorted(set(aliases)))
    )


_SPLIT_PATTERNS = (
    "test.jsonl",
    "test.json",
    "test.parquet",
    "test-*.parquet",
    "data/test-*.parquet",
    "*/test-*.parquet",
    "*test*.jsonl",
)


def split_files(root: Path) -> list[Path]:
    """The test-split files of a benchmark directory, or every `.jsonl` in it if none is named so."""
    for pattern in _SPLIT_PATTERNS:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    found = sorted(root.glob("*.jsonl"))
    if found:
        return found
    raise UsageError(
        f"no test split in {root}: looked for {', '.join(_SPLIT_PATTERNS)} or any *.jsonl"
    )


def _field(record: Record, names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in record and record[name] not in (None, ""):
            return record[name]
    raise UsageError(f"{where}: record has none of the fields {', '.join(names)}")


def _spread(items: list[Item], limit: int | None) -> list[Item]:
    """`limit` items evenly spaced over the list, so a small run still covers every subject."""
    if limit is None or limit >= len(items):
        return items
    if limit <= 0:
        raise UsageError("--limit must be positive")
    return [items[i * len(items) // limit] for i in range(limit)]


# -- multiple choice -------------------------------------------------------------------------


def _mmlu_csv(path: Path) -> list[Item]:
    subject = re.sub(r"_test$", "", path.stem)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and rows[0][0].strip().lower() == "question":
        rows = rows[1:]  # re-formatted copies carry a header; the original files have none
    items = []
    for i, row in enumerate(rows):
        if len(row) != 6:
            raise UsageError(f"{path}:{i + 1}: expected 6 columns, got {len(row)}")
        question, *choices, answer = (cell.strip() for cell in row)
        letter = LETTERS[int(answer)] if answer.isdigit() else answer.upper()
        if letter not in LETTERS[:4]:
            raise UsageError(f"{path}:{i + 1}: answer {answer!r} is not A-D or 0-3")
        items.append(Item("mmlu", f"{subject}/{i}", CHOICE, question, letter, choices, subject))
    return items


def load_mmlu(root: Path, seed: int) -> list[Item]:
    """MMLU test: `test/*_test.csv` (original or with a header row), or HF records."""
    for sub in ("test", "data/test"):
        files = sorted((root / sub).glob("*.csv"))
        if files:
            return [item for path in files for item in _mmlu_csv(path)]
    files = sorted(root.glob("*_test.csv"))
    if files:
        return [item for path in files for item in _mmlu_csv(path)]
    try:
        paths = split_files(root if not (root / "all").is_dir() else root / "all")
    except UsageError:
        raise UsageError(
            f"no MMLU test data in {root}: expected test/*_test.csv, data/test/*.csv or "
            "test.jsonl / test-*.parquet records"
        ) from None
    items = []
    for path in paths:
        for i, rec in enumerate(read_records(path)):
            choices = [str(c).strip() for c in _field(rec, ("choices",), str(path))]
            answer = rec["answer"]
            letter = LETTERS[int(answer)] if str(answer).isdigit() else str(answer).upper()
            subject = str(rec.get("subject", ""))
            items.append(
                Item("mmlu", f"{subject}/{i}", CHOICE, rec["question"], letter, choices, subject)
            )
    return items


def load_mmlu_pro(root: Path, seed: int) -> list[Item]:
    """MMLU-Pro test: `test.jsonl` or `test-*.parquet` with TIGER-Lab's fields."""
    items = []
    for path in split_files(root):
        for rec in read_records(path):
            options = [str(o).strip() for o in _field(rec, ("options",), str(path))]
            while options and options[-1] == "N/A":  # padding in some releases
                options.pop()
            if "answer_index" in rec and rec["answer_index"] is not None:
                letter = LETTERS[int(rec["answer_index"])]
            else:
                letter = str(rec["answer"]).strip().upper()
            if letter not in LETTERS[: len(options)]:
                raise UsageError(f"{path}: question {rec.get('question_id')}: bad answer {letter}")
            items.append(
                Item(
                    "mmlu_pro",
                    str(rec.get("question_id", len(items))),
                    CHOICE,
                    rec["question"],
                    letter,
                    options,
                    str(rec.get("category", "")),
                )
            )
    return items


GPQA_FILES = ("gpqa_diamond.csv", "gpqa_main.csv", "gpqa_extended.csv")


def gpqa_file(data_dir: Path | None, gpqa_csv: Path | None) -> Path:
    """The GPQA file: `--gpqa-csv`, else `<data-dir>/gpqa/gpqa_diamond.csv` (or its only CSV)."""
    if gpqa_csv is not None:
        if not gpqa_csv.is_file():
            raise UsageError(f"--gpqa-csv {gpqa_csv} does not exist")
        return gpqa_csv
    hint = (
        "GPQA is not redistributed: download it from its authors (gpqa_diamond.csv) and pass "
        "--gpqa-csv PATH or put it in <data-dir>/gpqa/"
    )
    if data_dir is None:
        raise UsageError(hint)
    try:
        root = find_dir(data_dir, ("gpqa", "gpqa_diamond"))
    except UsageError:
        raise UsageError(f"no GPQA data under {data_dir}. {hint}") from None
    for name in GPQA_FILES:
        if (root / name).is_file():
            return root / name
    found = sorted([*root.glob("*.csv"), *root.glob("*.parquet")])
    if len(found) == 1:
        return found[0]
    raise UsageError(f"{root}: expected one of {', '.join(GPQA_FILES)}. {hint}")


def load_gpqa(path: Path, seed: int) -> list[Item]:
    """GPQA from its official CSV; options are shuffled per question with a fixed seed."""
    records = read_records(path)
    needed = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2")
    items = []
    for i, rec in enumerate(records):
        missing = [c for c in needed if c not in rec]
        if missing:
            raise UsageError(f"{path}: missing column(s) {', '.join(missing)}")
        correct = str(rec["Correct Answer"]).strip()
        options = [correct] + [
            str(rec[f"Incorrect Answer {j}"]).strip()
            for j in (1, 2, 3)
            if str(rec.get(f"Incorrect Answer {j}") or "").strip()
        ]
        record_id = str(rec.get("Record ID") or i)
        # Seeded by the question itself, so the order does not depend on file order or --limit.
        random.Random(f"gpqa:{seed}:{record_id}:{rec['Question']}").shuffle(options)
        items.append(
            Item(
                "gpqa",
                record_id,
                CHOICE,
                str(rec["Question"]).strip(),
                LETTERS[options.index(correct)],
                options,
                str(rec.get("High-level domain") or ""),
            )
        )
    return items


# -- math ------------------------------------------------------------------------------------

_PROBLEM = ("problem", "question", "Problem", "Question")
_ANSWER = ("answer", "Answer", "final_answer", "expected_answer")
_ID = ("unique_id", "id", "ID", "idx")


def _math_items(name: str, root: Path) -> list[Item]:
    items = []
    for path in split_files(root):
        for rec in read_records(path):
            where = f"{path} record {len(items) + 1}"
            answer = next((rec[k] for k in _ANSWER if rec.get(k) not in (None, "")), None)
            if answer is None and rec.get("solution"):
                answer = last_boxed(str(rec["solution"]))
            if answer is None:
                raise UsageError(f"{where}: no answer field and no \\boxed{{}} in a solution")
            ident = next((str(rec[k]) for k in _ID if rec.get(k) not in (None, "")), None)
            items.append(
                Item(
                    name,
                    ident if ident is not None else str(len(items)),
                    MATH,
                    str(_field(rec, _PROBLEM, where)),
                    gold_text(answer),
                    category=str(rec.get("subject") or rec.get("type") or ""),
                    extra={"level": rec["level"]} if "level" in rec else {},
                )
            )
    return items


def _math_loader(name: str) -> Callable[[Path, int], list[Item]]:
    """MATH-500 / AMC23 / AIME: records with a problem and an answer (or a boxed solution)."""

    def load(root: Path, seed: int) -> list[Item]:
        items = _math_items(name, root)
        if len({item.id for item in items}) != len(items):  # ids restart per file (AIME I/II)
            for i, item in enumerate(items):
                item.id = str(i)
        return items

    return load


def load_gsm8k(root: Path, seed: int) -> list[Item]:
    """GSM8K test: `test.jsonl` of `{question, answer}`; the gold follows `####`."""
    items = []
    for path in split_files(root):
        for i, rec in enumerate(read_records(path)):
            answer = str(_field(rec, ("answer",), str(path)))
            if "####" not in answer:
                raise UsageError(f"{path}:{i + 1}: answer has no '#### <number>' line")
            gold = answer.split("####")[-1].strip().replace(",", "")
            items.append(Item("gsm8k", str(i), MATH, rec["question"], gold))
    return items


# -- KOR-Bench -------------------------------------------------------------------------------


def _one(root: Path, stem: str) -> Path:
    for suffix in (".jsonl", ".json"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise UsageError(f"KOR-Bench: missing {root / stem}.jsonl")


def load_kor_bench(root: Path, seed: int) -> list[Item]:
    """KOR-Bench: `<category>/sample.jsonl` questions with rules from `<category>/rule.jsonl`."""
    if (root / "data").is_dir() and not (root / "cipher").is_dir():
        root = root / "data"  # a clone of the KOR-Bench repository
    items = []
    for category in KOR_CATEGORIES:
        folder = root / category
        if not folder.is_dir():
            raise UsageError(f"KOR-Bench: missing category directory {folder}")
        rules = {str(r["idx"]): r for r in read_records(_one(folder, "rule"))}
        for rec in read_records(_one(folder, "sample")):
            rule_id = str(rec["rule_id"])
            if rule_id not in rules:
                raise UsageError(f"{folder}: question {rec['idx']} names unknown rule {rule_id}")
            items.append(
                Item(
                    "kor_bench",
                    f"{category}/{rec['idx']}",
                    KOR,
                    rec["question"],
                    str(rec["answer"]),
                    category=category,
                    extra={"rule": rules[rule_id]["rule_content"], "rule_id": rule_id},
                )
            )
    return items


# -- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """How to find and read one benchmark."""

    name: str
    """Name used on the command line and in reports."""
    kind: str
    """`choice`, `math` or `kor`."""
    aliases: tuple[str, ...]
    """Directory names under --data-dir that hold it."""
    loader: Callable[[Path, int], list[Item]]
    """Reads the directory (or, for GPQA, the file) into items."""
    title: str
    """Display name in tables and plots."""


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("mmlu", CHOICE, ("mmlu",), load_mmlu, "MMLU"),
        Benchmark("mmlu_pro", CHOICE, ("mmlu_pro", "mmlupro"), load_mmlu_pro, "MMLU-Pro"),
        Benchmark("gpqa", CHOICE, ("gpqa",), load_gpqa, "GPQA"),
        Benchmark("kor_bench", KOR, ("kor_bench", "korbench"), load_kor_bench, "KOR-Bench"),
        Benchmark("math500", MATH, ("math500",), _math_loader("math500"), "MATH-500"),
        Benchmark("amc23", MATH, ("amc23", "amc2023"), _math_loader("amc23"), "AMC23"),
        Benchmark("aime24", MATH, ("aime24", "aime2024"), _math_loader("aime24"), "AIME24"),
        Benchmark("aime25", MATH, ("aime25", "aime2025"), _math_loader("aime25"), "AIME25"),
        Benchmark("gsm8k", MATH, ("gsm8k",), load_gsm8k, "GSM8K"),
    )
}

PAPER_BENCHMARKS = ("mmlu", "mmlu_pro", "gpqa", "kor_bench", "math500", "amc23", "aime24", "aime25")
"""The benchmarks of the RLPT paper that `rlpt eval` runs by default."""


def load_benchmark(
    name: str,
    data_dir: Path | None,
    *,
    gpqa_csv: Path | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[Item]:
    """Items of benchmark `name` from `data_dir` (GPQA: from `gpqa_csv` if given)."""
    if name not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    if name == "gpqa":
        source = gpqa_file(data_dir, gpqa_csv)
    else:
        if data_dir is None:
            raise UsageError(f"{name} needs --data-dir")
        source = find_dir(data_dir, bench.aliases)
    items = bench.loader(source, seed)
    if not items:
        raise UsageError(f"{name}: no questions found in {source}")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{name}: duplicate question ids in {source}")
    return _spread(items, limit)
