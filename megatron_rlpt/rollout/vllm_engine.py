"""Rollouts from vLLM, running beside the trainer, with the policy's weights pushed after each step.

vLLM pins its own dependencies, so it runs in a virtual environment of its own: the engine starts
`vllm_worker.py` with that environment's Python (one sidecar per model-parallel group, on its
first rank), hands it a Hugging Face directory of the current policy at start-up, and talks to
it over pipes. After each optimizer step the trainer's weights, gathered across TP and PP and
named as in Hugging Face (`convert.live.hf_named_tensors`), are written as safetensors and
loaded into the running engine in place; the prefix cache is reset. The other ranks of the
model-parallel group receive the completions by broadcast.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import Completion, SamplingParams

WORKER = Path(__file__).with_name("vllm_worker.py")
REPLY_PREFIX = "RLPT-VLLM "  # the worker's reply lines; anything else on its stdout is noise


@dataclass
class VLLMConfig:
    """The vLLM sidecar (`rollout.engine=vllm`)."""

    python: str = ""
    """Python of the environment vLLM is installed in; empty: `$RLPT_VLLM_PYTHON`, else
    `.venv-vllm/bin/python` under the current directory (what `tools/setup_vllm.sh` makes)."""
    dtype: str = "float32"
    """dtype vLLM computes in (`float32`, `bfloat16`, `float16`); pushed weights are cast to it."""
    gpu_memory_utilization: float = 0.5
    """GPU: share of device memory vLLM may take (weights and KV cache), leaving the rest to
    training. Ignored on CPU."""
    cpu_kv_cache_gib: int = 1
    """CPU: KV-cache size in GiB (`VLLM_CPU_KVCACHE_SPACE`)."""
    startup_timeout_s: float = 600.0
    """Longest wait for the engine to load."""
    request_timeout_s: float = 3600.0
    """Longest wait for one generate or weight-load request before the run stops."""
    work_dir: str = ""
    """Where the start-up model directory and pushed weights are written; empty: a temporary
    directory, removed on close."""


def _python(cfg: VLLMConfig) -> str:
    python = cfg.python or os.environ.get("RLPT_VLLM_PYTHON") or ".venv-vllm/bin/python"
    if not Path(python).is_file():
        raise UsageError(f"rollout.engine=vllm: no Python at {python}; run tools/setup_vllm.sh or "
                         "set rollout.vllm.python (or RLPT_VLLM_PYTHON)")
    return python


def _write_weights(directory: Path, weights: Any, dtype: torch.dtype) -> int:
    """Write HF-named tensors as safetensors shards of at most ~1 GB; returns the count."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    size, count, index = 0, 0, 0
    for name, tensor in weights:
        shard[name] = tensor.detach().to("cpu", dtype).contiguous()
        size += shard[name].numel() * shard[name].element_size()
        count += 1
        if size > 2**30:
            save_file(shard, str(directory / f"model-{index:05d}.safetensors"))
            shard, size, index = {}, 0, index + 1
    if shard:
        save_file(shard, str(directory / f"model-{index:05d}.safetensors"))
    return count


class VLLMSidecar:
    """One vLLM engine in a child process, loaded with `weights` of a `model_cfg` model."""

    def __init__(self, model_cfg: Any, tokenizer: Any, weights: Any, cfg: VLLMConfig) -> None:
        from megatron_rlpt.convert.hf_config import hf_config_from_model

        self.cfg, self.tokenizer = cfg, tokenizer
        self.dtype = getattr(torch, cfg.dtype)
        self._tmp = None if cfg.work_dir else tempfile.mkdtemp(prefix="rlpt-vllm-")
        self.root = Path(cfg.work_dir or self._tmp)
        self._pushes = itertools.count(1)
        model_dir = self.root / "model"
        _write_weights(model_dir, weights, self.dtype)
        hf = hf_config_from_model(model_cfg, dtype=cfg.dtype)
        (model_dir / "config.json").write_text(json.dumps(hf, indent=2))
        tokenizer.save_pretrained(str(model_dir))
        options = {"dtype": cfg.dtype, "max_model_len": model_cfg.max_position_embeddings}
        if torch.cuda.is_available():
            options["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1", VLLM_CPU_KVCACHE_SPACE=str(cfg.cpu_kv_cache_gib))
        env.pop("PYTHONPATH", None)  # the trainer's packages must not shadow vLLM's pins
        self.log_path = self.root / "vllm.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [_python(cfg), str(WORKER), str(model_dir), json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            cwd=self.root)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._reply(cfg.startup_timeout_s, "start-up")

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(REPLY_PREFIX):
                self._lines.put(line[len(REPLY_PREFIX):])
        self._lines.put(None)

    def _reply(self, timeout: float, what: str) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"vLLM {what} took over {timeout:.0f} s; log: "
                               f"{self.log_path}") from None
        if line is None:
            tail = self.log_path.read_text()[-3000:] if self.log_path.is_file() else ""
            raise RuntimeError(f"the vLLM engine exited during {what}:\n{tail}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"vLLM {what} failed: {reply['error']} (log: {self.log_path})")
        return reply["result"]

    def _call(self, op: str, what: str, **kwargs: Any) -> Any:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the vLLM engine is not running (exit {self.proc.returncode}); "
                               f"log: {self.log_path}")
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._reply(self.cfg.request_timeout_s, what)

    def generate_ids(self, prompt_ids: list[list[int]], n: int,
                     sampling: SamplingParams) -> list[list[Completion]]:
        groups = self._call("generate", "generation", prompts=prompt_ids, n=n,
                            sampling=asdict(sampling))
        return [[Completion(c["text"], c["token_ids"], c["logprobs"], c["finish_reason"])
                 for c in group] for group in groups]

    def update_weights(self, weights: Any) -> int:
        """Load HF-named `(name, tensor)` pairs into the running engine; returns their count."""
        directory = self.root / f"push-{next(self._pushes):06d}"
        _write_weights(directory, weights, self.dtype)
        try:
            return self._call("load_weights", "weight load", path=str(directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class VLLMEngine:
    """The trainer-facing engine: the sidecar on the model-parallel group's first rank, its
    results broadcast to the group. Every rank of the group calls every method together."""

    def __init__(self, state: Any, tokenizer: Any, model_cfg: Any, cfg: VLLMConfig) -> None:
        from megatron.core import parallel_state as ps

        from megatron_rlpt.convert.live import hf_named_tensors

        self.state, self.model_cfg = state, model_cfg
        self.group = ps.get_model_parallel_group()
        self.src = torch.distributed.get_process_group_ranks(self.group)[0]
        self.owner = torch.distributed.get_rank() == self.src
        weights = hf_named_tensors(state, model_cfg, gather_pipeline=True)
        if self.owner:
            self.sidecar: VLLMSidecar | None = VLLMSidecar(model_cfg, tokenizer, weights, cfg)
        else:
            for _ in weights:  # the gathers are collectives: take part, keep nothing
                pass
            self.sidecar = None

    def generate_ids(self, prompt_ids: list[list[int]], n: int,
                     sampling: SamplingParams) -> list[list[Completion]]:
        holder = [self.sidecar.generate_ids(prompt_ids, n, sampling) if self.owner else None]
        if torch.distributed.get_world_size(self.group) > 1:
            torch.distributed.broadcast_object_list(holder, src=self.src, group=self.group)
        return holder[0]

    def push(self) -> None:
        """Send the trainer's current weights to the sidecar."""
        from megatron_rlpt.convert.live import hf_named_tensors

        weights = hf_named_tensors(self.state, self.model_cfg, gather_pipeline=True)
        if self.owner:
            self.sidecar.update_weights(weights)
        else:
            for _ in weights:
                pass

    def update_weights(self, weights: Any = None) -> None:
        self.push()

    def close(self) -> None:
        if self.sidecar is not None:
            self.sidecar.close()
