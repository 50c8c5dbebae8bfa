"""The `rlpt train` driver: set up, resume, loop over steps, log, checkpoint.

What one step does lives in the stage (`stages/lm.py` for pretrain/sft, `stages/rl.py` for
rlpt/rlvr). Every batch is a pure function of (seed, step) and every RNG the step uses is
restored from the checkpoint, so a killed run resumed from its last checkpoint reaches the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.errors import UsageError
from megatron_rlpt.utils.config import to_dict
from megatron_rlpt.utils.io import atomic_write_text


def _make_stage(cfg: TrainConfig, state: Any, tokenizer: Any) -> Any:
    if cfg.run.stage in ("pretrain", "sft"):
        from megatron_rlpt.stages.lm import LMStage

        return LMStage(cfg, state, tokenizer)
    from megatron_rlpt.stages.rl import RLStage

    return RLStage(cfg, state, tokenizer)


def _stage_state(stage: Any) -> dict[str, Any]:
    """What the stage needs saved beside the step to resume its data order."""
    return stage.state_dict() if hasattr(stage, "state_dict") else {}


def _given_model_fields(cfg: TrainConfig) -> set[str]:
    """Model fields a config built in Python sets: those that differ from the defaults."""
    import dataclasses

    from megatron_rlpt.runtime.model import ModelConfig

    default = ModelConfig()
    return {f.name for f in dataclasses.fields(ModelConfig)
            if getattr(cfg.model, f.name) != getattr(default, f.name)}


def _resume_root(cfg: TrainConfig) -> Path | None:
    """The run's own checkpoint root when the run will resume from it and it records the model
    (`_save_run_files` wrote model_config.json and tokenizer/ there on the first start)."""
    from megatron_rlpt.convert.model_config_file import MODEL_CONFIG_FILE
    from megatron_rlpt.runtime.checkpoint import RUN_CHECKPOINTS, latest_checkpoint

    root = Path(cfg.run.output_dir) / RUN_CHECKPOINTS
    if cfg.run.resume and (root / MODEL_CONFIG_FILE).is_file() and latest_checkpoint(root):
        return root
    return None


def resolve_init_model(cfg: TrainConfig, model_fields: set[str] | None = None
                       ) -> tuple[TrainConfig, Path | None]:
    """Take the architecture from `run.init_from`'s checkpoint when it records one.

    A run that resumes reads it, and the tokenizer, from its own checkpoint root instead: the
    init checkpoint is only read on a fresh start, so it may be gone by then.
    `model_fields` are the `model.*` keys the user wrote (YAML or overrides); None infers them
    from the values that differ from the defaults. Of those, runtime knobs (dtype, recompute, ...)
    apply over the checkpoint's config and architectural ones must agree with it. Returns the
    config to train with and the tokenizer directory saved with the checkpoint (None if none).
    """
    import dataclasses

    from megatron_rlpt.convert.checkpoint_model import checkpoint_model
    from megatron_rlpt.convert.model_config_file import merge_model_config
    from megatron_rlpt.runtime.checkpoint import resolve_checkpoint

    if not cfg.run.init_from:
        return cfg, None
    source = _resume_root(cfg) or cfg.run.init_from
    user_tokenizer = cfg.data.tokenizer or _prepared_tokenizer(cfg)
    found = checkpoint_model(resolve_checkpoint(source),
                             tokenizer_hint=str(user_tokenizer) if user_tokenizer else None)
    if found.model is None:
        return cfg, found.tokenizer
    fields = _given_model_fields(cfg) if model_fields is None else set(model_fields)
    model = merge_model_config(found.model, cfg.model, fields, found.source)
    return dataclasses.replace(cfg, model=model), found.tokenizer


def _prepared_tokenizer(cfg: TrainConfig) -> Path | None:
    """The tokenizer `rlpt prepare` recorded in the data's manifest, if it is still there (of
    a blend, the first path's)."""
    import json

    paths = [cfg.data.path] if isinstance(cfg.data.path, str) \
        else [p for p in cfg.data.path if isinstance(p, str)]
    if not paths:
        return None
    manifest = Path(paths[0]) / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("tokenizer", {}).get("path")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return None


def _tokenizer_path(cfg: TrainConfig, init_tokenizer: Path | None = None) -> Path:
    """data.tokenizer, else the one saved with run.init_from's checkpoint (with the run's own
    checkpoints when resuming), else the one `rlpt prepare` recorded, else the shipped one."""
    from megatron_rlpt.data.tokenizer import default_tokenizer_path

    if cfg.data.tokenizer:
        return Path(cfg.data.tokenizer)
    if init_tokenizer is not None:
        return init_tokenizer
    return _prepared_tokenizer(cfg) or default_tokenizer_path()


def _load_tokenizer(cfg: TrainConfig, init_tokenizer: Path | None = None) -> Any:
    from megatron_rlpt.data.tokenizer import load_tokenizer

    path = _tokenizer_path(cfg, init_tokenizer)
    tokenizer = load_tokenizer(path)
    if len(tokenizer) > cfg.model.vocab_size:
        raise UsageError(f"tokenizer {path} has {len(tokenizer)} tokens but model.vocab_size is "
                         f"{cfg.model.vocab_size}")
    return tokenizer


def _save_run_files(cfg: TrainConfig, run_dir: Path, tokenizer: Any) -> None:
    """The resolved config, and beside the checkpoints what `rlpt convert` needs to export them."""
    from megatron_rlpt.convert import save_model_config

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ckpt_root = run_dir / "checkpoints"
    save_model_config(ckpt_root, cfg.model)
    tokenizer.save_pretrained(str(ckpt_root / "tokenizer"))


def _count_data(cfg: TrainConfig, metrics: dict[str, float]) -> None:
    """The step's `train/samples` (sequences trained on) and, where known, `train/tokens`, for
    the consumed-data counters; a stage that reports them itself wins."""
    if cfg.run.stage in ("pretrain", "sft"):
        metrics.setdefault("train/samples", float(cfg.batch.sequences_per_step))
        if cfg.run.stage == "pretrain":  # every row is seq_length tokens, all in the loss
            metrics.setdefault("train/tokens",
                               float(cfg.batch.sequences_per_step * cfg.data.seq_length))
    elif "grpo/kept_groups" in metrics:
        metrics.setdefault("train/samples", metrics["grpo/kept_groups"] * cfg.grpo.group_size)


class StopSignal:
    """Turns SIGTERM (preemption), SIGUSR1 (Slurm's time-limit warning, forwarded by srun) or
    SIGUSR2 into a checkpoint-and-exit.

    The handler only sets a flag; after each step the ranks agree on it with an all-reduce, so
    all of them save the same step and leave together. It is installed before set-up, so a
    signal that arrives while the model loads is not fatal either.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self) -> None:
        import signal

        self.received: str | None = None
        self._previous = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        import torch

        flag = torch.tensor([1.0 if self.received else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, model_fields: set[str] | None = None) -> dict[str, float]:
    """Run training as configured; returns the last step's metrics (rank 0's view).

    `model_fields`: the `model.*` keys the user set (see `resolve_init_model`).
    """
    import torch

    from megatron_rlpt.metrics_log import MetricsLogger
    from megatron_rlpt.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from megatron_rlpt.runtime.distributed import destroy_distributed, init_distributed
    from megatron_rlpt.runtime.step import setup_training

    stop = StopSignal()
    cfg.model.validate_runtime()  # the config's own knobs first, before any checkpoint is read
    cfg, init_tokenizer = resolve_init_model(cfg, model_fields)
    cfg.validate()
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    rank0 = torch.distributed.get_rank() == 0
    run_dir = Path(cfg.run.output_dir)
    ckpt_root = run_dir / "checkpoints"
    tokenizer = _load_tokenizer(cfg, init_tokenizer)
    state = setup_training(cfg.model, cfg.parallel, cfg.optim, total_steps=cfg.run.steps)

    start_step, resumed = 0, None
    latest = latest_checkpoint(ckpt_root) if cfg.run.resume else None
    if latest is not None:
        resumed = load_checkpoint(latest, state.chunks, state.optimizer, state.scheduler)
        start_step = resumed["step"]
    elif cfg.run.init_from:
        load_checkpoint(cfg.run.init_from, state.chunks, restore_rng=False)
        # bf16/fp16 optimizers (and the distributed one) step fp32 main copies made at set-up
        # from the random init; without this the first step writes those back over the loaded
        # weights.
        state.optimizer.reload_model_params()
    if rank0:
        if latest is not None:
            print(f"rlpt train: resumed from {latest} at step {start_step} of {cfg.run.steps}",
                  flush=True)
        else:
            source = f" from {cfg.run.init_from}" if cfg.run.init_from else ""
            print(f"rlpt train: starting {cfg.run.stage} at step 0 of {cfg.run.steps}, "
                  f"weights{source or ' initialised at random'}", flush=True)
        _save_run_files(cfg, run_dir, tokenizer)
    torch.distributed.barrier()

    stage = _make_stage(cfg, state, tokenizer)
    if resumed is not None and hasattr(stage, "load_state_dict"):
        stage.load_state_dict(resumed)
    logger = MetricsLogger(run_dir, cfg.run.steps, start_step, to_dict(cfg), cfg.run.wandb,
                           enabled=rank0, progress=cfg.run.progress)
    metrics: dict[str, float] = {}
    try:
        for step in range(start_step + 1, cfg.run.steps + 1):
            t0 = time.perf_counter()
            metrics = stage.step(step)
            metrics["time/step_s"] = time.perf_counter() - t0
            _count_data(cfg, metrics)
            logger.log(step, metrics)
            stopping = stop.agreed()
            if step % cfg.run.save_every == 0 or step == cfg.run.steps or stopping:
                save_checkpoint(ckpt_root, step, state.chunks, state.optimizer, state.scheduler,
                                trainer_state={"stage": cfg.run.stage, **_stage_state(stage)},
                                keep_last=cfg.run.keep_last)
            if stopping:
                if rank0:
                    print(f"rlpt train: {stop.received or 'a signal'} received; saved step {step} "
                          "and stopped (rerun the same command to resume)", flush=True)
                break
            if step == cfg.run.steps and rank0:
                print(f"rlpt train: finished step {step} of {cfg.run.steps}; checkpoint in "
                      f"{ckpt_root}", flush=True)
    finally:
        stop.restore()
        logger.close()
        close = getattr(stage, "close", None)
        if close is not None:
            close()
    destroy_distributed()
    return metrics
