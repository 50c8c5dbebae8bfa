#!/usr/bin/env python
"""Print triples of an `rlpt prepare` output as text.

    python tools/inspect_dataset.py DIR                 # summary and the first 3 triples
    python tools/inspect_dataset.py DIR -i 10 -i 42 -k 2
    python tools/inspect_dataset.py DIR --random 5 --seed 0 --ids --json

For each triple: the context (left-truncated as stored), the target s_i, the next segment and
the judge reference (s_i and k further segments), plus token counts; `--ids` adds the token
ids and `--check` verifies that every triple's ids decode to its text.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap


def _show(label: str, text: str, width: int, limit: int) -> str:
    if limit and len(text) > limit:
        text = "…" + text[-limit:] if label == "context" else text[:limit] + "…"
    body = textwrap.indent(text, "    ")
    return f"  {label}:\n{body}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print triples of an rlpt prepare output.")
    parser.add_argument("path", help="the --output directory of rlpt prepare")
    parser.add_argument("-i", "--index", type=int, action="append", default=[],
                        help="triple index (repeatable; default: the first --count)")
    parser.add_argument("-n", "--count", type=int, default=3)
    parser.add_argument("--random", type=int, default=0, metavar="N",
                        help="N triples drawn at random (with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", "--reference-segments", type=int, default=None,
                        help="segments after s_i in the reference (default: the manifest's)")
    parser.add_argument("--max-chars", type=int, default=1500,
                        help="clip each text to this many characters (0: no clipping)")
    parser.add_argument("--ids", action="store_true", help="print token ids too")
    parser.add_argument("--json", action="store_true", help="one JSON object per triple")
    parser.add_argument("--check", action="store_true",
                        help="decode every triple and compare with its text; exit 1 on mismatch")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer for --check (default: the one in the manifest)")
    args = parser.parse_args(argv)

    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.errors import UsageError

    try:
        ds = TripleDataset(args.path)
    except (UsageError, FileNotFoundError) as err:
        print(f"inspect_dataset: error: {err}", file=sys.stderr)
        return 2
    if args.check:
        from megatron_rlpt.data.tokenizer import load_tokenizer
        from megatron_rlpt.data.triples import TokenCodec

        codec = TokenCodec(load_tokenizer(args.tokenizer or ds.manifest["tokenizer"]["path"]))
        bad = 0
        for item in ds:
            for ids, text in ((item.context_ids, item.context), (item.target_ids, item.target),
                              (item.next_ids, item.next)):
                if codec.decode(ids) != text:
                    bad += 1
        print(f"{len(ds)} triples checked, {bad} sequences differ from their text")
        return 1 if bad else 0
    if args.random:
        indices = [int(i) for i in ds.sample_indices(min(args.random, len(ds)), args.seed)]
    else:
        indices = args.index or list(range(min(args.count, len(ds))))
    if not args.json:
        d = ds.manifest["documents"]
        w = ds.manifest["stages"]["write"]
        print(f"{args.path}: {len(ds)} triples from {w['documents']} documents "
              f"({d['in']} read, {d['in'] - d['out']} dropped: "
              f"{', '.join(f'{k} {v}' for k, v in d['dropped'].items()) or 'none'}), "
              f"{w['tokens']} tokens")
    for i in indices:
        if not 0 <= i < len(ds):
            print(f"inspect_dataset: error: index {i} out of range 0..{len(ds) - 1}",
                  file=sys.stderr)
            return 2
        item = ds[i]
        ref = ds.reference(i, args.reference_segments)
        if args.json:
            obj = {"index": i, "document": item.document, "target_segment": item.target_segment,
                   "context": item.context, "target": item.target, "next": item.next,
                   "reference": ref, "tokens": [len(item.context_ids), len(item.target_ids),
                                                len(item.next_ids)]}
            if args.ids:
                obj["ids"] = [item.context_ids.tolist(), item.target_ids.tolist(),
                              item.next_ids.tolist()]
            print(json.dumps(obj, ensure_ascii=False))
            continue
        print(f"\n#{i}  document {item.document}, segment {item.target_segment}  "
              f"tokens: context {len(item.context_ids)}, target {len(item.target_ids)}, "
              f"next {len(item.next_ids)}")
        print(_show("context", item.context, 100, args.max_chars))
        print(_show("target", item.target, 100, args.max_chars))
        print(_show("next", item.next, 100, args.max_chars))
        print(_show("reference", ref, 100, args.max_chars))
        if args.ids:
            print(f"  ids: {item.context_ids.tolist()} | {item.target_ids.tolist()} | "
                  f"{item.next_ids.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
