#!/usr/bin/env python3
"""Plan a cluster layout for a training config: `rlpt plan` as a script.

    python tools/plan_cluster.py --config examples/rlpt_qwen3_8b.yaml --nodes 16 --gpus-per-node 8

Takes the same arguments as `rlpt plan` (see `rlpt plan --help` and docs/cluster.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_rlpt.cli import main  # noqa: E402 - after the path set-up

if __name__ == "__main__":
    sys.exit(main(["plan", *sys.argv[1:]]))
