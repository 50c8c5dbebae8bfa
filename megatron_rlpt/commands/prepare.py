"""`rlpt prepare`: raw corpus → cleaned, deduplicated, decontaminated triples (docs/data.md)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="turn a raw corpus into RLPT triples (Megatron IndexedDataset)",
        description=(
            "Read JSONL (.gz/.zst), Parquet or text; normalise and filter (optionally with "
            "a quality model, --quality-model); MinHash "
            "near-dedup; mask PII; remove benchmark overlap; split into sentences; write "
            "(context, target, next) triples as a Megatron IndexedDataset with exact texts, "
            "manifest.json and quarantine.jsonl. See docs/data.md."
        ),
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                   help="input files, directories or globs (read in the order given)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="output directory (written atomically; a previous output is replaced)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="Hugging Face tokenizer directory (default: the shipped 8k BPE)")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="PATH",
                   help="benchmark files or directories (JSONL/JSON/CSV/Parquet) to remove")
    p.add_argument("--quality-model", default=None, metavar="PATH_OR_URL",
                   help="score each document's educational value 0-5 with an instruction-tuned "
                        "model (a local HF directory, or the URL of an OpenAI-compatible or "
                        "SGLang server) and drop those below --quality-threshold")
    p.add_argument("--quality-threshold", type=float, default=None, metavar="SCORE",
                   help="keep documents scoring at least this (default: quality.threshold, 3)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (output is identical for any N; default 1)")
    p.add_argument("--config", default=None, metavar="prepare.yaml",
                   help="YAML with PrepareConfig fields (docs/data.md)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. --set dedup.threshold=0.85")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar even when stderr is not a terminal")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def _apply_overrides(cfg, overrides: list[str]):
    import yaml

    from megatron_rlpt.data.config import PrepareConfig, config_from_dict, config_to_dict
    from megatron_rlpt.errors import UsageError

    data = config_to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r} is not of the form key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise UsageError(f"--set {item!r}: unknown config section {part!r}")
            node = node[part]
        if leaf not in node:
            raise UsageError(f"--set {item!r}: unknown config key {key!r}")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return config_from_dict(PrepareConfig, data)


def run(args: argparse.Namespace) -> int:
    from megatron_rlpt.data.config import load_prepare_config, validate
    from megatron_rlpt.data.pipeline import prepare

    cfg = load_prepare_config(args.config)
    if args.overrides:
        cfg = _apply_overrides(cfg, args.overrides)
    cfg.decontaminate.benchmarks = list(cfg.decontaminate.benchmarks) + list(args.decontaminate)
    if args.quality_model:
        cfg.quality.model = args.quality_model
    if args.quality_threshold is not None:
        cfg.quality.threshold = args.quality_threshold
    validate(cfg)
    result = prepare(args.input, args.output, tokenizer=args.tokenizer, cfg=cfg,
                     workers=args.workers, progress=args.progress,
                     log=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {result.output}")
    if result.manifest["stages"]["write"]["triples"] == 0:
        print("rlpt prepare: warning: no triples were produced; see manifest.json and "
              "quarantine.jsonl", file=sys.stderr)
        return 1
    return 0
