#!/usr/bin/env python3
"""Convert checkpoints between Hugging Face and Megatron; the same as `rlpt convert`.

    python tools/convert_checkpoint.py hf-to-megatron --hf HF_DIR --out CKPT_ROOT [--tp N --pp M]
    python tools/convert_checkpoint.py megatron-to-hf --ckpt CKPT_ROOT --out HF_DIR [--hf-template DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # the dist-checkpoint saver re-imports this file in a child process
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megatron_rlpt.cli import main

    sys.exit(main(["convert", *sys.argv[1:]]))
