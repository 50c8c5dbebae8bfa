"""`rlpt plan` against independent references, and refused layouts.

- Parameters: every rank's share of a real Megatron `GPTModel`, built by the trainer's own
  `build_model` on the meta device (shapes only, so an 8B model costs no memory), for the three
  paper models at TP=1, TP=2 and PP=2; the planner must count them exactly.
- Activations: tensor bytes alive at the end of a real training-mode forward pass of tiny models
  on CPU (`LiveBytes`, which tracks every storage an operation allocates until it is freed), at 2
  and 4 layers; half the difference is what one layer keeps for backward. This runs the local
  (unfused) layer spec, the one a CPU has; Transformer Engine's fused attention needs a GPU and
  is not measured here. Two CPU-only differences are allowed for, by formula, and bound the
  comparison: torch's composite RMSNorm on CPU saves its input upcast to fp32, the fp32
  normalised input and the fp32 rstd (the fused kernels save the input and rstd only), and a
  saved view can keep its whole base alive (fp32 QK-norm or V without GQA pin the QKV matmul's
  output: at most e·(q + 2k) bytes per token per layer, on top of the view's own width).
- Model states and step time are definitions (bytes per parameter, FLOPs / throughput), not
  estimates; they are checked against those definitions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_rlpt.cli import main as rlpt
from megatron_rlpt.config import TrainConfig
from megatron_rlpt.plan import (
    GIB,
    ClusterSpec,
    activation_bytes_per_token,
    forward_flops_per_token,
    make_plan,
    search_layouts,
    stage_params,
    total_params,
)
from megatron_rlpt.runtime.model import ModelConfig
from megatron_rlpt.utils.config import load_config
from tests.multirank import REPO_ROOT, run_multirank

EXAMPLES = REPO_ROOT / "examples"
QWEN3_8B = EXAMPLES / "rlpt_qwen3_8b.yaml"
PAPER_MODELS = [EXAMPLES / f"rlpt_{name}.yaml" for name in ("llama3.2_3b", "qwen3_4b", "qwen3_8b")]


def load(path: Path = QWEN3_8B, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, path, list(overrides))


@pytest.mark.multirank
@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_parameters_match_megatron_gpt_model(tp: int, pp: int):
    """Tied embeddings (Llama-3.2-3B, Qwen3-4B), QK-norm (Qwen3), untied (Qwen3-8B); replicated
    norms under TP; the last stage's copy of a tied embedding under PP."""
    counts = run_multirank("tests.scale.plan_workers:param_counts", nproc=tp * pp,
                           configs=[str(p) for p in PAPER_MODELS], tp=tp, pp=pp)
    for rank, got in enumerate(counts):
        stage = rank // tp  # Megatron's rank order is TP fastest, then DP, then PP
        for path in PAPER_MODELS:
            model = load(path).model
            assert got[str(path)] == stage_params(model, tp, pp, stage), (path.name, rank)
    if (tp, pp) == (1, 1):
        for path in PAPER_MODELS:
            assert counts[0][str(path)] == total_params(load(path).model)
        # The published sizes: 3.21 B, 4.02 B, 8.19 B (Qwen3-8B's vocabulary padded to 152,064).
        assert [round(counts[0][str(p)] / 1e9, 2) for p in PAPER_MODELS] == [3.21, 4.02, 8.19]


TINY = dict(hidden_size=64, ffn_hidden_size=160, num_attention_heads=4, num_query_groups=2,
            kv_channels=32, vocab_size=512, max_position_embeddings=256, transformer_impl="local")
MEASURED = [  # (fields, TP)
    (dict(TINY, params_dtype="bf16"), 1),
    (dict(TINY, params_dtype="fp32"), 1),
    (dict(TINY, params_dtype="bf16", architecture="qwen3", qk_layernorm=True), 1),
    (dict(TINY, params_dtype="fp32", architecture="qwen3", qk_layernorm=True), 1),
    (dict(TINY, params_dtype="fp32", num_query_groups=4), 1),  # no GQA: V is a view
    (dict(TINY, params_dtype="bf16"), 2),
]
SEQ, MICRO_BATCH = 64, 2


@pytest.fixture(scope="module")
def measured_activations() -> list[dict[str, int]]:
    tp1 = run_multirank("tests.scale.plan_workers:activation_bytes", nproc=1, seq_length=SEQ,
                        micro_batch=MICRO_BATCH, models=[f for f, tp in MEASURED if tp == 1])[0]
    tp2 = run_multirank("tests.scale.plan_workers:activation_bytes", nproc=2, tp=2,
                        seq_length=SEQ, micro_batch=MICRO_BATCH,
                        models=[f for f, tp in MEASURED if tp == 2])[0]
    return tp1 + tp2


def _cpu_norms_extra(m: ModelConfig, tp: int) -> float:
    """Bytes per token per layer that the CPU's composite RMSNorm saves beyond the fused one:
    the input upcast to fp32 (4 − e more per element), the fp32 normalised input (4 per element)
    and the fp32 rstd (4 per normalised vector)."""
    e = 2 if m.params_dtype == "bf16" else 4
    h, head_dim = m.hidden_size, m.kv_channels
    extra = 2 * ((8 - e) * h + 4)  # the two layer norms (not split by TP without SP)
    if m.qk_layernorm:
        heads, groups = m.num_attention_heads // tp, m.num_query_groups // tp
        extra += (8 - e) * (heads + groups) * head_dim + 4 * (heads + groups)
    return extra


@pytest.mark.multirank
@pytest.mark.parametrize("case", range(len(MEASURED)))
def test_activations_match_a_measured_forward_pass(measured_activations, case: int):
    fields, tp = MEASURED[case]
    m = ModelConfig(**fields)
    row = measured_activations[case]
    measured = (row["forward_4"] - row["forward_2"]) / 2 / (SEQ * MICRO_BATCH)
    planned = activation_bytes_per_token(m, tp, SEQ, False, "none", MICRO_BATCH)
    expected = planned + _cpu_norms_extra(m, tp)
    e = 2 if m.params_dtype == "bf16" else 4
    q, k = m.num_attention_heads * m.kv_channels, m.num_query_groups * m.kv_channels
    pinned = e * (q + 2 * k) / tp  # a saved view keeping the QKV output alive
    print(f"case {case}: measured {measured:.0f} B/token/layer, planner {planned:.0f} + CPU norms "
          f"{_cpu_norms_extra(m, tp):.0f} = {expected:.0f}")
    assert expected <= measured <= expected + pinned
    assert measured - expected < 0.15 * measured  # the allowance is small beside the figure


def test_model_states_and_step_time_follow_their_definitions():
    """Bytes per parameter (bf16 weights, fp32 gradients, 12 bytes of fp32 Adam state sharded
    over DP) and FLOPs over throughput, on the paper's Qwen3-8B at TP=4 on 16 nodes."""
    cfg = load()
    plan = make_plan(cfg, ClusterSpec(nodes=16, gpus_per_node=8))
    assert plan.feasible, plan.errors
    assert (plan.tp, plan.pp, plan.dp) == (4, 1, 32)
    (gpu,) = plan.stages
    n = stage_params(cfg.model, 4, 1, 0)
    assert (gpu.params, gpu.weights, gpu.grads, gpu.optimizer) == (n, 2 * n, 4 * n, 12 * n / 32)
    seq = 4096 + 8192
    per_token = activation_bytes_per_token(cfg.model, 4, seq, False, "none", 1)
    assert gpu.activations == pytest.approx(36 * per_token * seq)
    sequences = 512 * 8
    fwd = forward_flops_per_token(cfg.model, seq)
    assert plan.train_s == pytest.approx(sequences * seq * 3 * fwd / (128 * 989e12 * 0.35))
    assert plan.rollout_s == pytest.approx(max(sequences * 8192 / (128 * 0.05 * 989e12 / fwd),
                                               8192 * 0.015))
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
