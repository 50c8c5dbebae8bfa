"""Choose the model source and the rollout engine for `rlpt eval`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError

VLLM_MODULE = "megatron_rlpt.rollout.vllm_engine"
VLLM_CLASS = "VLLMModelEngine"  # the rollouts' vLLM sidecar, on a Hugging Face directory
CONVERT_MODULE = "megatron_rlpt.convert"
CONVERT_FUNCTION = "megatron_to_hf"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_megatron_checkpoint(path: Path) -> bool:
    """Whether `path` is a run directory of `rlpt train`, a Megatron checkpoint root or one
    `iter_*` dist-checkpoint in it."""
    if (path / "latest_checkpointed_iteration.txt").is_file():
        return True
    if (path / "checkpoints" / "latest_checkpointed_iteration.txt").is_file():
        return True
    if any(re.fullmatch(r"iter_\d{7,}", p.name) for p in path.iterdir() if p.is_dir()):
        return True
    if (path / "COMPLETE").is_file() or (path / ".metadata").is_file():
        return True
    meta = path / "metadata.json"
    if meta.is_file():
        try:
            return "sharded_backend" in json.loads(meta.read_text())
        except ValueError:
            return False
    return False


def resolve_model(model: str, work_dir: Path) -> str:
    """A Hugging Face model directory for `model`: as given, or converted from a Megatron
    checkpoint into `work_dir/hf_model` when the converter is available."""
    path = Path(model)
    if not path.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
            return model  # a hub id: the engine fetches it
        raise UsageError(f"--model {model} does not exist")
    if not path.is_dir():
        raise UsageError(f"--model {model} is not a directory")
    if (path / "config.json").is_file():
        return str(path)
    if is_megatron_checkpoint(path):
        if _importable(CONVERT_MODULE):
            convert = importlib.import_module(CONVERT_MODULE)
            export = getattr(convert, CONVERT_FUNCTION, None)
            if callable(export):
                target = work_dir / "hf_model"
                export(str(path), str(target))
                return str(target)
        raise UsageError(
            f"{model} is a Megatron checkpoint; convert it first with "
            f"`rlpt convert megatron-to-hf` and pass the Hugging Face directory to --model"
        )
    raise UsageError(
        f"{model} is neither a Hugging Face model directory (no config.json) "
        "nor a Megatron checkpoint"
    )


def choose_engine(kind: str) -> str:
    """`vllm` or `hf` for `--engine auto|vllm|hf`.

    vLLM runs as the rollouts' sidecar, in whichever Python `VLLMConfig.python` resolves to
    (`$RLPT_VLLM_PYTHON`, `.venv-vllm` here or in the checkout, or this Python). `auto` takes it
    when vLLM is importable in this Python (GPU installs), else the in-process HF engine.
    """
    if kind == "auto":
        return "vllm" if _importable("vllm") and _importable(VLLM_MODULE) else "hf"
    if kind == "vllm":
        if not _importable(VLLM_MODULE):
            raise UsageError(f"--engine vllm: this install has no {VLLM_MODULE}; use --engine hf")
        from megatron_rlpt.rollout.vllm_engine import resolve_python

        try:
            resolve_python()
        except UsageError as err:
            raise UsageError(f"--engine vllm: {err}") from None
        return "vllm"
    if kind == "hf":
        return "hf"
    raise UsageError(f"unknown engine {kind!r}; choose auto, vllm or hf")


ENGINE_OPTIONS = {
    "hf": ("dtype", "device", "batch_size"),
    "vllm": ("seed", "dtype", "tensor_parallel_size"),
}
"""The `build_engine` options each engine is given; the others do not apply to it."""


def build_engine(kind: str, model_dir: str, **options: Any) -> Any:
    """Construct the rollout engine `kind` (`hf` or `vllm`) on `model_dir`.

    Of `options`, each engine gets those in `ENGINE_OPTIONS` that are not None (None leaves the
    engine's default) and that its constructor accepts.
    """
    if kind == "hf":
        from megatron_rlpt.rollout.hf_engine import HFEngine

        cls: Any = HFEngine
    else:
        module = importlib.import_module(VLLM_MODULE)
        cls = getattr(module, VLLM_CLASS, None)
        if cls is None:
            raise UsageError(f"{VLLM_MODULE} has no {VLLM_CLASS}; use --engine hf")
    params = inspect.signature(cls).parameters
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {
        k: v
        for k, v in options.items()
        if k in ENGINE_OPTIONS[kind] and v is not None and (open_kwargs or k in params)
    }
    return cls(model_dir, **kwargs)
