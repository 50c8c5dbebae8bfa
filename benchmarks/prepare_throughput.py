#!/usr/bin/env python
"""Throughput of `rlpt prepare`: the full pipeline against tokenize-and-index only, and 1 against
2 workers, in MB of input per second (per core).

    python benchmarks/prepare_throughput.py [--shared-data ../shared/data] [--repeat 1]
        [--corpus openstax_calculus.jsonl,...] [--json benchmarks/results/prepare.json]

Corpus: the four OpenStax JSONL files of the shared data (about 9 MB), or those named by
`--corpus` (one book keeps a run on a busy machine short). The full pipeline runs
with its default settings except `triples.max_context_tokens` (512 here, to keep the output
small) and decontaminates against MATH-500 and GSM8K. The baseline is what Megatron-LM's
`preprocess_data.py` does: read JSONL, tokenize each document, append eos, write an
`IndexedDataset`. Imports and tokenizer loading are done before timing.

Throughput per core is MB of input per CPU-second (this process plus its workers), which other
load on a shared machine does not distort; wall-clock MB/s is reported beside it. Prints the
ratios it is judged by: full / baseline throughput per core, and the 2-worker / 1-worker
wall-clock speed-up (with the CPU cost of the second worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CORPUS = ["openstax_university_physics.jsonl", "openstax_calculus.jsonl",
          "openstax_chemistry_2e.jsonl", "openstax_statistics_neardup.jsonl"]


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(fn, *args):
    wall, cpu = time.perf_counter(), _cpu()
    out = fn(*args)
    return time.perf_counter() - wall, _cpu() - cpu, out


def baseline(paths: list[Path], out: Path) -> None:
    """Tokenize-and-index only."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_rlpt.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    backend = tok.backend_tokenizer
    builder = IndexedDatasetBuilder(str(out / "base.bin"), dtype=DType.optimal_dtype(len(tok)))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            batch: list[str] = []
            for line in f:
                batch.append(json.loads(line)["text"])
                if len(batch) == 64:
                    _add(builder, backend, batch, tok.eos_token_id, np)
                    batch = []
            _add(builder, backend, batch, tok.eos_token_id, np)
    builder.finalize(str(out / "base.idx"))


def _add(builder, backend, batch, eos, np) -> None:
    for enc in backend.encode_batch(batch, add_special_tokens=False):
        ids = np.asarray(enc.ids + [eos], dtype=np.int64)
        builder.add_document(ids, lengths=[len(ids)])


def full(paths: list[Path], out: Path, workers: int, bench: list[Path]) -> dict:
    from megatron_rlpt.data.config import PrepareConfig
    from megatron_rlpt.data.pipeline import prepare

    cfg = PrepareConfig()
    cfg.triples.max_context_tokens = 512
    cfg.decontaminate.benchmarks = [str(b) for b in bench]
    result = prepare([str(p) for p in paths], out / f"full{workers}", cfg=cfg, workers=workers,
                     progress=False)
    return result.manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting (best is kept)")
    parser.add_argument("--corpus", default=",".join(CORPUS),
                        help="comma-separated files of <shared-data>/corpus (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    files = [name.strip() for name in args.corpus.split(",") if name.strip()]
    paths = [args.shared_data / "corpus" / name for name in files]
    bench = [args.shared_data / "benchmarks/math500/test.jsonl",
             args.shared_data / "benchmarks/gsm8k/test.jsonl"]
    missing = [str(p) for p in paths + bench if not p.is_file()]
    if missing:
        print(f"prepare_throughput: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    mb = sum(p.stat().st_size for p in paths) / 1e6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import megatron.core.datasets.indexed_dataset  # noqa: F401  (import outside the timing)

    from megatron_rlpt.data.tokenizer import load_tokenizer

    load_tokenizer()  # warm the transformers import outside the timing
    tmp = Path(tempfile.mkdtemp(prefix="rlpt-bench-"))
    runs: dict[str, tuple[float, float]] = {}
    manifest = None
    try:
        for _ in range(args.repeat):
            wall, cpu, _ = _timed(baseline, paths, tmp)
            runs["base"] = min(runs.get("base", (wall, cpu)), (wall, cpu))
            for workers in (1, 2):
                wall, cpu, manifest = _timed(full, paths, tmp, workers, bench)
                shutil.rmtree(tmp / f"full{workers}", ignore_errors=True)
                runs[str(workers)] = min(runs.get(str(workers), (wall, cpu)), (wall, cpu))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def entry(key: str, cores: int) -> dict:
        wall, cpu = runs[key]
        return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "mb_per_s": round(mb / wall, 3),
                "mb_per_s_per_core_wall": round(mb / wall / cores, 3),
                "mb_per_cpu_s": round(mb / cpu, 3)}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {
        "files": files,
        "input_mb": round(mb, 2),
        "documents": manifest["documents"]["in"] if manifest else None,
        "cpu_count": os.cpu_count(),
        "load_average_1min_after": round(load, 2) if load is not None else None,
        "python": platform.python_version(),
        "baseline_tokenize_index": entry("base", 1),
        "full_1_worker": entry("1", 1),
        "full_2_workers": entry("2", 2),
        # per core: MB per CPU-second, which other load on the machine does not distort
        "ratio_full_vs_baseline_per_core": round(runs["base"][1] / runs["1"][1], 3),
        "speedup_2_vs_1_workers_wall": round(runs["1"][0] / runs["2"][0], 3),
        "cpu_overhead_2_vs_1_workers": round(runs["2"][1] / runs["1"][1], 3),
        "triples": manifest["stages"]["write"]["triples"] if manifest else None,
        "tokens": manifest["stages"]["write"]["tokens"] if manifest else None,
    }
    print(json.dumps(results, indent=2))
    print(f"full pipeline / tokenize-and-index throughput per core: "
          f"{results['ratio_full_vs_baseline_per_core']:.3f}")
    print(f"2 workers / 1 worker speed-up (wall): {results['speedup_2_vs_1_workers_wall']:.3f}; "
          f"CPU cost ratio: {results['cpu_overhead_2_vs_1_workers']:.3f}")
    if args.json:
        from megatron_rlpt.utils.io import atomic_write_json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
