#!/usr/bin/env python
"""Thin wrapper over `rlpt prepare`, named like Megatron-LM's tools/preprocess_data.py.

    python tools/preprocess_data.py --input corpus/*.jsonl.zst --output data/prepared \\
        --tokenizer path/to/hf_tokenizer --decontaminate benchmarks/ --workers 16

Takes exactly the arguments of `rlpt prepare` (see `rlpt prepare --help` and docs/data.md).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from megatron_rlpt.cli import main as rlpt_main

    return rlpt_main(["prepare", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
