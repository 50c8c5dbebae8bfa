"""Count the bytes of tensor storage alive during a block of code, and its peak.

A `TorchDispatchMode` that registers the storage of every tensor an operation returns and
forgets it when the storage is freed (autograd's saved tensors included, since they keep the
storage alive). It works on real tensors and under `FakeTensorMode`, where nothing is allocated:
that is how the log-prob benchmark measures a 15 GB naive computation on a small machine.
Storage that existed before the block (inputs, parameters) is not counted.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """`with LiveBytes() as m: ...` then `m.peak` / `m.current` bytes (and `m.largest`)."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.largest = 0
        """The largest single storage allocated in the block."""
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def _free(self, key: int) -> None:
        with self._lock:
            self.current -= self._sizes.pop(key, 0)

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        with self._lock:
            # A view or an in-place result reuses its input's storage: nothing new.
            if key in self._sizes or key in inputs:
                return
            size = storage.nbytes()
            self._sizes[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            self.largest = max(self.largest, size)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item, inputs)
        return out
