"""Every benchmark reports exactly the accuracy / pass@k of an engine that answers a known subset.

`ScriptedEngine` is a `RolloutEngine` that knows the gold answers: for each question it decides,
from a hash of the prompt and the sample index, how many of its samples are right, and writes
right answers the way a model would (varied phrasings, `\\boxed{}`, `[[...]]`). The expected
scores are computed here from that plan with the closed-form pass@k, independently of the
harness's own scoring.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from megatron_rlpt.eval.extract import LETTERS
from megatron_rlpt.eval.harness import EvalConfig, evaluate, load_items
from megatron_rlpt.eval.items import CHOICE, MATH, Item
from megatron_rlpt.eval.prompts import build_prompt
from megatron_rlpt.rollout.base import Completion, RolloutEngine, SamplingParams

# puzzle/84's gold equation "2+2+3*4=28" is false, so its "right" answer can never score.
UNSCORABLE = {("kor_bench", "puzzle/84")}


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def correct_count(prompt: str, n: int) -> int:
    """How many of the n samples of this prompt the engine gets right (0..n, varied)."""
    return _h("count", prompt) % (n + 1)


def right_answer(item: Item, variant: int) -> str:
    if item.kind == CHOICE:
        forms = ["The answer is ({}).", "Answer: {}", "So the answer is $\\boxed{{{}}}$.", "{}"]
        return forms[variant % len(forms)].format(item.answer)
    if item.kind == MATH:
        return f"Working... hence the result is \\boxed{{{item.answer}}}."
    inner = item.answer[2:-2]
    rule = item.extra["rule_id"]
    if item.category == "puzzle" and rule in ("2", "4"):  # golds list every accepted answer
        inner = inner.replace(",", " ").split()[0]
    elif item.category == "puzzle" and rule == "10":
        inner = inner.split("\n")[0]
    return f"Applying the rule step by step gives [[{inner}]]"


def wrong_answer(item: Item, variant: int) -> str:
    if item.kind == CHOICE:
        others = [x for x in LETTERS[: len(item.choices)] if x != item.answer]
        if not others:  # five MMLU-Pro questions have a single option
            return "I am not sure."
        return f"The answer is ({others[variant % len(others)]})."
    if item.kind == MATH:
        wrong = str(int(item.answer) + 1) if item.answer.isdigit() else "987654321"
        return f"\\boxed{{{wrong}}}"
    return "[[987654321]]" if variant % 2 else "I cannot tell."


class ScriptedEngine:
    """Answers `correct_count(prompt, n)` of each prompt's samples right, the rest wrong."""

    def __init__(self, items: dict[str, list[Item]]) -> None:
        self.by_prompt = {build_prompt(i): i for bench in items.values() for i in bench}

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            item = self.by_prompt[prompt]
            right = correct_count(prompt, n)
            row = []
            for j in range(n):
                text = right_answer(item, j) if j < right else wrong_answer(item, j)
                row.append(Completion(text, list(range(len(text) % 7)), None, "stop"))
            out.append(row)
        return out

    def update_weights(self, weights: object) -> None:
        pass


def expected_scores(items: list[Item], n: int, ks: list[int]) -> dict[str, float]:
    counts = []
    for item in items:
        c = correct_count(build_prompt(item), n)
        if (item.benchmark, item.id) in UNSCORABLE:
            c = 0
        counts.append(c)
    return {
        f"pass@{k}": sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in counts) / len(counts)
        for k in ks
    }


@pytest.fixture(scope="module")
def scripted_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from .conftest import write_gpqa_csv

    tmp = tmp_path_factory.mktemp("scripted")
    config = EvalConfig(
        benchmarks=[
            "mmlu",
            "mmlu_pro",
            "gpqa",
            "kor_bench",
            "math500",
            "amc23",
            "aime24",
            "aime25",
            "gsm8k",
        ],
        data_dir=str(shared_data / "benchmarks"),
        gpqa_csv=str(write_gpqa_csv(tmp / "gpqa.csv")),
        output_dir=str(tmp / "out"),
        n=4,
        n_choice=2,
        ks=[1, 2, 4, 8],
    )
    items = load_items(config)
    engine = ScriptedEngine(items)
    assert isinstance(engine, RolloutEngine)
    results = evaluate(engine, items, config, model="scripted")
    return config, items, results


def test_every_benchmark_scores_exactly(scripted_run) -> None:
    config, items, results = scripted_run
    for name, bench_items in items.items():
        got = results["benchmarks"][name]
        n = config.samples_for(bench_items[0].kind)
        ks = [k for k in (1, 2, 4, 8) if k <= n]
        want = expected_scores(bench_items, n, ks)
        assert got["n_items"] == len(bench_items) and got["n_samples"] == n
        assert sorted(got["scores"]) == sorted(want), name
        for metric, value in want.items():
            assert got["scores"][metric] == pytest.approx(value, abs=1e-12), (name, metric)
        # The plan is neither all right nor all wrong, so the comparison has teeth.
        assert 0.2 < got["scores"]["pass@1"] < 0.8


def test_kor_categories_and_answer_rates(scripted_run) -> None:
    config, items, results = scripted_run
    kor = results["benchmarks"]["kor_bench"]
    assert set(kor["categories"]) == {"cipher", "counterfactual", "logic", "operation", "puzzle"}
    for category, row in kor["categories"].items():
        sub = [i for i in items["kor_bench"] if i.category == category]
        assert row["n_items"] == 250
        assert row["pass@1"] == pytest.approx(expected_scores(sub, 2, [1])["pass@1"], abs=1e-12)
    # Overall KOR-Bench accuracy is the mean over its 1,250 questions.
    overall = sum(r["pass@1"] * r["n_items"] for r in kor["categories"].values()) / 1250
    assert kor["scores"]["pass@1"] == pytest.approx(overall, abs=1e-12)
    # Wrong KOR replies alternate between "[[987654321]]" and no answer at all.
    assert 0 < kor["no_answer_rate"] < 0.5
    assert results["benchmarks"]["mmlu"]["no_answer_rate"] == 0.0


def test_samples_file_matches_scores(scripted_run) -> None:
    config, items, results = scripted_run
    out = Path(config.output_dir)
    for name in ("gpqa", "aime24"):
        rows = [json.loads(line) for line in open(out / "samples" / f"{name}.jsonl")]
        n = results["benchmarks"][name]["n_samples"]
        assert len(rows) == len(items[name]) * n
        accuracy = sum(r["correct"] for r in rows) / len(rows)
        assert accuracy == pytest.approx(results["benchmarks"][name]["scores"]["pass@1"])
        prompts = [json.loads(line) for line in open(out / "prompts" / f"{name}.jsonl")]
        assert [p["id"] for p in prompts] == [i.id for i in items[name]]
    assert json.loads((out / "results.json").read_text())["benchmarks"].keys() == items.keys()


def test_parallel_scoring_equals_serial(shared_data: Path) -> None:
    from megatron_rlpt.eval.loaders import load_benchmark
    from megatron_rlpt.eval.scoring import judge_all

    items = load_benchmark("math500", shared_data / "benchmarks", limit=24)
    items += load_benchmark("kor_bench", shared_data / "benchmarks", limit=10)
    texts = [[right_answer(i, 0), wrong_answer(i, 1)] for i in items]
    serial = judge_all(items, texts, workers=1)
    parallel = judge_all(items, texts, workers=2)
    assert parallel == serial
    assert [row[0].correct for row in serial] == [True] * len(items)
    assert not any(row[1].correct for row in serial)
