"""Rollouts from vLLM, running beside the trainer, with the policy's weights pushed after each step.

vLLM pins its own dependencies, so it runs in a virtual environment of its own: the engine starts
`vllm_worker.py` with that environment's Python (one sidecar per model-parallel group, on its
first rank), hands it a Hugging Face directory of the current policy at start-up, and talks to
it over pipes. After each optimizer step the trainer's weights, gathered across TP and PP and
named as in Hugging Face (`convert.live.hf_named_tensors`), are written as safetensors and
loaded into the running engine in place; the prefix cache is reset. The other ranks of the
model-parallel group receive the completions by broadcast.

On GPUs the sidecar is pinned to the GPUs of its model-parallel group's ranks on its node
(`CUDA_VISIBLE_DEVICES`) and spans them with vLLM's tensor parallelism. `rlpt eval --engine vllm`
runs the same sidecar on a Hugging Face model directory (`VLLMModelEngine`).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
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
# The checkout an editable install runs from (megatron_rlpt/rollout/ -> the project root).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV_PYTHON = Path(".venv-vllm") / "bin" / "python"
_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class VLLMConfig:
    """The vLLM sidecar (`rollout.engine=vllm`)."""

    python: str = ""
    """Python of the environment vLLM is installed in (a relative path is taken from the current
    directory). Empty: `$RLPT_VLLM_PYTHON`, else `.venv-vllm/bin/python` in the current
    directory, else in the megatron-rlpt checkout (what `tools/setup_vllm.sh` makes), else this
    Python if it can import vLLM."""
    dtype: str = ""
    """dtype vLLM computes in (`float32`, `bfloat16`, `float16`); pushed weights are cast to it.
    Empty: the policy's (`model.params_dtype`)."""
    tensor_parallel_size: int = 0
    """GPUs one sidecar spans with vLLM's tensor parallelism, out of its model-parallel group's
    GPUs on the sidecar's node (TP x PP of them). 0: as many of those as divide the attention
    heads. Always 1 on CPU."""
    enforce_eager: bool | None = None
    """Run vLLM without CUDA graphs; None: eager on CPU, CUDA graphs on GPU."""
    gpu_memory_utilization: float = 0.5
    """GPU: share of each device's memory vLLM may take (weights and KV cache), leaving the rest
    to training. Ignored on CPU."""
    cpu_kv_cache_gib: int = 1
    """CPU: KV-cache size in GiB (`VLLM_CPU_KVCACHE_SPACE`)."""
    startup_timeout_s: float = 600.0
    """Longest wait for the engine to load."""
    request_timeout_s: float = 3600.0
    """Longest wait for one generate or weight-load request before the run stops."""
    work_dir: str = ""
    """Where the start-up model directory, pushed weights and `vllm.log` are written, and at the
    end the sidecar's throughput totals (`stats.json`); empty: a temporary directory, removed on
    close."""


def _has_vllm(python: str) -> bool:
    """Whether `python` can import vLLM (looked up, not imported: a fraction of a second)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                              ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def resolve_python(configured: str = "", cwd: str | os.PathLike | None = None) -> str:
    """The absolute path of the Python the sidecar runs with (see `VLLMConfig.python`).

    Not resolved through symlinks: a venv's `bin/python` is a link to the base interpreter, and
    only the link finds the venv's packages.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    explicit = configured or os.environ.get("RLPT_VLLM_PYTHON", "")
    if explicit:
        path = Path(os.path.abspath(base / Path(explicit).expanduser()))
        if not path.is_file():
            source = "rollout.vllm.python" if configured else "RLPT_VLLM_PYTHON"
            raise UsageError(f"vLLM: no Python at {path} ({source}={explicit}); run "
                             "tools/setup_vllm.sh or point it at the Python of vLLM's venv")
        return str(path)
    tried = []
    for root in dict.fromkeys([base, PROJECT_ROOT]):
        path = Path(os.path.abspath(root / DEFAULT_VENV_PYTHON))
        if path.is_file():
            return str(path)
        tried.append(str(path))
    if _has_vllm(sys.executable):
        return sys.executable
    raise UsageError(f"vLLM: no Python with vLLM at {' or '.join(tried)}, and this Python "
                     f"({sys.executable}) cannot import vllm; run tools/setup_vllm.sh, install "
                     "vllm here, or set rollout.vllm.python (or RLPT_VLLM_PYTHON)")


def physical_device(visible: str | None, local_index: int) -> str:
    """The `CUDA_VISIBLE_DEVICES` entry of a rank's CUDA device `local_index`, given that rank's
    own `CUDA_VISIBLE_DEVICES` (None or empty: every device is visible, indices are physical)."""
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    if not entries:
        return str(local_index)
    if local_index >= len(entries):
        raise UsageError(f"CUDA device {local_index} is not in CUDA_VISIBLE_DEVICES={visible}")
    return entries[local_index]


def sidecar_devices(layout: list[tuple[str, str | None]]) -> list[str]:
    """The GPUs a model-parallel group's sidecar may use: of `layout`, one `(host, device)` per
    rank of the group with the sidecar's rank first (device None on CPU), the devices on the
    first rank's host, in rank order, each once."""
    if not layout or layout[0][1] is None:
        return []
    host = layout[0][0]
    return list(dict.fromkeys(d for h, d in layout if h == host and d is not None))


def sidecar_tensor_parallel(requested: int, devices: int, heads: int, kv_heads: int) -> int:
    """vLLM's tensor-parallel size for a sidecar with `devices` GPUs (0 on CPU): `requested`
    (checked), or with 0 the most of them that split the attention heads evenly."""
    if devices == 0:
        if requested > 1:
            raise UsageError("rollout.vllm.tensor_parallel_size > 1 needs GPUs")
        return 1

    def fits(t: int) -> bool:
        return heads % t == 0 and (kv_heads % t == 0 or t % kv_heads == 0)

    if requested:
        if requested > devices:
            raise UsageError(f"rollout.vllm.tensor_parallel_size={requested}, but the sidecar's "
                             f"model-parallel group has {devices} GPU(s) on its node")
        if not fits(requested):
            raise UsageError(f"rollout.vllm.tensor_parallel_size={requested} does not split "
                             f"{heads} attention heads ({kv_heads} key/value heads) evenly")
        return requested
    return max(t for t in range(1, devices + 1) if fits(t))


def sidecar_dtype(cfg: VLLMConfig, params_dtype: str) -> str:
    """The dtype vLLM computes in: `rollout.vllm.dtype`, else the policy's (`fp32`/`bf16`)."""
    return cfg.dtype or _DTYPES[params_dtype]


def worker_options(cfg: VLLMConfig, *, dtype: str, tensor_parallel_size: int, cuda: bool,
                   max_model_len: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The `vllm.LLM` keyword arguments the sidecar is started with."""
    eager = (not cuda) if cfg.enforce_eager is None else cfg.enforce_eager
    options: dict[str, Any] = {
        "dtype": dtype, "seed": seed, "enforce_eager": eager,
        "tensor_parallel_size": tensor_parallel_size,
        # One process unless vLLM's tensor parallelism needs a worker per GPU.
        "distributed_executor_backend": "uni" if tensor_parallel_size == 1 else "mp",
    }
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    if cuda:
        options["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return options


def sidecar_env(cfg: VLLMConfig, devices: list[str], base: dict[str, str] | None = None,
                offline: bool = True) -> dict[str, str]:
    """The sidecar's environment: the trainer's, minus its PYTHONPATH (the trainer's packages
    must not shadow vLLM's pins), pinned to `devices` (CUDA_VISIBLE_DEVICES) when there are any."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1",
               VLLM_CPU_KVCACHE_SPACE=str(cfg.cpu_kv_cache_gib))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


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
    """One vLLM engine in a child process, on the Hugging Face model directory `model_dir`.

    `options` are `vllm.LLM` keyword arguments (`worker_options`), `env` the child's environment
    (`sidecar_env`); `root` holds its log and pushed weights.
    """

    def __init__(self, model_dir: str, options: dict[str, Any], cfg: VLLMConfig, root: Path,
                 env: dict[str, str]) -> None:
        self.cfg, self.root, self.dtype_name = cfg, root, options["dtype"]
        self._pushes = itertools.count(1)
        self.log_path = self.root / "vllm.log"
        python = resolve_python(cfg.python)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [python, str(WORKER), str(model_dir), json.dumps(options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            cwd=self.root)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._reply(cfg.startup_timeout_s, "start-up")
        except BaseException:
            self.close()
            raise

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
            if reply.get("kind") == "usage":  # e.g. a head size vLLM's CPU attention lacks
                raise UsageError(f"vLLM: {reply['error']}")
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
        dtype = torch.float32 if self.dtype_name == "auto" else getattr(torch, self.dtype_name)
        _write_weights(directory, weights, dtype)  # vLLM casts to its own dtype as it loads
        try:
            return self._call("load_weights", "weight load", path=str(directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def stats(self) -> dict[str, float]:
        """Totals since start-up, timed inside the sidecar: `requests`, `prompt_tokens`,
        `completion_tokens`, `generate_s` (decode throughput is completion_tokens / generate_s),
        `load_weights_s`, `pushes`."""
        return self._call("stats", "stats")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def _work_root(cfg: VLLMConfig) -> tuple[Path, str | None]:
    """The sidecar's directory, and the temporary directory to remove on close (if it is one)."""
    if cfg.work_dir:
        root = Path(os.path.abspath(cfg.work_dir))
        root.mkdir(parents=True, exist_ok=True)
        return root, None
    tmp = tempfile.mkdtemp(prefix="rlpt-vllm-")
    return Path(tmp), tmp


def _local_device() -> str | None:
    """This rank's GPU as a `CUDA_VISIBLE_DEVICES` entry; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return physical_device(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.current_device())


class VLLMEngine:
    """The trainer-facing engine: the sidecar on the model-parallel group's first rank, its
    results broadcast to the group. Every rank of the group calls every method together."""

    def __init__(self, state: Any, tokenizer: Any, model_cfg: Any, cfg: VLLMConfig) -> None:
        from megatron.core import parallel_state as ps

        from megatron_rlpt.convert.hf_config import hf_config_from_model
        from megatron_rlpt.convert.live import hf_named_tensors

        self.state, self.model_cfg = state, model_cfg
        self.group = ps.get_model_parallel_group()
        self.src = torch.distributed.get_process_group_ranks(self.group)[0]
        self.owner = torch.distributed.get_rank() == self.src
        # Where every rank of the group runs, to pin the sidecar to the group's GPUs.
        layout: list[Any] = [None] * torch.distributed.get_world_size(self.group)
        torch.distributed.all_gather_object(layout, (socket.gethostname(), _local_device()),
                                            group=self.group)
        self.devices = sidecar_devices(layout)
        self.dtype = sidecar_dtype(cfg, model_cfg.params_dtype)
        heads = model_cfg.num_attention_heads
        self.tensor_parallel_size = sidecar_tensor_parallel(
            cfg.tensor_parallel_size, len(self.devices), heads, model_cfg.num_query_groups or heads)
        weights = hf_named_tensors(state, model_cfg, gather_pipeline=True)
        self.sidecar: VLLMSidecar | None = None
        self._tmp: str | None = None
        if not self.owner:
            for _ in weights:  # the gathers are collectives: take part, keep nothing
                pass
            return
        root, self._tmp = _work_root(cfg)
        try:
            model_dir = root / "model"
            _write_weights(model_dir, weights, getattr(torch, self.dtype))
            hf = hf_config_from_model(model_cfg, dtype=self.dtype)
            (model_dir / "config.json").write_text(json.dumps(hf, indent=2))
            tokenizer.save_pretrained(str(model_dir))
            options = worker_options(cfg, dtype=self.dtype,
                                     tensor_parallel_size=self.tensor_parallel_size,
                                     cuda=bool(self.devices),
                                     max_model_len=model_cfg.max_position_embeddings)
            self.sidecar = VLLMSidecar(str(model_dir), options, cfg, root,
                                       sidecar_env(cfg, self.devices))
        except BaseException as err:
            self._remove_tmp()
            if isinstance(err, UsageError) and "head size" in str(err):
                raise UsageError(f"rollout.engine=vllm: {err}. Choose model.hidden_size / "
                                 "model.num_attention_heads (or model.kv_channels) among them, "
                                 "or use rollout.engine=megatron") from None
            raise

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

    def stats(self) -> dict[str, float] | None:
        """The sidecar's totals (`VLLMSidecar.stats`) on its rank; None on the others."""
        return self.sidecar.stats() if self.sidecar is not None else None

    def _remove_tmp(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def close(self) -> None:
        if self.sidecar is not None:
            if self._tmp is None:  # a kept work_dir: leave the totals beside vllm.log
                self._write_stats()
            self.sidecar.close()
            self.sidecar = None
        self._remove_tmp()

    def _write_stats(self) -> None:
        from megatron_rlpt.utils.io import atomic_open

        try:
            stats = self.sidecar.stats()
        except (RuntimeError, OSError):  # a dead sidecar has none; its log says why
            return
        with atomic_open(self.sidecar.root / "stats.json", "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)


class VLLMModelEngine:
    """`RolloutEngine` on a Hugging Face model directory (or hub id) through the same sidecar:
    `rlpt eval --engine vllm`. Prompts are text, tokenized here as the HF engine does."""

    def __init__(self, model: str, *, seed: int = 0, dtype: str | None = None,
                 tensor_parallel_size: int | None = None, cfg: VLLMConfig | None = None) -> None:
        """`dtype` None: as the HF engine, float32 on CPU (vLLM's `auto` would take bfloat16
        there), the checkpoint's own on GPU; `tensor_parallel_size` None: 1. `cfg` sets the
        sidecar's Python, timeouts and memory (default: 0.9 of each GPU, nothing trains
        beside it)."""
        from transformers import AutoTokenizer

        cfg = cfg or VLLMConfig(gpu_memory_utilization=0.9)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        local = Path(model).exists()
        cuda = torch.cuda.is_available()
        tp = tensor_parallel_size or 1
        if tp > 1 and not cuda:
            raise UsageError("--tensor-parallel-size > 1 needs GPUs")
        options = worker_options(cfg, dtype=dtype or ("auto" if cuda else "float32"),
                                 tensor_parallel_size=tp, cuda=cuda, seed=seed)
        root, self._tmp = _work_root(cfg)
        try:
            self.sidecar = VLLMSidecar(os.path.abspath(model) if local else model, options, cfg,
                                       root, sidecar_env(cfg, [], offline=local))
        except BaseException:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def generate(self, prompts: list[str], n: int,
                 sampling: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt in order, its `n` completions."""
        from megatron_rlpt.rollout.hf_engine import encode_prompt

        if n < 1 or sampling.max_tokens < 1:
            raise ValueError("n and max_tokens must be at least 1")
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        return self.sidecar.generate_ids(ids, n, sampling)

    def update_weights(self, weights: Any) -> None:
        """Load HF-named `(name, tensor)` pairs (or a state dict) into the engine."""
        self.sidecar.update_weights(weights.items() if isinstance(weights, dict) else weights)

    def stats(self) -> dict[str, float]:
        return self.sidecar.stats()

    def close(self) -> None:
        self.sidecar.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
