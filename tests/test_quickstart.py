"""`rlpt quickstart` runs end to end on the CPU through the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _rlpt() -> list[str]:
    exe = shutil.which("rlpt") or str(Path(sys.executable).parent / "rlpt")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "megatron_rlpt.cli"]


def test_quickstart_trains_and_round_trips_a_checkpoint(tmp_path):
    proc = subprocess.run([*_rlpt(), "quickstart", "--output", str(tmp_path), "--steps", "12"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(
        line.strip().split("  ", 1) for line in proc.stdout.splitlines()
        if line.strip().startswith(("loss, first", "loss, last", "held-out"))
    )
    first, last = float(lines["loss, first step"]), float(lines["loss, last step"])
    assert last < first - 1.0  # a byte-level model learns the arithmetic corpus quickly
    before, after = lines["held-out loss before / after reload"].strip().split(" / ")
    assert before == after
    assert (tmp_path / "checkpoints" / "iter_0000012" / "COMPLETE").is_file()


def test_unknown_arguments_fail_cleanly():
    proc = subprocess.run([*_rlpt(), "quickstart", "--steps", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "rlpt quickstart: error: --steps must be >= 1"
