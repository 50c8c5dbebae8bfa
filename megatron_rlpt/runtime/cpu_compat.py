"""Run Megatron-Core on a machine without CUDA.

Megatron-Core has no CPU path: it allocates buffers on `torch.cuda.current_device()`, passes
`device="cuda"` to factory functions, calls `.cuda()`, keeps its tensor-parallel RNG streams in
CUDA generator states and asserts on `tensor.type()` strings such as `torch.cuda.FloatTensor`.
This module makes those calls land on the CPU so that the real Megatron code (GPTModel, TP/PP
over gloo, DDP, the distributed optimizer, dist-checkpointing) runs in tests and on laptops:

- a `TorchFunctionMode` rewrites CUDA devices to the CPU in every torch call, makes
  `Tensor.cuda()` a no-op and reports CPU tensors' `type()` with the CUDA name;
- `torch.cuda` functions that Megatron calls get CPU stand-ins: the "CUDA" RNG *is* the CPU
  generator (so Megatron's RNG tracker forks the generator that CPU kernels actually use),
  synchronisation is a no-op, streams and events are inert.

It is enabled only when CUDA is absent, once per process, and only for the Megatron-Core versions
it was checked against. Nothing here changes numerics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Versions whose CUDA call sites were audited against this layer (see tests/runtime).
SUPPORTED_MEGATRON_VERSIONS = ("0.16.",)

_lock = threading.Lock()
_mode: _CudaToCpuMode | None = None

_CPU = torch.device("cpu")


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer device index means a CUDA ordinal.
    return isinstance(device, int) and not isinstance(device, bool)


def _map_device(device: Any) -> Any:
    return _CPU if _is_cuda_device(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA device arguments to the CPU for every torch function call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            # Megatron's optimizers assert on CUDA type names such as torch.cuda.FloatTensor.
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if func is torch.Tensor.to:
            # Tensor.to(0) means CUDA ordinal 0; elsewhere a positional int is a size.
            args = tuple(_map_device(a) for a in args)
        elif args:
            args = tuple(
                _CPU if isinstance(a, (str, torch.device)) and _is_cuda_device(a) else a
                for a in args
            )
        return func(*args, **kwargs)


class _InertStream:
    """Stands in for `torch.cuda.Stream`: work on the CPU is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any) -> None:
        pass

    def wait_event(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args: Any) -> _InertEvent:
        return _InertEvent()


class _InertEvent:
    """Stands in for `torch.cuda.Event`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any) -> None:
        pass

    def wait(self, *args: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class _RngWarningFilter(logging.Filter):
    # The "CUDA" generator is the CPU generator here, so Megatron's check that a fork left the
    # CPU generator untouched would fire on every fork.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _manual_seed(seed: int) -> None:
    # Not torch.manual_seed: it calls torch.cuda.manual_seed_all, which is this function.
    torch.default_generator.manual_seed(int(seed))


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _stand_in(fn: Any) -> Any:
    # torch._dynamo keys its trace rules by function object: every patched attribute needs its
    # own function, or dynamo finds one object under two names and refuses to start.
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    stand_ins = {
        (cuda, "current_device"): lambda: 0,
        (cuda, "device_count"): lambda: 1,
        (cuda, "set_device"): _noop,
        (cuda, "synchronize"): _noop,
        (cuda, "empty_cache"): _noop,
        (cuda, "get_rng_state"): _get_rng_state,
        (cuda, "set_rng_state"): _set_rng_state,
        (cuda, "manual_seed"): _manual_seed,
        (cuda, "manual_seed_all"): _manual_seed,
        (cuda.random, "get_rng_state"): _get_rng_state,
        (cuda.random, "set_rng_state"): _set_rng_state,
        (cuda, "current_stream"): _InertStream,
        (cuda, "default_stream"): _InertStream,
        (cuda, "stream"): lambda *a, **k: contextlib.nullcontext(),
        (cuda, "memory_allocated"): lambda *a, **k: 0,
        (cuda, "max_memory_allocated"): lambda *a, **k: 0,
        (cuda.nvtx, "range_push"): _noop,
        (cuda.nvtx, "range_pop"): _noop,
    }
    for (module, name), fn in stand_ins.items():
        setattr(module, name, _stand_in(fn))
    cuda.Stream = _InertStream
    cuda.Event = _InertEvent


def _patch_megatron() -> None:
    import megatron.core
    from megatron.core.tensor_parallel import random as mp_random

    version = megatron.core.__version__
    if not version.startswith(SUPPORTED_MEGATRON_VERSIONS):
        raise RuntimeError(
            f"megatron_rlpt.runtime.cpu_compat supports megatron-core "
            f"{', '.join(v + 'x' for v in SUPPORTED_MEGATRON_VERSIONS)}; found {version}. "
            "Install the pinned version (see setup.py) or run on a GPU."
        )
    mp_random._get_cuda_rng_state = _get_rng_state
    mp_random._set_cuda_rng_state = _set_rng_state
    logging.getLogger(mp_random.__name__).addFilter(_RngWarningFilter())


def is_enabled() -> bool:
    """Whether the CPU layer is active in this process."""
    return _mode is not None


def enable(force: bool = False) -> bool:
    """Activate the CPU layer if CUDA is absent (or `force`). Returns whether it is active.

    Call before building any Megatron object. Idempotent. The mode is pushed on this thread's
    torch-function mode stack for the rest of the process.
    """
    global _mode
    with _lock:
        if _mode is not None:
            return True
        if torch.cuda.is_available() and not force:
            return False
        _patch_megatron()
        _patch_torch_cuda()
        _mode = _CudaToCpuMode()
        _mode.__enter__()
        return True
