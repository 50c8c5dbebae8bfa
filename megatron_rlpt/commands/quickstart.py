"""`rlpt quickstart`: the CPU tour of what megatron-rlpt runs today.

Today it trains a tiny Megatron-Core GPT (next-token loss, Adam, cosine schedule) on a generated
arithmetic corpus with a byte-level vocabulary, saves an atomic dist-checkpoint, reloads it and
checks the reloaded model gives identical logits. The RLPT stages join when `rlpt train` lands.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="run the CPU quickstart (tiny Megatron model, training, checkpoint round trip)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="runs/quickstart", help="run directory (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40, help="training steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1234, help="random seed (default: %(default)s)")
    p.set_defaults(func=run)


def arithmetic_corpus(n: int, seed: int) -> list[str]:
    """Sentences whose last part follows from the first: `17 + 25 = 42.`"""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        out.append(f"{a} + {b} = {a + b}.")
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint
    from megatron_rlpt.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        init_distributed,
    )
    from megatron_rlpt.runtime.model import ModelConfig
    from megatron_rlpt.runtime.optim import OptimConfig
    from megatron_rlpt.runtime.step import (
        next_token_forward_step,
        run_forward_backward,
        setup_training,
        train_step,
    )

    if args.steps < 1:
        raise UsageError("--steps must be >= 1")
    out = Path(args.output)
    seq, batch_size = 64, 8
    text = " ".join(arithmetic_corpus(4000, args.seed)).encode()
    data = torch.tensor(list(text), dtype=torch.long)

    def batches(step: int) -> list[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(args.seed + step)
        starts = torch.randint(0, len(data) - seq - 1, (batch_size,), generator=gen)
        rows = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
        return [{
            "tokens": rows[:, :-1], "labels": rows[:, 1:], "loss_mask": torch.ones(batch_size, seq),
            "position_ids": torch.arange(seq).expand(batch_size, -1),
        }]

    parallel = ParallelConfig()
    init_distributed(parallel, seed=args.seed)
    model = ModelConfig(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                        num_query_groups=2, vocab_size=256, max_position_embeddings=seq)
    optim = OptimConfig(lr=3e-3, min_lr=3e-4, schedule="cosine", warmup_steps=5, weight_decay=0.0)
    state = setup_training(model, parallel, optim, total_steps=args.steps)

    print(f"megatron-rlpt quickstart: tiny GPTModel ({sum(p.numel() for p in state.chunks[0].parameters()):,} "
          f"parameters) on CPU, {args.steps} steps")
    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        metrics = train_step(state, next_token_forward_step, iter(batches(step)), 1, batch_size, seq)
        losses.append(metrics["lm_loss"])
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"  step {step:4d}  loss {metrics['lm_loss']:.4f}  grad_norm "
                  f"{metrics['grad_norm']:.3f}  lr {metrics['lr']:.2e}")
    train_s = time.time() - start

    ckpt = save_checkpoint(out / "checkpoints", args.steps, state.chunks, state.optimizer,
                           state.scheduler, trainer_state={"losses": losses})
    probe = batches(10**6)
    fresh = setup_training(model, parallel, optim, total_steps=args.steps)
    load_checkpoint(ckpt, fresh.chunks, fresh.optimizer, fresh.scheduler)
    with torch.no_grad():
        before = run_forward_backward(state.chunks, next_token_forward_step, iter(probe), 1,
                                      batch_size, seq, forward_only=True)["lm_loss"]
        after = run_forward_backward(fresh.chunks, next_token_forward_step, iter(probe), 1,
                                     batch_size, seq, forward_only=True)["lm_loss"]
    destroy_distributed()

    rows = [
        ("loss, first step", f"{losses[0]:.4f}"),
        ("loss, last step", f"{losses[-1]:.4f}"),
        ("training time", f"{train_s:.1f} s"),
        ("checkpoint", str(ckpt)),
        ("held-out loss before / after reload", f"{before:.6f} / {after:.6f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    if after != before:
        print("FAILED: the reloaded checkpoint gives a different loss")
        return 1
    print("\nThis quickstart exercises the Megatron runtime only (model, optimizer, checkpoint).\n"
          "RLPT itself (data preparation, rollouts, judge, GRPO) is not wired into it yet.")
    return 0
