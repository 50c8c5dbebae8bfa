"""Functions run on every rank by tests/multirank.py (under torchrun, gloo, CPU)."""

from __future__ import annotations

from typing import Any

import torch

from megatron_rlpt.runtime.distributed import ParallelConfig, destroy_distributed, init_distributed
from megatron_rlpt.runtime.model import ModelConfig
from megatron_rlpt.runtime.optim import OptimConfig

VOCAB = 500
SEQ = 24
BATCH = 4


def tiny_model(arch: str = "llama") -> ModelConfig:
    """A model small enough for 4 CPU processes, with every architectural switch exercised."""
    return ModelConfig(
        architecture=arch,
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=24 if arch == "qwen3" else None,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        add_qkv_bias=arch == "qwen2",
        qk_layernorm=arch == "qwen3",
        tie_embeddings=arch != "llama",
        rope_scaling={"factor": 8.0, "original_max_position_embeddings": 32} if arch == "llama" else None,
        rotary_base=10000.0,
    )


def fixed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """The same token batch on every rank and in every layout."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    loss_mask = torch.ones(BATCH, SEQ)
    loss_mask[:, : SEQ // 4] = 0  # a masked prompt, as in SFT/RL batches
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "loss_mask": loss_mask,
        "position_ids": torch.arange(SEQ).unsqueeze(0).expand(BATCH, -1).contiguous(),
    }


def _dp_microbatches(batch: dict[str, torch.Tensor], micro: int) -> list[dict[str, torch.Tensor]]:
    """This data-parallel rank's share of `batch`, cut into micro-batches of `micro` rows."""
    from megatron.core import parallel_state as ps

    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = BATCH // dp
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    mine = {k: v[rows] for k, v in batch.items()}
    return [{k: v[i : i + micro] for k, v in mine.items()} for i in range(0, per_rank, micro)]


def _forward_logits(state_chunks: list[Any], micro: int = 2) -> tuple[torch.Tensor | None, float]:
    """Full-vocabulary logits (last stage only, else None) and the masked next-token loss."""
    from megatron.core import tensor_parallel

    from megatron_rlpt.runtime.step import next_token_loss, run_forward_backward

    batches = _dp_microbatches(fixed_batch(), micro)
    logits: list[torch.Tensor] = []

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        out = model(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)

        def loss_func(output):
            full = tensor_parallel.gather_from_tensor_model_parallel_region(output)
            full = full[..., :VOCAB].float()
            logits.append(full.detach().clone())
            ce = torch.nn.functional.cross_entropy(
                full.reshape(-1, VOCAB), batch["labels"].reshape(-1), reduction="none"
            )
            return next_token_loss(batch["loss_mask"], ce)

        return out, loss_func

    with torch.no_grad():
        metrics = run_forward_backward(state_chunks, forward_step, iter(batches), len(batches),
                                       micro, SEQ, forward_only=True)
    return (torch.cat(logits) if logits else None), metrics["lm_loss"]


def _setup(arch: str, tp: int, pp: int, dist_opt: bool = False, seed: int = 1234):
    from megatron_rlpt.runtime.step import setup_training

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_distributed(parallel, seed=seed)
    optim = OptimConfig(lr=1e-2, schedule="constant", clip_grad=1.0, weight_decay=0.01,
                        distributed_optimizer=dist_opt)
    return setup_training(tiny_model(arch), parallel, optim, total_steps=10)


def _train_steps(state, steps: int, micro: int = 1) -> list[dict[str, float]]:
    from megatron_rlpt.runtime.step import next_token_forward_step, train_step

    out = []
    for s in range(steps):
        batches = _dp_microbatches(fixed_batch(seed=100 + s), micro)
        out.append(train_step(state, next_token_forward_step, iter(batches), len(batches),
                              micro, SEQ))
    return out


def _gathered_weights(state) -> dict[str, torch.Tensor]:
    """Full (TP-gathered) weights of this PP stage, by parameter name."""
    from megatron.core import parallel_state as ps

    out = {}
    group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    for name, p in state.chunks[0].module.named_parameters():
        t = p.detach().float()
        if tp > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(tp)]
            torch.distributed.all_gather(parts, t.contiguous(), group=group)
            t = torch.cat(parts, dim=p.partition_dim)
        out[name] = t
    return out


# ---- workers ---------------------------------------------------------------------------


def save_reference(ckpt: str, arch: str) -> dict[str, Any]:
    """TP=1 reference: random init, save, report logits and loss."""
    from megatron_rlpt.runtime.checkpoint import save_checkpoint

    state = _setup(arch, 1, 1)
    save_checkpoint(ckpt, 0, state.chunks, trainer_state={"note": "reference"})
    logits, loss = _forward_logits(state.chunks)
    destroy_distributed()
    return {"logits": logits, "loss": loss}


def load_and_forward(ckpt: str, arch: str, tp: int, pp: int) -> dict[str, Any]:
    """Load a checkpoint at the given layout and report logits (last stage) and loss."""
    from megatron_rlpt.runtime.checkpoint import load_checkpoint

    state = _setup(arch, tp, pp, seed=99)  # a different init, overwritten by the load
    trainer_state = load_checkpoint(ckpt, state.chunks)
    logits, loss = _forward_logits(state.chunks)
    destroy_distributed()
    return {"logits": logits, "loss": loss, "step": trainer_state["step"]}


def train_from(ckpt: str, arch: str, tp: int, pp: int, dist_opt: bool, steps: int,
               micro: int = 1) -> dict[str, Any]:
    """Load the reference weights, take optimizer steps, report metrics and updated weights."""
    from megatron_rlpt.runtime.checkpoint import load_checkpoint

    state = _setup(arch, tp, pp, dist_opt=dist_opt)
    load_checkpoint(ckpt, state.chunks)
    metrics = _train_steps(state, steps, micro=micro)
    weights = _gathered_weights(state)
    destroy_distributed()
    return {"metrics": metrics, "weights": weights}


def train_and_save(ckpt: str, arch: str, tp: int, pp: int, dist_opt: bool) -> dict[str, Any]:
    """Train two steps at this layout, save with optimizer state, report logits after saving."""
    from megatron_rlpt.runtime.checkpoint import save_checkpoint

    state = _setup(arch, tp, pp, dist_opt=dist_opt)
    _train_steps(state, 2)
    save_checkpoint(ckpt, 2, state.chunks, state.optimizer, state.scheduler,
                    trainer_state={"consumed_samples": 2 * BATCH})
    logits, loss = _forward_logits(state.chunks)
    destroy_distributed()
    return {"logits": logits, "loss": loss}


def resume_and_train(ckpt: str, arch: str, tp: int, pp: int, dist_opt: bool, steps: int) -> dict:
    """Load model + optimizer + scheduler, continue training, report metrics and weights."""
    from megatron_rlpt.runtime.checkpoint import load_checkpoint

    state = _setup(arch, tp, pp, dist_opt=dist_opt, seed=7)
    trainer_state = load_checkpoint(ckpt, state.chunks, state.optimizer, state.scheduler)
    metrics = []
    for s in range(steps):
        from megatron_rlpt.runtime.step import next_token_forward_step, train_step

        batches = _dp_microbatches(fixed_batch(seed=100 + trainer_state["step"] + s), 1)
        metrics.append(train_step(state, next_token_forward_step, iter(batches), len(batches), 1, SEQ))
    weights = _gathered_weights(state)
    destroy_distributed()
    return {"metrics": metrics, "weights": weights, "trainer_state": trainer_state}


def rank_layout(tp: int, pp: int) -> dict[str, int]:
    """Init from the launcher's environment and report this rank's coordinates."""
    from megatron_rlpt.runtime.distributed import rank_info

    launch = init_distributed(ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp))
    info = rank_info()
    destroy_distributed()
    return {"rank": info.rank, "world": info.world_size, "tp_rank": info.tp_rank,
            "pp_rank": info.pp_rank, "dp_rank": info.dp_rank, "dp_size": info.dp_size,
            "local_rank": launch.local_rank, "launcher": launch.launcher}


def train_from_and_save(ckpt: str, out: str, arch: str, dist_opt: bool, steps: int) -> dict:
    """Load the reference weights, train `steps` steps at DP=world, save with optimizer state."""
    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint

    state = _setup(arch, 1, 1, dist_opt=dist_opt)
    load_checkpoint(ckpt, state.chunks)
    _train_steps(state, steps)
    save_checkpoint(out, steps, state.chunks, state.optimizer, state.scheduler)
    destroy_distributed()
    return {}



def bf16_vs_fp32(arch: str) -> dict[str, Any]:
    """The same weights in fp32 and bf16 (Float16Module): logits agree to bf16 precision."""
    import dataclasses

    from megatron_rlpt.runtime.model import build_model

    init_distributed(ParallelConfig(), seed=3)
    cfg = tiny_model(arch)
    fp32 = build_model(cfg).chunks[0]
    bf16 = build_model(dataclasses.replace(cfg, params_dtype="bf16")).chunks[0]
    bf16.module.load_state_dict({k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()
                                 if not k.endswith("_extra_state")}, strict=False)
    batch = fixed_batch()
    with torch.no_grad():
        a = fp32(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)
        b = bf16(input_ids=batch["tokens"], position_ids=batch["position_ids"], attention_mask=None)
    inv_freq = fp32.rotary_pos_emb.inv_freq.clone()
    destroy_distributed()
    return {"fp32": a, "bf16": b, "bf16_dtype": str(next(bf16.parameters()).dtype),
            "inv_freq": inv_freq}
