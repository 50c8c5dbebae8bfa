"""`rlpt plan` on the paper's Qwen3-8B config against a hand calculation, and refused layouts.

The hand calculation below is written out from Qwen3-8B's published shapes with the usual
mixed-precision bookkeeping (bf16 weights, fp32 gradients, 12 bytes of fp32 Adam state per
parameter sharded over DP); it does not call the planner's helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_rlpt.cli import main as rlpt
from megatron_rlpt.config import TrainConfig
from megatron_rlpt.plan import GIB, ClusterSpec, make_plan, search_layouts
from megatron_rlpt.utils.config import load_config
from tests.multirank import REPO_ROOT

QWEN3_8B = REPO_ROOT / "examples" / "rlpt_qwen3_8b.yaml"


def hand_qwen3_8b(nodes: int) -> dict[str, float]:
    """Bytes per GPU and seconds per step for Qwen3-8B RLPT at TP=4, PP=1 on `nodes` × 8 GPUs."""
    h, layers, ffn, heads, kv_heads, head_dim, vocab = 4096, 36, 12288, 32, 8, 128, 151936
    tp, gpus = 4, nodes * 8
    dp = gpus // tp
    q, kv = heads * head_dim, kv_heads * head_dim  # 4096, 1024
    vocab_padded = -(-vocab // (128 * tp)) * 128 * tp  # Megatron pads to a multiple of 128·TP
    assert vocab_padded == 152064
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * ffn + 2 * h + 2 * head_dim
    params = layers * per_layer + 2 * vocab_padded * h + h  # untied input and output embeddings
    assert abs(params - 8.19e9) < 0.01e9  # Qwen3-8B: 8.2 B parameters
    per_gpu = params / tp  # norms are replicated, not split, but they are 0.004% of the total
    seq = 4096 + 8192  # prompt + response
    # Saved per token per layer (bf16 = 2 bytes): 4 hidden-width tensors (two norm inputs, the
    # QKV and FC1 inputs), Q/K/V after rotary + attention output (2q + 2kv), QK-norm inputs
    # (q + kv), SwiGLU's FC1 output, silu(gate) and FC2 input (4·ffn); all but the first split by TP.
    act_token_layer = 2 * (4 * h + (2 * q + 2 * kv + q + kv + 4 * ffn) / tp)
    activations = act_token_layer * layers * seq  # micro-batch 1, no pipeline in flight
    logits = 2 * 2 * vocab_padded / tp * seq + 12 * 1024 * vocab_padded / tp
    kv_per_sequence = 2 * layers * kv_heads * head_dim * 2 * seq / tp
    weights, grads, optimizer = 2 * per_gpu, 4 * per_gpu, 12 * per_gpu / dp
    sequences = 512 * 8
    fwd_flops = 2 * (layers * (h * (q + 2 * kv) + q * h + 3 * h * ffn) + vocab_padded * h) \
        + 2 * layers * q * seq
    train_s = sequences * seq * 3 * fwd_flops / (gpus * 989e12 * 0.35)
    rollout_s = max(sequences * 8192 / (gpus * 0.05 * 989e12 / fwd_flops), 8192 * 0.015)
    return dict(weights=weights, grads=grads, optimizer=optimizer, activations=activations,
                logits=logits, train_peak=weights + grads + optimizer + activations + logits,
                kv_per_sequence=kv_per_sequence, train_s=train_s, rollout_s=rollout_s, dp=dp)


def load(path: Path = QWEN3_8B, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, path, list(overrides))


@pytest.mark.parametrize("nodes", [1, 16, 128])
def test_qwen3_8b_matches_hand_calculation(nodes: int):
    plan = make_plan(load(), ClusterSpec(nodes=nodes, gpus_per_node=8))
    hand = hand_qwen3_8b(nodes)
    assert plan.feasible, plan.errors
    assert (plan.tp, plan.pp, plan.dp) == (4, 1, hand["dp"])
    (gpu,) = plan.stages
    for name in ("weights", "grads", "optimizer", "activations", "logits", "train_peak"):
        got = getattr(gpu, name)
        assert got == pytest.approx(hand[name], rel=0.10), name
    assert plan.kv_bytes_per_sequence == pytest.approx(hand["kv_per_sequence"], rel=0.10)
    assert plan.train_s == pytest.approx(hand["train_s"], rel=0.10)
    assert plan.rollout_s == pytest.approx(hand["rollout_s"], rel=0.10)
    # The colocated engine's KV cache holds what memory is left: a positive number of sequences,
    # and the rollout peak stays within the usable memory.
    usable = (80 - 5) * GIB
    assert plan.rollout_capacity >= 8
    assert gpu.rollout_peak <= usable and gpu.train_peak <= usable


def test_more_nodes_shard_the_optimizer_and_shorten_the_step():
    plans = [make_plan(load(), ClusterSpec(nodes=n, gpus_per_node=8)) for n in (1, 16, 128)]
    optimizer = [p.stages[0].optimizer for p in plans]
    assert optimizer[0] > optimizer[1] > optimizer[2]
    assert plans[0].step_s > plans[1].step_s > plans[2].step_s
    # The longest response bounds the rollout however many GPUs there are.
    assert plans[2].rollout_s >= 8192 * 0.015


def test_without_distributed_optimizer_states_do_not_shrink_with_dp():
    a = make_plan(load(QWEN3_8B, "optim.distributed_optimizer=false"),
                  ClusterSpec(nodes=16, gpus_per_node=8))
    b = make_plan(load(QWEN3_8B, "optim.distributed_optimizer=false"),
                  ClusterSpec(nodes=1, gpus_per_node=8))
    assert a.stages[0].optimizer == b.stages[0].optimizer == pytest.approx(
        12 * a.stages[0].params)


@pytest.mark.parametrize("overrides, nodes, reasons", [
    (["parallel.tensor_parallel=3"], 1,
     ["num_attention_heads 32 is not divisible by TP 3", "num_query_groups 8 is not divisible by TP 3",
      "world size 8"]),
    (["parallel.tensor_parallel=16"], 2, ["num_query_groups 8 is not divisible by TP 16"]),
    (["parallel.pipeline_parallel=5", "rollout.engine=sglang"], 5,
     ["num_layers 36 is not divisible by PP 5"]),
    ([], 3, ["batch.prompts_per_step 512 is not divisible by DP 6"]),
    (["parallel.pipeline_parallel=2"], 1, ["in-process rollout engine"]),
    (["rollout.max_prompt_tokens=40000"], 1, ["exceed max_position_embeddings 40960"]),
    (["parallel.tensor_parallel=2"], 1, ["training needs", "try full activation recompute"]),
])
def test_infeasible_layouts_are_refused_with_reasons(overrides, nodes, reasons):
    overrides = list(overrides)
    if "parallel.pipeline_parallel=2" in overrides:
        overrides.append("rollout.engine=megatron")
    plan = make_plan(load(QWEN3_8B, *overrides), ClusterSpec(nodes=nodes, gpus_per_node=8))
    assert not plan.feasible
    for reason in reasons:
        assert any(reason in e for e in plan.errors), (reason, plan.errors)


def test_recompute_and_memory_size_decide_feasibility():
    cfg = load(QWEN3_8B, "parallel.tensor_parallel=2")
    assert not make_plan(cfg, ClusterSpec(nodes=1, gpus_per_node=8)).feasible
    assert make_plan(cfg, ClusterSpec(nodes=1, gpus_per_node=8, recompute="full")).feasible
    assert make_plan(cfg, ClusterSpec(nodes=1, gpus_per_node=8, gpu_memory_gib=141)).feasible
    small = make_plan(load(), ClusterSpec(nodes=1, gpus_per_node=8, gpu_memory_gib=24))
    assert any("training needs" in e for e in small.errors)


def test_rollout_batch_that_does_not_fit_is_refused():
    fits = make_plan(load(), ClusterSpec(nodes=16, gpus_per_node=8))
    too_many = make_plan(load(), ClusterSpec(nodes=16, gpus_per_node=8,
                                             rollout_batch=fits.rollout_capacity + 1))
    assert any("KV" in e for e in too_many.errors)
    ok = make_plan(load(), ClusterSpec(nodes=16, gpus_per_node=8, rollout_batch=32))
    assert ok.feasible and ok.stages[0].kv_cache == pytest.approx(32 * ok.kv_bytes_per_sequence)


def test_external_rollout_servers_take_no_trainer_memory():
    plan = make_plan(load(QWEN3_8B, "rollout.engine=sglang"), ClusterSpec(nodes=1, gpus_per_node=8))
    assert plan.rollout_capacity is None and plan.stages[0].kv_cache == 0


def test_pipeline_stages_differ():
    cfg = load(QWEN3_8B, "parallel.pipeline_parallel=4", "rollout.engine=sglang")
    plan = make_plan(cfg, ClusterSpec(nodes=4, gpus_per_node=8))
    assert plan.feasible, plan.errors
    first, *_, last = plan.stages
    # The first stage keeps 4 micro-batches in flight (1F1B); the last one has the logits.
    assert first.activations == pytest.approx(4 * last.activations)
    assert last.logits > 0 and first.logits == 0
    # Untied: the embedding on the first, the output layer (same size) and final norm on the last.
    assert last.params - first.params == 4096


def test_search_lists_only_feasible_layouts():
    plans = search_layouts(load(QWEN3_8B, "parallel.tensor_parallel=2"),
                           ClusterSpec(nodes=1, gpus_per_node=8))
    assert plans and all(p.feasible for p in plans)
    assert (4, 1) in [(p.tp, p.pp) for p in plans]
    assert (2, 1) not in [(p.tp, p.pp) for p in plans]


def test_cli_feasible_and_infeasible(capsys):
    assert rlpt(["plan", "--config", str(QWEN3_8B), "--nodes", "16", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "TP=4 PP=1 CP=1 DP=32" in out and "optimizer states" in out and "feasible" in out

    code = rlpt(["plan", "--config", str(QWEN3_8B), "--nodes", "1", "--gpus-per-node", "8",
                 "parallel.tensor_parallel=3"])
    captured = capsys.readouterr()
    assert code == 1
    assert "infeasible: num_attention_heads 32 is not divisible by TP 3" in captured.err
    assert "feasible layouts on this cluster" in captured.out

    assert rlpt(["plan", "--config", str(QWEN3_8B), "--nodes", "0", "--gpus-per-node", "8"]) == 2


def test_cli_json_and_tool_wrapper():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "plan_cluster.py"), "--config", str(QWEN3_8B),
         "--nodes", "128", "--gpus-per-node", "8", "--json", "--throughput", "2000"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)["plan"]
    assert plan["feasible"] and plan["dp"] == 256
    # A measured throughput replaces the MFU estimate: 50.3 M tokens on 1024 GPUs at 2000 tok/s.
    assert plan["train_s"] == pytest.approx(512 * 8 * 12288 / (1024 * 2000))
