"""Run benchmarks through any rollout engine and collect scores.

    items = load_items(config)                 # fails fast on missing data, before any model
    results = evaluate(engine, items, config)   # generate, judge, aggregate, write outputs

The engine is anything with `generate(prompts, n, sampling)` (see `megatron_rlpt.rollout.base`):
vLLM, the in-process HF engine, or a scripted engine in tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.eval.items import MATH, Item
from megatron_rlpt.eval.loaders import BENCHMARKS, PAPER_BENCHMARKS, load_benchmark
from megatron_rlpt.eval.prompts import build_prompt
from megatron_rlpt.eval.report import write_report
from megatron_rlpt.eval.scoring import judge_all, summarize
from megatron_rlpt.rollout.base import RolloutEngine, SamplingParams
from megatron_rlpt.utils.io import atomic_open

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """What to evaluate and how to sample. Defaults follow the RLPT paper's protocol."""

    benchmarks: list[str] = field(default_factory=lambda: list(PAPER_BENCHMARKS))
    """Benchmark names, run in this order (see `megatron_rlpt.eval.loaders.BENCHMARKS`)."""
    data_dir: str | None = None
    """Directory holding one sub-directory per benchmark."""
    gpqa_csv: str | None = None
    """GPQA's official CSV (e.g. gpqa_diamond.csv); default `<data_dir>/gpqa/`."""
    output_dir: str | None = None
    """Where results.json, results.md, results.png and samples/ go (`rlpt eval` default:
    rlpt_eval/<model directory name>)."""
    n: int = 64
    """Samples per question for the math benchmarks (pass@k is estimated from them)."""
    n_choice: int = 1
    """Samples per question for the accuracy benchmarks (multiple choice, KOR-Bench)."""
    ks: list[int] = field(default_factory=lambda: [1, 8])
    """k values reported as pass@k where k <= the samples per question; pass@1 always is."""
    temperature: float = 0.6
    """Sampling temperature; 0 is greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k filter; 0 disables it."""
    max_tokens: int = 32768
    """Most tokens generated per completion."""
    seed: int = 0
    """Seed for sampling and for GPQA's option order."""
    limit: int | None = None
    """Use only this many questions per benchmark, spread evenly over it (smoke runs)."""
    chat_template: bool = False
    """Wrap prompts in the tokenizer's chat template."""
    system_prompt: str | None = None
    """System message, when a chat template is used."""
    score_workers: int = 1
    """Processes for answer checking (Math-Verify is the slow part)."""

    def samples_for(self, kind: str) -> int:
        """Samples per question for a benchmark of this kind."""
        return self.n if kind == MATH else self.n_choice

    def validate(self) -> None:
        """Raise UsageError for settings that cannot work."""
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown or not self.benchmarks:
            raise UsageError(
                f"unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(BENCHMARKS)}"
            )
        for name in ("n", "n_choice", "max_tokens", "score_workers"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1")
        if not self.ks or any(k < 1 for k in self.ks):
            raise UsageError("ks must be positive integers")
        if not 0 < self.top_p <= 1 or self.temperature < 0 or self.top_k < 0:
            raise UsageError("need 0 < top_p <= 1, temperature >= 0 and top_k >= 0")
        if self.limit is not None and self.limit < 1:
            raise UsageError("limit must be positive")


def config_from_dict(data: dict[str, Any]) -> EvalConfig:
    """An EvalConfig from a mapping (e.g. parsed YAML); unknown keys are an error."""
    if not isinstance(data, dict):
        raise UsageError("an eval config must be a mapping of field names to values")
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UsageError(
            f"unknown eval config key(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    return EvalConfig(**data)


def load_config(path: str | Path) -> EvalConfig:
    """An EvalConfig from a YAML file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"cannot read eval config {path}: {err}") from err
    return config_from_dict(data)


def load_items(config: EvalConfig) -> dict[str, list[Item]]:
    """Every configured benchmark's items; raises UsageError naming the first missing file."""
    data_dir = Path(config.data_dir) if config.data_dir else None
    gpqa = Path(config.gpqa_csv) if config.gpqa_csv else None
    return {
        name: load_benchmark(name, data_dir, gpqa_csv=gpqa, seed=config.seed, limit=config.limit)
        for name in config.benchmarks
    }


def evaluate(
    engine: RolloutEngine,
    items: dict[str, list[Item]],
    config: EvalConfig,
    *,
    format_prompt: Callable[[str], str] | None = None,
    model: str = "",
    engine_name: str = "",
) -> dict[str, Any]:
    """Generate, judge and score every benchmark; write the outputs; return the results dict."""
    if not config.output_dir:
        raise ValueError("EvalConfig.output_dir is not set")
    out = Path(config.output_dir)
    sampling = SamplingParams(
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        seed=config.seed,
    )
    results: dict[str, Any] = {
        "model": model,
        "engine": engine_name or type(engine).__name__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "benchmarks": {},
    }
    for name, bench_items in items.items():
        bench = BENCHMARKS[name]
        n = config.samples_for(bench.kind)
        prompts = [build_prompt(item) for item in bench_items]
        if format_prompt is not None:
            prompts = [format_prompt(p) for p in prompts]
        logger.info("%s: %d questions x %d samples", name, len(prompts), n)
        completions = engine.generate(prompts, n, sampling)
        if len(completions) != len(prompts) or any(len(c) != n for c in completions):
            raise RuntimeError(f"{name}: the engine returned the wrong number of completions")
        texts = [[c.text for c in row] for row in completions]
        judgements = judge_all(
            bench_items, texts, workers=config.score_workers, desc=f"scoring {name}"
        )
        summary = summarize(bench_items, judgements, config.ks)
        results["benchmarks"][name] = {
            "title": bench.title,
            "kind": bench.kind,
            "primary": "pass@k" if bench.kind == MATH else "accuracy",
            **summary,
        }
        _write_samples(out, name, bench_items, prompts, completions, judgements)
        logger.info("%s: %s", name, summary["scores"])
    write_report(results, out)
    return results


def _write_samples(
    out: Path,
    name: str,
    items: list[Item],
    prompts: list[str],
    completions: list[list[Any]],
    judgements: list[list[Any]],
) -> None:
    """One line per sample in samples/<name>.jsonl; one line per question in prompts/<name>.jsonl."""
    with atomic_open(out / "samples" / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for item, row, verdicts in zip(items, completions, judgements):
            for s, (completion, verdict) in enumerate(zip(row, verdicts)):
                record = {
                    "benchmark": name,
                    "id": item.id,
                    "sample": s,
                    "category": item.category,
                    "gold": item.answer,
                    "extracted": verdict.extracted,
                    "correct": verdict.correct,
                    "finish_reason": completion.finish_reason,
                    "num_tokens": len(completion.token_ids),
                    "completion": completion.text,
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_open(out / "prompts" / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for item, prompt in zip(items, prompts):
            record = {"benchmark": name, "id": item.id, "gold": item.answer, "prompt": prompt}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
