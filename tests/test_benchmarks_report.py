"""benchmarks/run_all.py rewrites only its generated blocks, from the benchmarks' JSON."""

from __future__ import annotations

import importlib.util

import pytest

from tests.multirank import REPO_ROOT


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO_ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocks_are_rendered_from_results_and_prose_is_kept():
    run_all = _run_all()
    text = "intro\n<!-- generated:judge -->\nold\n<!-- /generated:judge -->\noutro\n"
    result = {"concurrency": 64, "rows": [{"latency_ms": 50.0, "requests": 100,
                                           "server_rps": 400.0, "judge_rps": 380.0,
                                           "ratio": 0.95, "load_avg_start": 0.5}]}
    out = run_all.replace_block(text, "judge", run_all.render_judge(result))
    assert out.startswith("intro\n") and out.endswith("outro\n") and "old" not in out
    assert "| 50 ms | 400 | 380 | **0.95** | 0.5 |" in out


def test_every_benchmark_has_a_block_in_the_report():
    run_all = _run_all()
    report = (REPO_ROOT / "docs" / "performance.md").read_text()
    for name in [*run_all.BENCHMARKS, "environment"]:
        assert f"<!-- generated:{name} -->" in report
    with pytest.raises(SystemExit):
        run_all.replace_block("no blocks here", "judge", "x")
