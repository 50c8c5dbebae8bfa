"""Score completions against gold answers and aggregate them into benchmark metrics."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from megatron_rlpt.eval.extract import extract_choice
from megatron_rlpt.eval.items import CHOICE, KOR, MATH, Item
from megatron_rlpt.eval.kor import check_kor
from megatron_rlpt.eval.math_check import MathChecker
from megatron_rlpt.eval.passk import mean_pass_at_k, valid_ks


@dataclass
class Judgement:
    """The verdict on one completion."""

    correct: bool
    """Whether the extracted answer matches the gold answer."""
    extracted: str | None
    """The answer found in the completion; None when none was found."""


def judge(item: Item, text: str, math_checker: MathChecker | None = None) -> Judgement:
    """Check one completion of `item`."""
    if item.kind == CHOICE:
        letter = extract_choice(text, len(item.choices))
        return Judgement(letter == item.answer, letter)
    if item.kind == MATH:
        result = (math_checker or MathChecker())(text, item.answer)
        return Judgement(result.correct, result.extracted)
    if item.kind == KOR:
        correct, extracted = check_kor(text, item.answer, item.category, item.extra["rule_id"])
        return Judgement(correct, extracted)
    raise ValueError(f"unknown item kind {item.kind!r}")


def _judge_chunk(chunk: list[tuple[Item, list[str]]]) -> list[list[Judgement]]:
    checker = MathChecker()
    return [[judge(item, text, checker) for text in texts] for item, texts in chunk]


def judge_all(
    items: Sequence[Item],
    texts: Sequence[Sequence[str]],
    *,
    workers: int = 1,
    desc: str = "scoring",
) -> list[list[Judgement]]:
    """Judge every completion; `texts[i]` are the completions of `items[i]`.

    With `workers` > 1 the items are split over that many processes (Math-Verify is the slow
    part); each process keeps its own answer cache.
    """
    if len(items) != len(texts):
        raise ValueError(f"{len(items)} items but {len(texts)} completion lists")
    pairs = [(item, list(t)) for item, t in zip(items, texts)]
    if workers <= 1 or len(pairs) < 2 * workers:
        checker = MathChecker()
        return [
            [judge(item, text, checker) for text in t]
            for item, t in tqdm(pairs, desc=desc, unit="q", leave=False)
        ]
    size = max(1, len(pairs) // (workers * 8))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        results = list(
            tqdm(pool.map(_judge_chunk, chunks), total=len(chunks), desc=desc, leave=False)
        )
    return [row for chunk in results for row in chunk]


def summarize(
    items: Sequence[Item], judgements: Sequence[Sequence[Judgement]], ks: Sequence[int]
) -> dict[str, Any]:
    """Scores of one benchmark: pass@1 (= accuracy) and pass@k for each k <= samples per item,
    overall and per category, plus the share of completions with no answer found."""
    if not items:
        raise ValueError("no items to summarize")
    n = len(judgements[0])
    if any(len(row) != n for row in judgements):
        raise ValueError("every item needs the same number of samples")
    ks = valid_ks(ks, n)
    counts = [(n, sum(j.correct for j in row)) for row in judgements]

    def scores(idx: list[int]) -> dict[str, float]:
        sub = [counts[i] for i in idx]
        return {f"pass@{k}": mean_pass_at_k(sub, k) for k in ks}

    by_category: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        if item.category:
            by_category[item.category].append(i)
    total = len(items) * n
    return {
        "n_items": len(items),
        "n_samples": n,
        "scores": scores(list(range(len(items)))),
        "no_answer_rate": sum(j.extracted is None for row in judgements for j in row) / total,
        "categories": {
            name: {"n_items": len(idx), **scores(idx)} for name, idx in sorted(by_category.items())
        },
    }
