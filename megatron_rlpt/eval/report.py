"""Reports of evaluation results: JSON, a markdown table, a bar plot; and run comparisons."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.utils.io import atomic_open, atomic_write_json, atomic_write_text

MAX_CATEGORY_ROWS = 20
"""Per-category tables are written for benchmarks with at most this many categories."""


def _k(metric: str) -> int:
    return int(metric.split("@")[1])


def score_rows(results: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """(benchmark, title, metric, score in [0, 1]) rows: accuracy for choice benchmarks and
    KOR-Bench, every pass@k for math."""
    rows = []
    for name, bench in results["benchmarks"].items():
        scores = bench["scores"]
        if bench["primary"] == "accuracy":
            rows.append((name, bench["title"], "accuracy", scores["pass@1"]))
        else:
            for metric in sorted(scores, key=_k):
                rows.append((name, bench["title"], metric, scores[metric]))
    return rows


def pct(value: float) -> str:
    """A score as the paper prints it: percent with one decimal."""
    return f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The results as markdown: one row per benchmark metric, then per-category tables."""
    lines = [
        f"# Evaluation of {results.get('model') or 'model'}",
        "",
        f"Engine `{results.get('engine', '')}`; sampling: temperature "
        f"{results['config']['temperature']}, top-p {results['config']['top_p']}, "
        f"max tokens {results['config']['max_tokens']}. Scores in percent.",
        "",
        "| Benchmark | Metric | Score | Questions | Samples | No answer |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, title, metric, value in score_rows(results):
        bench = results["benchmarks"][name]
        lines.append(
            f"| {title} | {metric} | {pct(value)} | {bench['n_items']} | {bench['n_samples']} "
            f"| {pct(bench['no_answer_rate'])} |"
        )
    for bench in results["benchmarks"].values():
        categories = bench.get("categories") or {}
        if not categories or len(categories) > MAX_CATEGORY_ROWS:
            continue
        metrics = ["pass@1"] if bench["primary"] == "accuracy" else sorted(bench["scores"], key=_k)
        header = ["accuracy"] if bench["primary"] == "accuracy" else metrics
        lines += [
            "",
            f"## {bench['title']} by category",
            "",
            "| Category | Questions | " + " | ".join(header) + " |",
            "|---|---:|" + "---:|" * len(metrics),
        ]
        for cat, row in categories.items():
            values = " | ".join(pct(row[m]) for m in metrics)
            lines.append(f"| {cat} | {row['n_items']} | {values} |")
    return "\n".join(lines) + "\n"


def _bar_png(labels: list[str], series: dict[str, list[float | None]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width_in = min(16.0, max(6.0, 0.6 * len(labels) * max(1, len(series)) ** 0.5 + 2))
    fig = Figure(figsize=(width_in, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for s, (name, values) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(labels))]
        heights = [100 * v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(
                    pct(v),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def plot_results(results: dict[str, Any]) -> bytes:
    """A PNG bar chart of every row of the table."""
    rows = score_rows(results)
    labels = [f"{title}\n{metric}" for _, title, metric, _ in rows]
    series = {results.get("model") or "model": [value for *_, value in rows]}
    return _bar_png(labels, series, f"RLPT evaluation: {results.get('model') or 'model'}")


def write_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """results.json, results.md and results.png in `out_dir`."""
    out = Path(out_dir)
    # Not atomic_write_json: it sorts keys, and the benchmark order is the table's order.
    atomic_write_text(
        out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(out / "results.md", markdown_table(results))
    with atomic_open(out / "results.png", "wb") as f:
        f.write(plot_results(results))


# -- comparison ------------------------------------------------------------------------------


def load_results(path: str | Path) -> dict[str, Any]:
    """A run's results: its results.json, or the output directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UsageError(f"no results at {path}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from err
    if "benchmarks" not in results:
        raise UsageError(f"{path} is not an `rlpt eval` results file")
    return results


def compare(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Side-by-side scores of several runs; `delta` is each later run minus the first."""
    if len(runs) < 2 or len(runs) != len(labels):
        raise UsageError("compare needs at least two runs and one label per run")
    tables = [{(n, m): v for n, _, m, v in score_rows(run)} for run in runs]
    titles: dict[str, str] = {}  # benchmarks in first-seen order
    metrics: dict[str, set[str]] = {}
    for run in runs:
        for name, title, metric, _ in score_rows(run):
            titles.setdefault(name, title)
            metrics.setdefault(name, set()).add(metric)
    keys = [
        (name, title, metric)
        for name, title in titles.items()
        for metric in sorted(metrics[name], key=lambda m: -1 if m == "accuracy" else _k(m))
    ]
    rows = []
    for name, title, metric in keys:
        values = [table.get((name, metric)) for table in tables]
        deltas = [None if v is None or values[0] is None else v - values[0] for v in values[1:]]
        rows.append(
            {"benchmark": name, "title": title, "metric": metric, "scores": values, "delta": deltas}
        )
    return {"labels": list(labels), "models": [r.get("model", "") for r in runs], "rows": rows}


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.1f}" if signed else pct(value)


def comparison_markdown(table: dict[str, Any]) -> str:
    labels = table["labels"]
    deltas = [f"Δ {label} − {labels[0]}" for label in labels[1:]]
    head = ["Benchmark", "Metric", *labels, *deltas]
    lines = [
        f"# {' vs '.join(labels)}",
        "",
        "Scores in percent; Δ in points.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(labels) + len(deltas)),
    ]
    for row in table["rows"]:
        cells = [row["title"], row["metric"]]
        cells += [_cell(v) for v in row["scores"]]
        cells += [_cell(d, signed=True) for d in row["delta"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(
    runs: Sequence[dict[str, Any]], labels: Sequence[str], out_dir: str | Path
) -> dict[str, Any]:
    """comparison.json, comparison.md and comparison.png in `out_dir`."""
    table = compare(runs, labels)
    out = Path(out_dir)
    atomic_write_json(out / "comparison.json", table)
    atomic_write_text(out / "comparison.md", comparison_markdown(table))
    names = [f"{r['title']}\n{r['metric']}" for r in table["rows"]]
    series = {label: [r["scores"][i] for r in table["rows"]] for i, label in enumerate(labels)}
    with atomic_open(out / "comparison.png", "wb") as f:
        f.write(_bar_png(names, series, " vs ".join(labels)))
    return table
