"""Where training metrics go: a JSONL file, wandb (offline unless logged in) and a progress bar.

Only global rank 0 logs. On resume the JSONL file is cut back to the resumed step, so a killed
and resumed run has one line per step, as an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class MetricsLogger:
    """Logs one dict of floats per step to `metrics.jsonl`, wandb and a tqdm bar (rank 0 only)."""

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int, config: dict,
                 wandb_cfg: WandbConfig, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
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
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

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

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        from megatron_rlpt.utils.io import atomic_write_text

        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if self._bar is not None:
            shown = {k: f"{record[k]:.3g}" for k in ("reward", "loss", "lm_loss", "grad_norm")
                     if isinstance(record.get(k), float)}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
