"""Evaluation on the RLPT paper's benchmarks: loaders, prompts, answer checking, pass@k, reports.

Model-agnostic: `evaluate` takes any `megatron_rlpt.rollout.RolloutEngine`.
"""

from megatron_rlpt.eval.harness import EvalConfig, evaluate, load_items
from megatron_rlpt.eval.items import Item
from megatron_rlpt.eval.loaders import BENCHMARKS, PAPER_BENCHMARKS, load_benchmark
from megatron_rlpt.eval.passk import pass_at_k

__all__ = [
    "BENCHMARKS",
    "PAPER_BENCHMARKS",
    "EvalConfig",
    "Item",
    "evaluate",
    "load_benchmark",
    "load_items",
    "pass_at_k",
]
