#!/usr/bin/env python
"""Run the benchmarks and write their figures into docs/performance.md.

    python benchmarks/run_all.py [--only judge,rollout] [--reuse]

Each benchmark writes `benchmarks/results/NAME.json`; the report's generated blocks (between
`<!-- generated:NAME -->` and `<!-- /generated:NAME -->`) are rewritten from those files, with
the machine and versions in the `environment` block. Prose outside the blocks is kept.
`--reuse` renders from stored JSON without running; a benchmark with no JSON keeps its block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT = REPO / "docs" / "performance.md"
BENCHMARKS = {
    "prepare": ["benchmarks/prepare_throughput.py"],
    "logprob": ["benchmarks/logprob_memory.py"],
    "judge": ["benchmarks/judge_throughput.py"],
    "rollout": ["benchmarks/rollout_vs_train.py"],
}


def environment() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 2**20

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
            f"torch {version('torch')}, megatron-core {version('megatron-core')}, aiohttp "
            f"{version('aiohttp')}; no GPU; measured {time.strftime('%Y-%m-%d')}")


def render_judge(r: dict) -> str:
    lines = ["| server service time | server's own (req/s) | HTTPJudge (req/s) | "
             "HTTPJudge / server | load avg |", "|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['latency_ms']:.0f} ms | {row['server_rps']:.0f} | "
                     f"{row['judge_rps']:.0f} | **{row['ratio']:.2f}** | "
                     f"{row['load_avg_start']:.1f} |")
    return "\n".join(lines) + f"\n\n{r['concurrency']} requests in flight, {r['rows'][0]['requests']} requests per run."


def render_rollout(r: dict) -> str:
    return "\n".join([
        "| | per token | tokens | share of step time |", "|---|---:|---:|---:|",
        f"| rollout (generated tokens) | {r['rollout_ms_per_token']:.2f} ms | "
        f"{r['generated_tokens']:.0f} | {r['share_rollout']:.0%} |",
        f"| training (trained response tokens) | {r['train_ms_per_token']:.2f} ms | "
        f"{r['trained_tokens']:.0f} | {r['share_train']:.0%} |",
        f"| judging not hidden behind generation | | | {r['share_judge']:.0%} |",
        "", f"**rollout / training per token: {r['rollout_over_train_per_token']:.2f}** over "
        f"{r['steps']} RLPT steps of {r['model']}; load average {r['load_avg_start']:.1f}."])


def render_logprob(r: dict) -> str:
    gib = 2**30
    lines = ["| input | naive | chunked | chunked / naive |", "|---|---:|---:|---:|"]
    for name, row in r.get("fake", r).items():
        if isinstance(row, dict) and "naive" in row and "chunked" in row:
            lines.append(f"| {name} | {row['naive'] / gib:.3f} GiB | {row['chunked'] / gib:.3f} "
                         f"GiB | **{row['chunked'] / row['naive']:.3f}** |")
    return "\n".join(lines)


def render_prepare(r: dict) -> str:
    return (f"full pipeline / tokenize-and-index per core: "
            f"**{r['ratio_full_vs_baseline_per_core']:.2f}**; 2 workers / 1 worker wall-clock "
            f"speed-up: **{r['speedup_2_vs_1_workers_wall']:.2f}** (CPU cost ratio "
            f"{r['cpu_overhead_2_vs_1_workers']:.2f}).")


RENDER = {"judge": render_judge, "rollout": render_rollout, "logprob": render_logprob,
          "prepare": render_prepare}


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{REPORT} has no generated block for {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--reuse", action="store_true", help="render stored results only")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        for name in names:
            out = RESULTS / f"{name}.json"
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, *BENCHMARKS[name], "--json", str(out)], cwd=REPO,
                           check=True)
    from megatron_rlpt.utils.io import atomic_write_text

    text = replace_block(REPORT.read_text(), "environment", environment())
    for name in BENCHMARKS:
        path = RESULTS / f"{name}.json"
        if path.is_file():
            text = replace_block(text, name, RENDER[name](json.loads(path.read_text())))
    atomic_write_text(REPORT, text)
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
