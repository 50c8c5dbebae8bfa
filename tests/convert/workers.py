"""Code run outside pytest's process: the conversion job (a plain process, through the CLI) and
the multi-rank workers (under torchrun via tests/multirank.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from tests.convert.fixtures import ARCHS, BATCH, SEQ, fixed_tokens


def megatron_logits(chunks: list[Any], tokens: torch.Tensor, vocab: int) -> torch.Tensor | None:
    """Full-vocabulary logits through Megatron's schedule (last pipeline stage; else None)."""
    from megatron.core import tensor_parallel

    from megatron_rlpt.runtime.step import run_forward_backward

    out: list[torch.Tensor] = []
    batch = {"tokens": tokens, "position_ids": torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1)}

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        output = model(input_ids=b["tokens"], position_ids=b["position_ids"], attention_mask=None)

        def loss_func(logits):
            full = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
            out.append(full[..., :vocab].float().detach().clone())
            zero = logits.sum() * 0
            return zero, torch.tensor(1), {"n": torch.stack([zero.detach(), torch.tensor(1.0)])}

        return output, loss_func

    with torch.no_grad():
        run_forward_backward(chunks, forward_step, iter([batch]), 1, BATCH, SEQ, forward_only=True)
    return out[0] if out else None


def load_and_run(root: str, pipeline_gather: bool = True) -> dict[str, Any]:
    """Build the model a converted root describes at the current layout, load it, run it."""
    from megatron_rlpt.convert import hf_named_tensors, load_model_config
    from megatron_rlpt.runtime.checkpoint import load_checkpoint
    from megatron_rlpt.runtime.model import build_model

    parallel = _current_parallel()
    cfg = load_model_config(root)
    built = build_model(cfg, parallel)
    load_checkpoint(root, built.chunks, restore_rng=False)
    tokens = fixed_tokens(cfg.vocab_size)
    return {
        "logits": megatron_logits(built.chunks, tokens, cfg.vocab_size),
        "push": dict(hf_named_tensors(built.chunks, cfg, gather_pipeline=pipeline_gather)),
        "push_local": [n for n, _ in hf_named_tensors(built.chunks, cfg)],
    }


def _current_parallel() -> Any:
    from megatron.core import parallel_state as ps

    from megatron_rlpt.runtime.distributed import ParallelConfig

    return ParallelConfig(tensor_parallel=ps.get_tensor_model_parallel_world_size(),
                          pipeline_parallel=ps.get_pipeline_model_parallel_world_size())


# ---- multi-rank workers ----------------------------------------------------------------


def forward_converted(roots: dict[str, str], tp: int, pp: int,
                      train: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load each converted root at TP×PP; logits (last stage) and pushed weights per arch.
    With `train` (keyword arguments of `train_and_save`), then also train and save a run."""
    from megatron_rlpt.runtime.distributed import (
        ParallelConfig,
        destroy_distributed,
        init_distributed,
    )

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_distributed(parallel)
    out = {arch: load_and_run(root) for arch, root in roots.items()}
    if train:
        out["trained"] = train_and_save(parallel, **train)
    destroy_distributed()
    return out


def train_and_save(parallel: Any, src_root: str, out_root: str, steps: int) -> dict[str, Any]:
    """What `rlpt train` does to a checkpoint: load converted weights, train, save, with the
    model config written into the checkpoint root. Reports the trained model's logits."""
    from megatron_rlpt.convert import load_model_config, save_model_config
    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint
    from megatron_rlpt.runtime.optim import OptimConfig
    from megatron_rlpt.runtime.step import next_token_forward_step, setup_training, train_step

    cfg = load_model_config(src_root)
    state = setup_training(cfg, parallel, OptimConfig(lr=3e-2, schedule="constant"),
                           total_steps=steps)
    load_checkpoint(src_root, state.chunks, restore_rng=False)
    metrics = []
    for step in range(steps):
        tokens = fixed_tokens(cfg.vocab_size, seed=10 + step)
        batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, dims=1),
                 "loss_mask": torch.ones(BATCH, SEQ),
                 "position_ids": torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1)}
        metrics.append(train_step(state, next_token_forward_step, iter([batch]), 1, BATCH, SEQ))
    save_checkpoint(out_root, steps, state.chunks, state.optimizer, state.scheduler,
                    trainer_state={"consumed_samples": steps * BATCH})
    if torch.distributed.get_rank() == 0:
        save_model_config(out_root, cfg)
    logits = megatron_logits(state.chunks, fixed_tokens(cfg.vocab_size), cfg.vocab_size)
    return {"logits": logits, "metrics": metrics}


# ---- the conversion job ----------------------------------------------------------------


def convert_all(base: Path) -> dict[str, Any]:
    """Every conversion the tests check, through the `rlpt convert` CLI in one process:
    per arch, HF -> Megatron with --tp 1 --pp 2 and with --tp 2, both back to HF; then the TP=1
    logits and pushed weights of the --tp 1 checkpoint. Last, Qwen3 with bf16 parameters."""
    from megatron_rlpt.cli import main
    from megatron_rlpt.convert.dist_io import single_process

    results: dict[str, Any] = {}
    for arch in ARCHS:
        hf = base / f"hf-{arch}"
        for tag, layout in (("tp1", ["--tp", "1", "--pp", "2"]), ("tp2", ["--tp", "2"])):
            ckpt, rt = base / f"mg-{tag}-{arch}", base / f"rt-{tag}-{arch}"
            assert main(["convert", "hf-to-megatron", "--hf", str(hf), "--out", str(ckpt),
                         *layout]) == 0
            assert main(["convert", "megatron-to-hf", "--ckpt", str(ckpt), "--out", str(rt),
                         "--max-shard-size", "50KB"]) == 0
        with single_process():
            results[arch] = load_and_run(str(base / f"mg-tp1-{arch}"))
    # bf16 parameters (Float16Module) through import, export and the weight push.
    bf16, rt = base / "mg-bf16-qwen3", base / "rt-bf16-qwen3"
    assert main(["convert", "hf-to-megatron", "--hf", str(base / "hf-qwen3"), "--out", str(bf16),
                 "--dtype", "bf16"]) == 0
    assert main(["convert", "megatron-to-hf", "--ckpt", str(bf16), "--out", str(rt)]) == 0
    with single_process():
        results["bf16"] = load_and_run(str(bf16))
    return results


if __name__ == "__main__":  # python -m tests.convert.workers BASE
    base = Path(sys.argv[1])
    torch.save(convert_all(base), base / "tp1.pt")
    print(json.dumps({"ok": True}))
