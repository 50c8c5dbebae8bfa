#!/usr/bin/env python
"""Run the benchmarks and write their figures into docs/performance.md.

    python benchmarks/run_all.py [--only judge,rollout] [--reuse] [--no-report]
        [--args 'rollout=--run runs/quickstart']

Each benchmark writes `benchmarks/results/NAME.json`, which this script stamps with how it was
measured (`meta`: command, commit, date, CPU count, load average at start and end, seconds,
versions). The report's generated blocks (between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->`) are rewritten from those files, each with its provenance line; prose
outside the blocks is kept and carries no figures (tests/test_benchmarks_report.py checks that).
`--reuse` renders from stored JSON without running; every block needs its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
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
    "quickstart_seeds": ["benchmarks/quickstart_seeds.py"],
    "pretrain_rss": ["benchmarks/pretrain_rss.py"],
}
GIB = 2**30
SIGMAS = 2  # the quickstart test's threshold: mean gain − SIGMAS sample standard deviations


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """CPU model, memory and the versions that matter, as recorded with each result."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 2**20
    return {"cpu": cpu, "memory_gib": f"{mem:.0f}", "python": platform.python_version(),
            "torch": _version("torch"), "megatron-core": _version("megatron-core"),
            "aiohttp": _version("aiohttp")}


def _commit() -> str:
    """HEAD, marked when the code a benchmark runs differs from it."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True)
    if git.returncode != 0:  # a snapshot outside git (git archive) names its commit itself
        return os.environ.get("RLPT_SOURCE_COMMIT", "unknown")
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks", "megatron_rlpt",
                            ":(exclude)benchmarks/results"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return git.stdout.strip() + (" with uncommitted changes" if dirty else "")


def run_benchmark(name: str, extra: list[str]) -> None:
    """Run one benchmark and stamp its JSON with how, when and under what load it was measured."""
    out = RESULTS / f"{name}.json"
    command = [*BENCHMARKS[name], *extra, "--json", str(out.relative_to(REPO))]
    meta = {"command": "python " + shlex.join(command),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *command], cwd=REPO, check=True)
    meta.update(load_avg_end=os.getloadavg()[0], seconds=round(time.perf_counter() - t0, 1),
                machine=machine())
    from megatron_rlpt.utils.io import atomic_write_json

    atomic_write_json(out, {**json.loads(out.read_text()), "meta": meta})


# -- rendering -----------------------------------------------------------------------------------


def table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a table without rows is an error, never an empty block."""
    if not rows:
        raise ValueError(f"table {header} has no rows: the results lack the expected keys")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def provenance(r: dict) -> str:
    m = r.get("meta")
    if not m:
        raise ValueError("results without `meta`: run the benchmark through benchmarks/run_all.py")
    return (f"Measured by `{m['command']}` (commit {m['commit']}) on {m['date']}: "
            f"{m['cpu_count']} CPUs, load average {m['load_avg_start']:.1f} at the start and "
            f"{m['load_avg_end']:.1f} at the end; took {m['seconds']:.0f} s.")


def render_environment(results: dict[str, dict]) -> str:
    seen: dict[str, list[str]] = {}
    for name, r in results.items():
        m = r["meta"].get("machine")
        line = (f"{m['cpu']}, {r['meta']['cpu_count']} cores, {m['memory_gib']} GiB; Python "
                f"{m['python']}, torch {m['torch']}, megatron-core {m['megatron-core']}, aiohttp "
                f"{m['aiohttp']}; no GPU" if m else
                f"{r['meta']['cpu_count']} cores; machine and versions not recorded")
        seen.setdefault(line, []).append(name)
    if len(seen) == 1:
        return next(iter(seen))
    return "\n".join(f"- {line} ({', '.join(names)})" for line, names in seen.items())


def _ms_per_request(rps: float, concurrency: int) -> float:
    return 1000 * concurrency / rps


def _spread(runs: list[float] | None) -> str:
    if not runs or len(runs) < 2:
        return "n/a"
    return f"±{50 * (max(runs) - min(runs)) / statistics.mean(runs):.0f}%"


def render_judge(r: dict) -> str:
    c = r["concurrency"]
    rows, reading = [], []
    for row in r["rows"]:
        server_ms = _ms_per_request(row["server_rps"], c)
        judge_ms = _ms_per_request(row["judge_rps"], c)
        rows.append([f"{row['latency_ms']:.0f} ms", f"{row['server_rps']:.0f}",
                     f"{row['judge_rps']:.0f}", f"**{row['ratio']:.2f}**",
                     f"{server_ms:.1f} / {judge_ms:.1f} ms", f"{judge_ms - server_ms:+.1f} ms",
                     f"{_spread(row.get('server_rps_runs'))} / "
                     f"{_spread(row.get('judge_rps_runs'))}"])
        if row["ratio"] < 1:
            reading.append(f"at {row['latency_ms']:.0f} ms the client kept {row['ratio']:.2f} of "
                           f"the server's throughput, {judge_ms - server_ms:.1f} ms more per "
                           f"request ({judge_ms:.1f} ms against {server_ms:.1f} ms)")
        else:
            reading.append(f"at {row['latency_ms']:.0f} ms the client matched or beat the bare "
                           f"load generator ({row['ratio']:.2f}): no cost shows above the noise")
    body = table(["server service time", "server's own (req/s)", "HTTPJudge (req/s)",
                  "HTTPJudge / server", "time per request, server / HTTPJudge",
                  "client adds", "run-to-run spread, server / HTTPJudge"],
                 ["---:"] * 7, rows)
    requests = r["rows"][0]["requests"]
    return (f"{body}\n\n{c} requests in flight, {requests} requests per run, best of "
            f"{len(r['rows'][0].get('server_rps_runs', [])) or 'several'} runs each. Reading: "
            + "; ".join(reading) + ".")


def render_rollout(r: dict) -> str:
    body = table(["", "per token", "tokens", "share of step time"],
                 ["---", "---:", "---:", "---:"], [
        ["rollout (generated tokens)", f"{r['rollout_ms_per_token']:.2f} ms",
         f"{r['generated_tokens']:.0f}", f"{r['share_rollout']:.0%}"],
        ["training (trained response tokens)", f"{r['train_ms_per_token']:.2f} ms",
         f"{r['trained_tokens']:.0f}", f"{r['share_train']:.0%}"],
        ["judging not hidden behind generation", "", "", f"{r['share_judge']:.0%}"]])
    source = (f" Read with `--run` from a quickstart run that finished {r['run_finished']}: the "
              "load average below is the reader's, not the run's." if "run_finished" in r else "")
    return (f"{body}\n\n**rollout / training per token: {r['rollout_over_train_per_token']:.2f}** "
            f"over {r['steps']} RLPT steps of {r['model']}.{source}")


def render_logprob(r: dict) -> str:
    a = r["args"]
    names = {"logits": "logits `[tokens, vocab]`",
             "fused": "hidden states + output weight (fused)"}
    rows = [[names.get(name, name), f"{row['naive'] / GIB:.3f} GiB",
             f"{row['chunked'] / GIB:.3f} GiB", f"**{row['chunked'] / row['naive']:.3f}**"]
            for name, row in r["full_size"].items()]
    out = [f"Vocabulary {a['vocab']:,}, {a['tokens']:,} tokens, {a['dtype']} inputs, chunk "
           f"{a['chunk']}, hidden {a['hidden']:,} (fused); peak tensor memory of log-probs + "
           "policy loss + backward, counted under `FakeTensorMode`:", "",
           table(["input", "naive (full fp32 log_softmax)", "chunked", "chunked / naive"],
                 ["---", "---:", "---:", "---:"], rows)]
    def meets(rows: dict) -> bool:
        return all(row["chunked"] / row["naive"] <= 0.10 for row in rows.values())

    out += ["", "Target chunked / naive ≤ 0.10: " + ", ".join(
        f"{name} {'meets it' if meets({name: row}) else 'misses it'}"
        for name, row in r["full_size"].items()) + "."]
    sweep = {int(c): rows for c, rows in r.get("full_size_by_chunk", {}).items()}
    if sweep:
        sweep[a["chunk"]] = r["full_size"]
        srows = [[str(c) + (" (default)" if c == a["chunk"] else "")]
                 + [f"{rows[n]['chunked'] / rows[n]['naive']:.3f}" for n in r["full_size"]]
                 for c, rows in sorted(sweep.items())]
        within = [c for c, rows in sweep.items() if meets(rows)]
        out += ["", table(["chunk", *[f"{n}: chunked / naive" for n in r["full_size"]]],
                          ["---:"] * (1 + len(r["full_size"])), srows), "",
                "Largest chunk of the sweep within the target in both settings: "
                + (f"{max(within)}" if within else "none") + f"; the run used {a['chunk']}."]
    real = r.get("real_check") or {}
    if real:
        n = a["diff_tokens"]
        rows = [[name, f"{x['max_err_logprob_chunked']:.1e}", f"{x['max_err_logprob_naive']:.1e}",
                 f"{x['max_err_grad_chunked']:.1e}", f"{x['max_err_grad_naive']:.1e}",
                 f"{x['max_diff_logprob']:.1e} / {x['max_diff_grad']:.1e}"]
                for name, x in real.items()]
        out += ["", f"Accuracy on a real {n}-token run (full vocabulary, fp32 inputs), max "
                "|error| against float64:", "",
                table(["input", "log-prob, chunked", "log-prob, naive", "gradient, chunked",
                       "gradient, naive", "chunked vs naive: log-prob / gradient"],
                      ["---"] + ["---:"] * 5, rows)]
        x = real.get("logits", {})
        if "fake_naive" in x:
            same = x["naive"] == x["fake_naive"] and x["chunked"] == x["fake_chunked"]
            out += ["", f"Tracker check at {n} tokens, real peaks against those counted under "
                    f"`FakeTensorMode`: naive {x['naive']:,} / {x['fake_naive']:,} B, chunked "
                    f"{x['chunked']:,} / {x['fake_chunked']:,} B"
                    + (" (equal)." if same else " (they differ).")]
    return "\n".join(out)


def render_prepare(r: dict) -> str:
    names = {"baseline_tokenize_index": "tokenize-and-index only",
             "full_1_worker": "full pipeline, 1 worker", "full_2_workers": "full pipeline, 2 workers"}
    rows = [[label, f"{r[key]['wall_s']:.1f}", f"{r[key]['cpu_s']:.1f}",
             f"{r[key]['mb_per_s']:.3f}", f"{r[key]['mb_per_cpu_s']:.3f}"]
            for key, label in names.items() if key in r]
    files = ", ".join(f"`{f}`" for f in r.get("files", [])) or "the four OpenStax books"
    documents = f", {r['documents']:,} documents" if r.get("documents") else ""
    return "\n".join([
        f"Input: {files} ({r['input_mb']:.2f} MB{documents}).", "",
        table(["run", "wall s", "CPU s", "MB/s (wall)", "MB per CPU-second"],
              ["---", "---:", "---:", "---:", "---:"], rows), "",
        f"- **full / tokenize-and-index per core: {r['ratio_full_vs_baseline_per_core']:.2f}** "
        f"(the full pipeline costs {1 / r['ratio_full_vs_baseline_per_core']:.1f}× the CPU of "
        "tokenizing and indexing alone).",
        f"- **2 workers / 1 worker: {r['speedup_2_vs_1_workers_wall']:.2f}× wall-clock**; the "
        f"second worker costs {r['cpu_overhead_2_vs_1_workers']:.2f}× the CPU of one.",
        f"- Output: {r['triples']:,} triples, {r['tokens'] / 1e6:.1f} M tokens."])


def quickstart_threshold(r: dict) -> float:
    return r["gain_mean"] - SIGMAS * r["gain_std"]


def _below_threshold_chance(n: int) -> str:
    """Chance that one more seed's gain falls below mean − SIGMAS·sd: normal, and predictive
    (Student's t with n − 1 degrees of freedom, the mean and sd being estimates from n seeds)."""
    normal = statistics.NormalDist().cdf(-SIGMAS)
    try:
        from scipy.stats import t
    except ImportError:  # scipy comes with the dev tools; without it, the normal figure only
        return f"{normal:.1%} under a normal fit"
    predictive = t.cdf(-SIGMAS / (1 + 1 / n) ** 0.5, n - 1)
    return (f"{normal:.1%} under a normal fit, {predictive:.1%} allowing for the mean and "
            f"standard deviation being estimated from {n} seeds (Student's t)")


def render_quickstart_seeds(r: dict) -> str:
    rows = [[str(s["seed"]) + (" (the test's)" if s["seed"] == r["warmup_seed"] else ""),
             f"{sum(s['rewards'][:4]) / 4:.3f}", f"{sum(s['rewards'][-4:]) / 4:.3f}",
             f"**{s['gain']:+.3f}**"] for s in r["seeds"]]
    return "\n".join([
        table(["RLPT seed", "reward, first 4 steps", "reward, last 4 steps", "gain"],
              ["---:"] * 4, rows), "",
        f"Gain over {r['n_seeds']} seeds: mean **{r['gain_mean']:+.3f}**, sample standard "
        f"deviation {r['gain_std']:.3f}, smallest {r['gain_min']:+.3f} (warm-up seed "
        f"{r['warmup_seed']} throughout). The test's threshold, mean − {SIGMAS} standard "
        f"deviations: **{quickstart_threshold(r):+.3f}**. A seed falls below it with a chance of "
        f"about {_below_threshold_chance(r['n_seeds'])}."])


def render_pretrain_rss(r: dict) -> str:
    mib = 2**20
    rows = [[label, f"{run['tokens']:,}", f"{run['bin_bytes'] / mib:.1f} MiB",
             f"{run['peak_rss_bytes'] / mib:.1f} MiB"]
            for key, label in (("small", "small corpus"), ("large", "large corpus"))
            if (run := r.get("runs", {}).get(key))]
    return "\n".join([
        table(["dataset", "tokens", "`.bin`", "peak RSS"], ["---", "---:", "---:", "---:"], rows),
        "",
        f"**Peak RSS growth / `.bin` bytes: {r['growth_over_bin_bytes']:.4f}** "
        f"({r['rss_growth_bytes'] / mib:.1f} MiB; target at most "
        f"{r['target_growth_over_bin_bytes']:.2f}: "
        f"{'met' if r['meets_target'] else 'not met'})."])


RENDER = {"judge": render_judge, "rollout": render_rollout, "logprob": render_logprob,
          "prepare": render_prepare, "quickstart_seeds": render_quickstart_seeds,
          "pretrain_rss": render_pretrain_rss}


def render(name: str, r: dict) -> str:
    return RENDER[name](r) + "\n\n" + provenance(r)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{REPORT} has no generated block for {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def render_report(text: str, results: dict[str, dict]) -> str:
    """`text` with every generated block rewritten from `results` (name → JSON)."""
    missing = sorted(set(BENCHMARKS) - set(results))
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)} in {RESULTS}")
    text = replace_block(text, "environment", render_environment(results))
    for name in BENCHMARKS:
        text = replace_block(text, name, render(name, results[name]))
    return text


def load_results(directory: Path = RESULTS) -> dict[str, dict]:
    return {name: json.loads((directory / f"{name}.json").read_text())
            for name in BENCHMARKS if (directory / f"{name}.json").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--reuse", action="store_true", help="render stored results only")
    parser.add_argument("--no-report", action="store_true",
                        help="run and stamp the results, leave docs/performance.md alone")
    parser.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                        help="extra arguments for one benchmark, e.g. 'rollout=--run DIR'")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    extra = {}
    for item in args.args:
        name, _, rest = item.partition("=")
        extra[name.strip()] = shlex.split(rest)
    unknown = sorted((set(names) | set(extra)) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        for name in names:
            print(f"== {name}", flush=True)
            run_benchmark(name, extra.get(name, []))
    if args.no_report:
        return
    from megatron_rlpt.utils.io import atomic_write_text

    atomic_write_text(REPORT, render_report(REPORT.read_text(), load_results()))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
