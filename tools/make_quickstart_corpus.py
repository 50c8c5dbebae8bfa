"""Regenerate the quickstart corpus shipped in megatron_rlpt/assets/quickstart/corpus.jsonl."""

from __future__ import annotations

import argparse
import json

from megatron_rlpt.quickstart import CORPUS
from megatron_rlpt.synthetic import cycling_corpus
from megatron_rlpt.utils.io import atomic_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with atomic_open(CORPUS, "w", encoding="utf-8") as f:
        for record in cycling_corpus(args.documents, args.seed):
            f.write(json.dumps(record) + "\n")
    print(f"wrote {args.documents} documents to {CORPUS}")


if __name__ == "__main__":
    main()
