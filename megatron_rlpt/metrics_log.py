"""Where training metrics go: a JSONL file, wandb (offline unless logged in) and the console.

Only global rank 0 logs. On resume the JSONL file is cut back to the resumed step, so a killed
and resumed run has one line per step, as an uninterrupted run would, and the wandb run of the
run directory is continued (same id, `resume="allow"`).

`metrics.jsonl` is strict JSON: a metric without a value in a step (NaN, e.g. `reward/msr` in a
step without MSR samples, or ±inf) is written as `null`.

Console: a tqdm bar when stdout is a terminal; otherwise (a Slurm log file, a pipe) one plain
line per step, in the manner of Megatron-LM's iteration line.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from megatron_rlpt.errors import UsageError


@dataclass
class WandbConfig:
    """Weights & Biases logging."""

    mode: str = "auto"
    """`auto` (online when an API key is configured, else offline), `online`, `offline` or `disabled`."""
    project: str = "megatron-rlpt"
    """wandb project name."""
    entity: str | None = None
    """wandb entity (team or user); None uses the account's default."""
    name: str | None = None
    """Run name; None uses the run directory's name."""
    tags: list[str] | None = None
    """Tags attached to the run."""


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """The wandb mode `auto` stands for on this machine."""
    if mode not in ("auto", "online", "offline", "disabled"):
        raise UsageError(f"wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        return "online" if _has_api_key() else "offline"
    return mode


# Counters carried from step to step (and across a resume, through metrics.jsonl).
CONSUMED_SAMPLES = "consumed/samples"
CONSUMED_TOKENS = "consumed/tokens"


class MetricsLogger:
    """Logs one dict of floats per step to `metrics.jsonl`, wandb and the console (rank 0 only).

    A step's `train/samples` and `train/tokens` (when the step reports them) are summed into
    `consumed/samples` and `consumed/tokens`. `stream` is where console lines go (stdout);
    `interactive` overrides the terminal test that picks a bar over plain lines.
    """

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int, config: dict,
                 wandb_cfg: WandbConfig, enabled: bool = True, progress: bool = True,
                 stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.total_steps, self.start_step = total_steps, start_step
        self._wandb = None
        self._bar = None
        self._lines: TextIO | None = None
        self._consumed: dict[str, float] = {}
        self._t0 = time.monotonic()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._consumed = self._truncate_after(start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        mode = resolve_wandb_mode(wandb_cfg.mode)
        if mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity,
                name=wandb_cfg.name or Path(run_dir).name, tags=wandb_cfg.tags, config=config,
                dir=str(run_dir), mode=mode, resume="allow",
                id=self._run_id(Path(run_dir)), settings=wandb.Settings(silent=True),
            )
        stream = stream if stream is not None else sys.stdout
        if interactive is None:
            interactive = _isatty(stream)
        if progress and interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        elif progress:
            self._lines = stream

    @staticmethod
    def _run_id(run_dir: Path) -> str:
        # One wandb run per run directory, so a resumed job continues the same run.
        id_file = run_dir / "wandb_run_id"
        if id_file.is_file():
            return id_file.read_text().strip()
        import secrets

        from megatron_rlpt.utils.io import atomic_write_text

        run_id = secrets.token_hex(8)
        atomic_write_text(id_file, run_id + "\n")
        return run_id

    def _truncate_after(self, step: int) -> dict[str, float]:
        """Cut the file back to `step`; return the consumed counters recorded at `step`."""
        if not self.path.is_file():
            return {}
        kept, last = [], {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("step", 0) <= step:
                kept.append(line)
                if record.get("step") == step:
                    last = record
        from megatron_rlpt.utils.io import atomic_write_text

        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return {k: float(last[k]) for k in (CONSUMED_SAMPLES, CONSUMED_TOKENS)
                if isinstance(last.get(k), (int, float))}

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        for total, part in ((CONSUMED_SAMPLES, "train/samples"), (CONSUMED_TOKENS, "train/tokens")):
            if isinstance(record.get(part), float):
                # A counter that was not carried over (e.g. metrics.jsonl removed) starts anew
                # only at step 1; otherwise it is left out rather than shown too small.
                if total in self._consumed or step == 1:
                    self._consumed[total] = self._consumed.get(total, 0.0) + record[part]
                    record[total] = self._consumed[total]
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step" and v is not None},
                            step=step)
        if self._bar is not None:
            shown = {k: f"{record[k]:.3g}" for k in ("reward", "loss", "lm_loss", "grad_norm")
                     if isinstance(record.get(k), float)}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        if self._lines is not None:
            self._lines.write(self.format_line(step, record) + "\n")
            self._lines.flush()

    def format_line(self, step: int, record: dict[str, Any]) -> str:
        """One console line for a step: where the run is, what it learns, how fast it goes."""
        def num(key: str) -> float | None:
            v = record.get(key)
            return v if isinstance(v, float) else None

        now = time.monotonic()
        elapsed = now - self._t0
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else None
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        parts = [f"[{stamp}] step {step}/{self.total_steps}"]
        for key, label, fmt in (("reward", "reward", "{:.4f}"), ("loss", "loss", "{:.6E}"),
                                ("grad_norm", "grad norm", "{:.4g}"), ("lr", "lr", "{:.4E}")):
            if key in record:
                v = num(key)
                parts.append(f"{label} " + (fmt.format(v) if v is not None else "n/a"))
        step_s, tokens = num("time/step_s"), num("train/tokens")
        if step_s and tokens is not None:
            parts.append(f"tokens/s {tokens / step_s:,.0f}")
        for key, label in ((CONSUMED_SAMPLES, "consumed samples"),
                           (CONSUMED_TOKENS, "consumed tokens")):
            if num(key) is not None:
                parts.append(f"{label} {num(key):,.0f}")
        if step_s is not None:
            parts.append(f"step time {step_s:.2f} s")
        parts.append(f"elapsed {_duration(elapsed)}")
        parts.append(f"ETA {_duration(eta) if eta is not None else 'n/a'}")
        return " | ".join(parts)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _plain(v: Any) -> Any:
    """A JSON value: numbers as floats, NaN and ±inf as None (JSON has no such numbers)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return f if math.isfinite(f) else None
