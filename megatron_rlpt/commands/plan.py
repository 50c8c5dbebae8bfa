"""`rlpt plan`: check a training config's layout on a cluster; estimate memory per GPU and step time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="check a config's TP/PP/DP layout on N nodes and estimate memory and step time",
        description=(
            "Validate the parallel layout of a training config on NODES × GPUS (heads, query "
            "groups, layers, vocabulary vs TP/PP; DP from the world size; batch divisibility), "
            "estimate memory per GPU (weights, gradients, optimizer states, activations, logits, "
            "rollout KV cache) and the step time from per-GPU throughput figures, and print a "
            "table. Exit status 0: feasible; 1: infeasible (reasons printed); 2: bad arguments. "
            "The formulas are in docs/cluster.md."
        ),
    )
    p.add_argument("--config", required=True, help="YAML training config (as for rlpt train)")
    p.add_argument("--nodes", type=int, required=True, help="nodes in the job")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node")
    p.add_argument("--gpu-memory", type=float, default=80.0,
                   help="GiB per GPU (default: %(default)s; H200: 141)")
    p.add_argument("--reserve", type=float, default=5.0,
                   help="GiB kept back for CUDA context, NCCL and fragmentation (default: %(default)s)")
    p.add_argument("--recompute", choices=("none", "full", "selective"),
                   help="activation recompute to assume (default: the config's, else none)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak per GPU (default: %(default)s, H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.35,
                   help="training model-FLOPs utilisation (default: %(default)s)")
    p.add_argument("--throughput", type=float,
                   help="measured training tokens/s/GPU (overrides --mfu)")
    p.add_argument("--rollout-mfu", type=float, default=0.05,
                   help="generation FLOPs utilisation (default: %(default)s)")
    p.add_argument("--rollout-throughput", type=float,
                   help="measured generated tokens/s/GPU (overrides --rollout-mfu)")
    p.add_argument("--rollout-gpus", type=int,
                   help="GPUs generating rollouts (default: the training GPUs)")
    p.add_argument("--rollout-batch", type=int,
                   help="sequences decoded at once per engine replica (default: what fits)")
    p.add_argument("--decode-ms", type=float, default=15.0,
                   help="ms per decoding step; generation takes at least max_new_tokens × this "
                        "(default: %(default)s)")
    p.add_argument("--mean-prompt-tokens", type=int, help="average prompt length (default: max)")
    p.add_argument("--mean-response-tokens", type=int,
                   help="average response length (default: max; the paper's runs average less)")
    p.add_argument("--search", action="store_true",
                   help="also list the feasible TP × PP layouts for this cluster, fastest first")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.plan import ClusterSpec, format_plan, make_plan, search_layouts
    from megatron_rlpt.utils.config import load_config

    cfg = load_config(TrainConfig, args.config, args.overrides)
    cfg = _init_model(cfg, args)
    cluster = ClusterSpec(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory,
        reserve_gib=args.reserve, peak_tflops=args.peak_tflops, train_mfu=args.mfu,
        train_tokens_per_gpu_s=args.throughput, rollout_mfu=args.rollout_mfu,
        rollout_tokens_per_gpu_s=args.rollout_throughput, rollout_gpus=args.rollout_gpus,
        rollout_batch=args.rollout_batch, decode_step_ms=args.decode_ms,
        recompute=args.recompute,
        mean_prompt_tokens=args.mean_prompt_tokens, mean_response_tokens=args.mean_response_tokens,
    )
    plan = make_plan(cfg, cluster, config_name=args.config)
    alternatives = search_layouts(cfg, cluster) if args.search or not plan.feasible else []
    if args.json:
        print(json.dumps({"plan": plan.to_dict(),
                          "alternatives": [p.to_dict() for p in alternatives]}, indent=2))
    else:
        print(format_plan(plan, cfg.run.steps))
        if alternatives:
            print("\nfeasible layouts on this cluster (fastest first):")
            print(f"  {'TP':>3} {'PP':>3} {'DP':>5} {'train GiB':>10} {'KV room':>8} {'step':>10}")
            for alt in alternatives:
                train_gib = max(s.train_peak for s in alt.stages) / 2**30
                room = "-" if alt.rollout_capacity is None else str(alt.rollout_capacity)
                print(f"  {alt.tp:>3} {alt.pp:>3} {alt.dp:>5} {train_gib:>10.1f} {room:>8} "
                      f"{alt.step_s:>9.1f}s")
        elif not plan.feasible:
            print("\nno TP × PP layout of this config fits this cluster")
    if not plan.feasible:
        for reason in plan.errors:
            print(f"rlpt plan: infeasible: {reason}", file=sys.stderr)
        return 1
    return 0


def _init_model(cfg: Any, args: argparse.Namespace) -> Any:
    """The config with the architecture `rlpt train` would take from run.init_from (the same
    merge); planned from the `model:` section, with a note, while that checkpoint does not exist
    yet (e.g. the previous stage has not run)."""
    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.runtime.checkpoint import resolve_checkpoint
    from megatron_rlpt.train import resolve_init_model
    from megatron_rlpt.utils.config import given_keys

    if not cfg.run.init_from:
        return cfg
    try:
        resolve_checkpoint(cfg.run.init_from)
    except UsageError as err:
        print(f"rlpt plan: note: planning the model: section; run.init_from is not readable "
              f"here ({err})", file=sys.stderr)
        return cfg
    fields = set(given_keys(args.config, args.overrides).get("model") or {})
    return resolve_init_model(cfg, model_fields=fields)[0]
