"""Where a vLLM sidecar runs and how it is started, for given layouts (pure functions, no GPU):
the GPUs of its model-parallel group on its node, vLLM's tensor parallelism over them, the
policy's dtype, CUDA graphs on GPU and eager mode on CPU."""

from __future__ import annotations

import pytest

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.vllm_engine import (
    VLLMConfig,
    physical_device,
    sidecar_devices,
    sidecar_dtype,
    sidecar_env,
    sidecar_tensor_parallel,
    worker_options,
)


def test_physical_device_follows_each_ranks_visible_devices():
    assert physical_device(None, 3) == "3"  # everything visible: indices are physical
    assert physical_device("", 0) == "0"
    assert physical_device("4,5,6,7", 1) == "5"  # torchrun on a node slice
    assert physical_device("6", 0) == "6"  # srun --gpus-per-task: one device per rank
    assert physical_device("GPU-aa11, GPU-bb22", 1) == "GPU-bb22"
    with pytest.raises(UsageError, match="not in CUDA_VISIBLE_DEVICES"):
        physical_device("0,1", 2)


def test_sidecar_takes_its_groups_gpus_on_its_own_node():
    # TP=4 x PP=2 over two nodes of 4 GPUs: the sidecar (rank 0's node) spans the first stage.
    layout = [("n0", "0"), ("n0", "1"), ("n0", "2"), ("n0", "3"),
              ("n1", "0"), ("n1", "1"), ("n1", "2"), ("n1", "3")]
    assert sidecar_devices(layout) == ["0", "1", "2", "3"]
    # The second DP replica's group on the node's other half, each rank bound to one GPU.
    ranks = [("n0", physical_device(v, 0)) for v in ("4", "5", "6", "7")]
    assert sidecar_devices(ranks) == ["4", "5", "6", "7"]
    assert sidecar_devices([("n0", "2"), ("n0", "2")]) == ["2"]  # shared device counted once
    assert sidecar_devices([("n0", None), ("n0", None)]) == []  # CPU
    assert sidecar_devices([]) == []


def test_tensor_parallel_size_spans_the_devices_that_split_the_heads():
    assert sidecar_tensor_parallel(0, 8, heads=32, kv_heads=8) == 8  # Llama/Qwen3-8B, TP x PP = 8
    assert sidecar_tensor_parallel(0, 4, heads=32, kv_heads=8) == 4
    assert sidecar_tensor_parallel(0, 8, heads=28, kv_heads=4) == 4  # 7 would not split them
    assert sidecar_tensor_parallel(0, 8, heads=32, kv_heads=2) == 8  # KV heads replicated
    assert sidecar_tensor_parallel(2, 8, heads=32, kv_heads=8) == 2
    assert sidecar_tensor_parallel(0, 0, heads=32, kv_heads=8) == 1  # CPU
    with pytest.raises(UsageError, match="has 4 GPU"):
        sidecar_tensor_parallel(8, 4, heads=32, kv_heads=8)
    with pytest.raises(UsageError, match="does not split"):
        sidecar_tensor_parallel(3, 4, heads=32, kv_heads=8)
    with pytest.raises(UsageError, match="needs GPUs"):
        sidecar_tensor_parallel(2, 0, heads=32, kv_heads=8)


def test_dtype_follows_the_policy_unless_set():
    assert sidecar_dtype(VLLMConfig(), "bf16") == "bfloat16"
    assert sidecar_dtype(VLLMConfig(), "fp32") == "float32"
    assert sidecar_dtype(VLLMConfig(dtype="float16"), "bf16") == "float16"


def test_cuda_graphs_on_gpu_eager_on_cpu_and_tp_workers():
    gpu = worker_options(VLLMConfig(), dtype="bfloat16", tensor_parallel_size=4, cuda=True,
                         max_model_len=4096)
    assert gpu == {"dtype": "bfloat16", "seed": 0, "enforce_eager": False,
                   "tensor_parallel_size": 4, "distributed_executor_backend": "mp",
                   "max_model_len": 4096, "gpu_memory_utilization": 0.5}
    cpu = worker_options(VLLMConfig(), dtype="float32", tensor_parallel_size=1, cuda=False)
    assert cpu["enforce_eager"] is True and cpu["distributed_executor_backend"] == "uni"
    assert "gpu_memory_utilization" not in cpu and "max_model_len" not in cpu
    forced = worker_options(VLLMConfig(enforce_eager=True), dtype="bfloat16",
                            tensor_parallel_size=1, cuda=True)
    assert forced["enforce_eager"] is True


def test_sidecar_env_pins_the_devices_and_drops_the_trainers_path():
    base = {"PYTHONPATH": "/trainer/site", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "X": "1"}
    env = sidecar_env(VLLMConfig(cpu_kv_cache_gib=3), ["4", "5"], base=base)
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5" and "PYTHONPATH" not in env and env["X"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "1"
    cpu = sidecar_env(VLLMConfig(), [], base={"CUDA_VISIBLE_DEVICES": ""}, offline=False)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and "HF_HUB_OFFLINE" not in cpu
