"""`MetricsLogger`: strict JSON in metrics.jsonl, plain per-step lines off a terminal, consumed
counters carried across a resume; `rlpt`'s warning filter shows each warning once."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from megatron_rlpt.metrics_log import MetricsLogger, WandbConfig
from tests.multirank import REPO_ROOT

OFF = WandbConfig(mode="disabled")


def _strict_rows(path: Path) -> list[dict]:
    """Parse like a strict JSON reader (Go, JavaScript, jq): NaN and Infinity are errors."""
    def refuse(token: str) -> float:
        raise ValueError(f"not JSON: {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _logger(tmp_path: Path, start: int = 0, **kw) -> MetricsLogger:
    return MetricsLogger(tmp_path, 4, start, {}, OFF, **kw)


def test_missing_values_are_null(tmp_path: Path):
    log = _logger(tmp_path, progress=False)
    # A step without MSR samples has no MSR reward; a diverged norm is inf.
    log.log(1, {"reward": 0.5, "reward/asr": 0.5, "reward/msr": float("nan"),
                "grad_norm": float("inf"), "loss": 1.25})
    log.close()
    (row,) = _strict_rows(tmp_path / "metrics.jsonl")
    assert row == {"step": 1, "reward": 0.5, "reward/asr": 0.5, "reward/msr": None,
                   "grad_norm": None, "loss": 1.25}


def test_plain_lines_when_not_a_terminal(tmp_path: Path):
    out = io.StringIO()  # not a TTY, as a Slurm log file is not
    log = _logger(tmp_path, stream=out)
    for step in (1, 2):
        log.log(step, {"reward": 0.25 * step, "loss": 0.5, "grad_norm": 1.5, "lr": 1e-3,
                       "reward/msr": float("nan"), "time/step_s": 2.0,
                       "train/samples": 8.0, "train/tokens": 512.0})
    log.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert "step 2/4 | reward 0.5000 | loss 5.000000E-01 | grad norm 1.5 | lr 1.0000E-03" in lines[1]
    assert "tokens/s 256 | consumed samples 16 | consumed tokens 1,024 | step time 2.00 s" in lines[1]
    assert "elapsed " in lines[1] and "ETA " in lines[1]
    assert "ETA n/a" not in lines[1]
    rows = _strict_rows(tmp_path / "metrics.jsonl")
    assert [(r["consumed/samples"], r["consumed/tokens"]) for r in rows] == [(8, 512), (16, 1024)]


def test_bar_on_a_terminal_and_nothing_when_progress_is_off(tmp_path: Path, capsys):
    out = io.StringIO()
    log = _logger(tmp_path, stream=out, interactive=True)
    log.log(1, {"loss": 1.0})
    log.close()
    assert out.getvalue() == ""  # the bar (tqdm) writes to stderr
    assert "1/4" in capsys.readouterr().err
    out = io.StringIO()
    log = MetricsLogger(tmp_path / "quiet", 4, 0, {}, OFF, progress=False, stream=out)
    log.log(1, {"loss": 1.0})
    log.close()
    assert out.getvalue() == ""


def test_resume_cuts_back_and_carries_the_counters(tmp_path: Path):
    log = _logger(tmp_path, progress=False)
    for step in (1, 2, 3):  # step 3 was logged but never checkpointed
        log.log(step, {"loss": 1.0, "train/samples": 4.0, "train/tokens": 100.0})
    log.close()
    out = io.StringIO()
    log = _logger(tmp_path, start=2, stream=out)
    log.log(3, {"loss": 0.5, "train/samples": 4.0, "train/tokens": 100.0})
    log.close()
    rows = _strict_rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 0.5
    assert rows[2]["consumed/samples"] == 12 and rows[2]["consumed/tokens"] == 300
    assert "step 3/4" in out.getvalue() and "consumed samples 12" in out.getvalue()


def test_counters_left_out_when_not_carried(tmp_path: Path):
    """A resume without the earlier records does not show counts that start from zero."""
    log = _logger(tmp_path, start=5, progress=False)
    log.log(6, {"loss": 1.0, "train/samples": 4.0})
    log.close()
    (row,) = _strict_rows(tmp_path / "metrics.jsonl")
    assert "consumed/samples" not in row and row["train/samples"] == 4


def test_rlpt_shows_each_warning_once():
    code = ("import warnings\n"
            "from megatron_rlpt import cli\n"
            "cli._warnings_once()\n"
            "for _ in range(3):\n"
            "    warnings.warn('kernel fallback', UserWarning)\n"
            "    warnings.warn('old default', FutureWarning)\n"
            "warnings.warn('kernel fallback', UserWarning)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("kernel fallback") == 1
    assert proc.stderr.count("old default") == 1
