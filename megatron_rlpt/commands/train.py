"""`rlpt train`: pretrain / SFT / RLPT / RLVR on Megatron-Core, under torchrun or srun."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (stages: pretrain, sft, rlpt, rlvr)",
        description=(
            "Train on Megatron-Core. Launch one process per GPU (or CPU rank) with torchrun or "
            "srun; a single process needs no launcher. The YAML config mirrors "
            "megatron_rlpt.config.TrainConfig (see docs/config.md); key=value arguments override "
            "it, e.g. optim.lr=1e-6 run.steps=10. A run directory with checkpoints is resumed."
        ),
    )
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.train import train
    from megatron_rlpt.utils.config import given_keys, load_config

    cfg = load_config(TrainConfig, args.config, args.overrides)
    # What the user wrote under model: decides what may differ from run.init_from's checkpoint.
    train(cfg, model_fields=set(given_keys(args.config, args.overrides).get("model") or {}))
    return 0
