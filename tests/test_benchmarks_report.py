"""benchmarks/run_all.py renders every figure of docs/performance.md from the benchmarks' JSON.

Fixture results (tests/fixtures/benchmarks/*.json, in the formats the benchmark scripts write)
render into every block with non-empty tables; results missing the expected keys or the
provenance stamp are refused rather than rendered as an empty block; the prose outside the
generated blocks carries no figures; and the committed report is what the committed results
render to.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re

import pytest

from tests.multirank import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "benchmarks"
REPORT = REPO_ROOT / "docs" / "performance.md"
BLOCK = re.compile(r"<!-- generated:(\w+) -->\n(.*?)<!-- /generated:\1 -->", re.DOTALL)


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO_ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_all():
    return _run_all()


@pytest.fixture
def fixtures(run_all) -> dict[str, dict]:
    return run_all.load_results(FIXTURES)


def _table_rows(body: str) -> list[list[str]]:
    """Data rows of every Markdown table in `body` (header and separator excluded)."""
    rows, lines = [], body.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:|]+\|$", lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in lines[j].strip("|").split("|")])
                j += 1
    return rows


def test_fixtures_cover_every_benchmark(run_all, fixtures):
    assert sorted(fixtures) == sorted(run_all.BENCHMARKS)


def test_every_block_renders_from_fixtures_with_rows(run_all, fixtures):
    out = run_all.render_report(REPORT.read_text(), fixtures)
    blocks = dict(BLOCK.findall(out))
    assert sorted(blocks) == sorted([*run_all.BENCHMARKS, "environment"])
    assert "Test CPU, 2 cores, 24 GiB" in blocks["environment"]
    for name in run_all.BENCHMARKS:
        body = blocks[name]
        assert _table_rows(body), f"block {name} has no table rows:\n{body}"
        assert all(any(cell for cell in row) for row in _table_rows(body)), name
        assert "Measured by `python benchmarks/" in body and "2 CPUs, load average 1.2" in body
    # Figures from each fixture, where the report puts them.
    assert "| logits `[tokens, vocab]` | 13.909 GiB | 0.290 GiB | **0.021** |" in blocks["logprob"]
    assert "1.8e-06" in blocks["logprob"] and "(equal)" in blocks["logprob"]
    assert "Largest chunk of the sweep within the target in both settings: 512" in blocks["logprob"]
    assert "| full pipeline, 1 worker | 20.1 | 9.5 | 0.101 | 0.215 |" in blocks["prepare"]
    assert "**full / tokenize-and-index per core: 0.23**" in blocks["prepare"]
    assert "14,321 triples" in blocks["prepare"] and "200 documents" in blocks["prepare"]
    assert "**rollout / training per token: 0.68**" in blocks["rollout"]
    assert "| 1234 (the test's) | 0.263 | 0.568 | **+0.305** |" in blocks["quickstart_seeds"]
    assert "mean − 2 standard deviations: **+0.236**" in blocks["quickstart_seeds"]
    assert "about 2.3% under a normal fit" in blocks["quickstart_seeds"]
    assert "| large corpus | 100,000,000 | 190.7 MiB | 612.8 MiB |" in blocks["pretrain_rss"]
    assert "**Peak RSS growth / `.bin` bytes: 0.0264** (5.0 MiB" in blocks["pretrain_rss"]


def test_judge_block_says_what_the_client_costs(run_all, fixtures):
    body = run_all.render_judge(fixtures["judge"])
    # 64 in flight: 64 / 1103.2 req/s = 58.0 ms per request, 64 / 974.4 = 65.7 ms.
    assert "| 50 ms | 1103 | 974 | **0.88** | 58.0 / 65.7 ms | +7.7 ms |" in body
    assert "at 50 ms the client kept 0.88 of the server's throughput, 7.7 ms more" in body
    assert "no measurable" not in body


@pytest.mark.parametrize("name, breakage", [
    ("logprob", lambda r: r.update(fake=r.pop("full_size"))),  # the old key
    ("logprob", lambda r: r.update(full_size={})),
    ("judge", lambda r: r.update(rows=[])),
    ("quickstart_seeds", lambda r: r.update(seeds=[])),
    ("prepare", lambda r: [r.pop(k) for k in ("baseline_tokenize_index", "full_1_worker",
                                                "full_2_workers")]),
    ("rollout", lambda r: r.pop("meta")),
    ("pretrain_rss", lambda r: r.update(runs={})),
])
def test_results_that_would_render_an_empty_block_are_refused(run_all, fixtures, name, breakage):
    broken = copy.deepcopy(fixtures)
    breakage(broken[name])
    with pytest.raises((KeyError, ValueError)):
        run_all.render_report(REPORT.read_text(), broken)


def test_every_benchmark_needs_results_and_a_block(run_all, fixtures):
    del fixtures["judge"]
    with pytest.raises(SystemExit, match="no results for judge"):
        run_all.render_report(REPORT.read_text(), fixtures)
    with pytest.raises(SystemExit):
        run_all.replace_block("no blocks here", "judge", "x")


def test_blocks_are_replaced_and_prose_is_kept(run_all):
    text = "intro\n<!-- generated:judge -->\nold\n<!-- /generated:judge -->\noutro\n"
    out = run_all.replace_block(text, "judge", "new")
    assert out == "intro\n<!-- generated:judge -->\nnew\n<!-- /generated:judge -->\noutro\n"


def _prose(text: str) -> str:
    """The report without its generated blocks, code blocks and inline code."""
    text = BLOCK.sub("", text)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    return re.sub(r"`[^`]*`", "", text)


# A standalone number: not part of a word (bf16, Qwen3, GSM8K) or of a name like MATH-500.
NUMBER = re.compile(r"(?<![\w.\-])\d[\d,.]*(?!\w)")


def test_prose_carries_no_figures():
    found = [(line, NUMBER.findall(line)) for line in _prose(REPORT.read_text()).splitlines()
             if NUMBER.search(line)]
    assert not found, f"figures outside the generated blocks: {found}"
    assert NUMBER.search(_prose("the ratio was 0.88 on 2 cores"))  # the check can fail


def test_committed_report_is_rendered_from_committed_results(run_all):
    """Hand edits inside a block, or results committed without re-rendering, fail here."""
    results = run_all.load_results()
    assert sorted(results) == sorted(run_all.BENCHMARKS), "benchmarks/results/ lacks some JSON"
    for name, r in results.items():
        assert json.dumps(r["meta"]), name
    text = REPORT.read_text()
    assert run_all.render_report(text, results) == text, "run: python benchmarks/run_all.py --reuse"
