#!/usr/bin/env python
"""GPU acceptance run: checks and measures the Megatron path on CUDA in bf16 (`run.sh` runs it).

    python benchmarks/gpu/bench.py --out DIR [--cpu-dry-run] [--only a,b] [--budget-s 450]

Each section runs in a process of its own with its own time limit, so a crash, a CUDA error or a
hang in one is recorded as that section's error and the others still run:

- `env`: device, Python, torch, CUDA, megatron-core and Transformer Engine versions; which of
  Megatron's fusions have their kernels here.
- `train_step`: TP=1 bf16 training steps on one fixed batch (loss must fall), step time with the
  fusions on (the default) and with every fusion off.
- `checkpoint`: dist-checkpoint save (model, optimizer, scheduler) and load into a model built
  from another seed; the logits after loading must equal those before saving.
- `rl_step`: `rlpt train` stage `rlpt` (in-process Megatron rollouts, rule judge, GRPO) for two
  steps on a small prepared dataset written here.
- `mfu`: train-phase model FLOPs utilisation on the largest of a list of models that fits.
- `decode`: tokens/s of the in-process Megatron engine (KV cache, sampling).
- `logprob_memory`: peak memory of log-probs + policy loss + backward, chunked against naive
  (benchmarks/logprob_memory.py), measured by the CUDA allocator.

Writes `DIR/gpu.json` (every section's figures or error) and `DIR/gpu.md` (the block for
docs/performance.md). `--cpu-dry-run` runs the same code on tiny models on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from megatron_rlpt.utils.io import atomic_write_text  # noqa: E402

SECTIONS = ("env", "train_step", "checkpoint", "rl_step", "mfu", "decode", "logprob_memory")
# Seconds each section may take on the GPU, and the whole run's budget: a device session has 15
# minutes, so one run (plus the machine's start) must leave room for a rerun.
GPU_LIMITS = {"env": 30, "train_step": 60, "checkpoint": 45, "rl_step": 60, "mfu": 100,
              "decode": 30, "logprob_memory": 30}
GPU_BUDGET_S = 360
# bf16 dense peak of the H200's tensor cores (NVIDIA's data sheet, without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}

# Model shapes. GPU: a few hundred million parameters for the checks; MFU tries Llama-3.2-3B's
# shape first, then smaller ones. CPU: tiny, so the dry run takes seconds per section.
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "check": dict(num_layers=4, hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=16,
                      num_query_groups=8, vocab_size=32000, max_position_embeddings=2048),
        "check_batch": (8, 1024),  # sequences per step, sequence length
        "mfu": [
            ("Llama-3.2-1B shape", dict(num_layers=16, hidden_size=2048, ffn_hidden_size=8192,
                                        num_attention_heads=32, num_query_groups=8,
                                        vocab_size=128256, max_position_embeddings=2048,
                                        tie_embeddings=True)),
            ("Llama-3.2-3B shape", dict(num_layers=28, hidden_size=3072, ffn_hidden_size=8192,
                                        num_attention_heads=24, num_query_groups=8,
                                        vocab_size=128256, max_position_embeddings=2048,
                                        tie_embeddings=True)),
        ],
        "mfu_batch": (8, 2048, 1),  # sequences per step, sequence length, micro-batch size
        "mfu_steps": 4,
        "rl_model": dict(num_layers=4, hidden_size=512, ffn_hidden_size=1408,
                         num_attention_heads=8, num_query_groups=4, vocab_size=8192,
                         max_position_embeddings=512),
        "rl": dict(steps=2, prompts=16, group=8, new_tokens=64),
        "decode": dict(prompts=32, n=4, prompt_tokens=64, new_tokens=128),
        "logprob": dict(tokens=8192, vocab=151936, hidden=2560, chunk=512),
    },
    "cpu": {
        "check": dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                      num_query_groups=2, vocab_size=512, max_position_embeddings=64),
        "check_batch": (4, 32),
        "mfu": [("tiny", dict(num_layers=2, hidden_size=64, ffn_hidden_size=128,
                              num_attention_heads=4, num_query_groups=2, vocab_size=512,
                              max_position_embeddings=64))],
        "mfu_batch": (4, 32, 2),
        "mfu_steps": 2,
        "rl_model": dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                         num_query_groups=2, vocab_size=8192, max_position_embeddings=256),
        "rl": dict(steps=2, prompts=2, group=2, new_tokens=8),
        "decode": dict(prompts=2, n=2, prompt_tokens=16, new_tokens=8),
        "logprob": dict(tokens=64, vocab=1024, hidden=64, chunk=16),
    },
}


# ---- helpers used inside a section's process ------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _init(seed: int = 1234) -> None:
    from megatron_rlpt.runtime.distributed import ParallelConfig, init_distributed

    init_distributed(ParallelConfig(), seed=seed)


def _model_cfg(shape: dict[str, Any], **over: Any) -> Any:
    from megatron_rlpt.runtime.model import ModelConfig

    # bf16 on CUDA; the CPU dry run keeps fp32 (bf16 matmuls on a 2-core CPU are slow and
    # exercise nothing the GPU run does not).
    dtype = "bf16" if _cuda() else "fp32"
    return ModelConfig(**{"architecture": "llama", "params_dtype": dtype, **shape, **over})


def _batch(sequences: int, seq: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (sequences, seq + 1), generator=gen)
    return {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
            "loss_mask": torch.ones(sequences, seq),
            "position_ids": torch.arange(seq).unsqueeze(0).expand(sequences, -1).contiguous()}


def _micro(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    n = batch["tokens"].shape[0]
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _setup(model_cfg: Any, lr: float = 1e-4) -> Any:
    from megatron_rlpt.runtime.optim import OptimConfig
    from megatron_rlpt.runtime.step import setup_training

    optim = OptimConfig(lr=lr, schedule="constant", weight_decay=0.0, clip_grad=1.0)
    return setup_training(model_cfg, None, optim, total_steps=100)


def _steps(state: Any, batch: dict[str, Any], micro: int, steps: int) -> tuple[list, list]:
    """Train `steps` steps on `batch`; returns the losses and each step's seconds."""
    from megatron_rlpt.runtime.step import next_token_forward_step, train_step

    seq = batch["tokens"].shape[1]
    losses, seconds = [], []
    for _ in range(steps):
        mbs = _micro(batch, micro)
        _sync()
        t0 = time.perf_counter()
        m = train_step(state, next_token_forward_step, iter(mbs), len(mbs), micro, seq)
        _sync()
        seconds.append(time.perf_counter() - t0)
        losses.append(m["lm_loss"])
    return losses, seconds


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _weights(chunks: list[Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in chunks[0].state_dict().items()
            if not k.endswith("_extra_state")}


def _logits(chunks: list[Any], batch: dict[str, Any]) -> Any:
    import torch

    from megatron_rlpt.runtime.step import _device

    model = chunks[0]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["tokens"].to(_device()),
                    position_ids=batch["position_ids"].to(_device()), attention_mask=None)
    model.train()
    return out.float().cpu()


# ---- sections --------------------------------------------------------------------------------


def section_env(mode: str) -> dict[str, Any]:
    import megatron.core
    import torch

    from megatron_rlpt.runtime.model import fusion_kernels_available, has_transformer_engine

    te = None
    if has_transformer_engine():
        import transformer_engine

        te = getattr(transformer_engine, "__version__", "present")
    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "megatron_core": megatron.core.__version__,
        "transformer_engine": te, "fusion_kernels": fusion_kernels_available(),
    }


def section_train_step(mode: str) -> dict[str, Any]:
    """bf16 steps on one batch with the default (fused) config, then with every fusion off."""
    import dataclasses

    from megatron_rlpt.runtime.distributed import destroy_distributed
    from megatron_rlpt.runtime.model import FUSIONS, _use_te, active_fusions

    sizes = SIZES[mode]
    sequences, seq = sizes["check_batch"]
    cfg = _model_cfg(sizes["check"])
    batch = _batch(sequences, seq, cfg.vocab_size)
    out: dict[str, Any] = {"model": sizes["check"], "sequences": sequences, "seq_length": seq,
                           "layer_spec": "transformer_engine" if _use_te(cfg) else "local"}
    for label, c in (("unfused", dataclasses.replace(cfg, **dict.fromkeys(FUSIONS, False))),
                     ("fused", cfg)):
        try:
            _init()
            state = _setup(c, lr=1e-3)
            losses, seconds = _steps(state, batch, micro=max(1, sequences // 2), steps=6)
        except Exception as err:  # keep the other setting's figures
            return {**out, "ok": False, "error": f"{label}: {type(err).__name__}: {err}"[:2000],
                    "traceback": traceback.format_exc()[-4000:]}
        finally:
            destroy_distributed()
        if not all(x == x for x in losses) or not losses[-1] < losses[0]:
            raise AssertionError(f"{label}: loss did not fall on a repeated batch: {losses}")
        out[label] = {"fusions": active_fusions(c), "losses": losses,
                      "first_step_s": seconds[0], "step_s": _median(seconds[2:])}
    out["fused_over_unfused_step_time"] = out["fused"]["step_s"] / out["unfused"]["step_s"]
    return out


def section_checkpoint(mode: str) -> dict[str, Any]:
    import torch

    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint
    from megatron_rlpt.runtime.distributed import destroy_distributed

    sizes = SIZES[mode]
    sequences, seq = sizes["check_batch"]
    cfg = _model_cfg(sizes["check"])
    batch = _batch(sequences, seq, cfg.vocab_size)
    with tempfile.TemporaryDirectory(prefix="rlpt-gpu-ckpt-") as root:
        _init(seed=1)
        state = _setup(cfg)
        _steps(state, batch, micro=sequences, steps=1)
        before = _logits(state.chunks, batch)
        weights = _weights(state.chunks)
        _sync()
        t0 = time.perf_counter()
        path = save_checkpoint(root, 1, state.chunks, state.optimizer, state.scheduler,
                               trainer_state={"note": "gpu bench"})
        _sync()
        save_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        destroy_distributed()

        _init(seed=2)  # another initialisation, overwritten by the load
        state = _setup(cfg)
        differs = (_logits(state.chunks, batch) - before).abs().max().item()
        _sync()
        t0 = time.perf_counter()
        load_checkpoint(root, state.chunks, state.optimizer, state.scheduler)
        _sync()
        load_s = time.perf_counter() - t0
        after = _logits(state.chunks, batch)
        loaded = _weights(state.chunks)
        # One more step from the loaded optimizer state must run.
        losses, _ = _steps(state, batch, micro=sequences, steps=1)
        destroy_distributed()
    diff = (after - before).abs().max().item()
    unequal = [k for k in weights if not torch.equal(weights[k], loaded[k])]
    if differs == 0.0 or unequal or set(weights) != set(loaded):
        raise AssertionError(f"loaded weights differ from the saved ones: {unequal[:5]}")
    if not torch.isfinite(torch.tensor(losses)).all():
        raise AssertionError(f"the step after loading gave loss {losses}")
    return {"save_s": save_s, "load_s": load_s, "checkpoint_mib": size / 2**20,
            "max_logit_diff_after_load": diff, "tensors_compared": len(weights)}


def _write_prepared(directory: Path, tokenizer: Any, documents: int) -> None:
    """A small prepared dataset in `rlpt prepare`'s layout (the trainer's input), written
    directly: the GPU run needs none of prepare's text tools."""
    import random
    from types import SimpleNamespace

    import numpy as np

    from megatron_rlpt.data.writer import TripleWriter

    rng = random.Random(0)
    colours = ["red", "blue", "green", "yellow", "white", "black"]
    writer = TripleWriter(directory, len(tokenizer))
    for d in range(documents):
        sentences = [f"At {rng.randint(1, 12)} o'clock the {rng.choice(colours)} door opened."
                     for _ in range(6)]
        text, spans = "", []
        for s in sentences:
            start = len(text.encode()) + (1 if text else 0)
            text = f"{text} {s}" if text else s
            spans.append((start, len(text.encode())))

        def ids(a: int, b: int, text: str = text) -> np.ndarray:
            return np.asarray(tokenizer.encode(text.encode()[a:b].decode(),
                                               add_special_tokens=False), dtype=np.int64)

        triples = [SimpleNamespace(target=i, context_start=0, context_ids=ids(0, spans[i - 1][1]),
                                   target_ids=ids(*spans[i]), next_ids=ids(*spans[i + 1]))
                   for i in range(1, len(sentences) - 1)]
        writer.add_document(text.encode(), np.asarray(spans), triples, {"id": d})
    writer.finalize()
    (directory / "manifest.json").write_text(json.dumps(
        {"config": {"triples": {"reference_segments": 1}}}))


def section_rl_step(mode: str) -> dict[str, Any]:
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.data.tokenizer import default_tokenizer_path, load_tokenizer
    from megatron_rlpt.train import train
    from megatron_rlpt.utils.config import from_dict

    sizes = SIZES[mode]
    rl = sizes["rl"]
    with tempfile.TemporaryDirectory(prefix="rlpt-gpu-rl-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        _write_prepared(data, load_tokenizer(default_tokenizer_path()), documents=32)
        shape = {**sizes["rl_model"], "params_dtype": "bf16" if _cuda() else "fp32"}
        cfg = from_dict(TrainConfig, {
            "run": {"stage": "rlpt", "output_dir": str(Path(tmp) / "run"), "steps": rl["steps"],
                    "save_every": rl["steps"], "progress": False, "wandb": {"mode": "disabled"}},
            "model": shape,
            "optim": {"lr": 1e-5, "schedule": "constant"},
            "data": {"path": str(data)},
            "batch": {"prompts_per_step": rl["prompts"], "micro_batch_size": 16},
            "rollout": {"engine": "megatron", "max_new_tokens": rl["new_tokens"],
                        "max_prompt_tokens": 192, "temperature": 1.0},
            "judge": {"kind": "rule"},
            "grpo": {"group_size": rl["group"], "max_sampling_rounds": 1},
        })
        t0 = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text()
                .splitlines() if x.strip()]
    if len(rows) != rl["steps"]:
        raise AssertionError(f"expected {rl['steps']} metric rows, got {len(rows)}")
    keep = ("reward", "loss", "response_length", "time/step_s", "time/rollout_s",
            "time/train_s", "time/judge_s")
    return {"model": sizes["rl_model"], "steps": rows and len(rows), "wall_s": wall,
            "prompts_per_step": rl["prompts"], "group_size": rl["group"],
            "max_new_tokens": rl["new_tokens"],
            "last_step": {k: rows[-1].get(k) for k in keep}}


def train_flops_per_token(m: dict[str, Any], seq: int) -> float:
    """Model FLOPs per trained token (forward + backward = 3 x forward; no recompute counted).

    Forward per token: 2 x every matmul weight (per layer Q, K, V, O and SwiGLU's three
    matrices; the output layer h x V) plus attention's QK^T and AV, 2 x 2 x seq x heads x
    head_dim per layer (full square, as Megatron-LM counts it).
    """
    h, f, L, V = m["hidden_size"], m["ffn_hidden_size"], m["num_layers"], m["vocab_size"]
    heads = m["num_attention_heads"]
    d = m.get("kv_channels") or h // heads
    groups = m.get("num_query_groups") or heads
    per_layer = h * heads * d * 2 + h * groups * d * 2 + 3 * h * f
    return 3 * (2 * (L * per_layer + h * V) + 4 * L * seq * heads * d)


def section_mfu(mode: str) -> dict[str, Any]:
    """Models from small to large; each success is written at once, so the largest model that
    fitted in memory and in the section's time limit is the one reported."""
    import torch

    from megatron_rlpt.runtime.distributed import destroy_distributed
    from megatron_rlpt.runtime.model import _use_te, active_fusions

    sizes = SIZES[mode]
    sequences, seq, micro = sizes["mfu_batch"]
    best: dict[str, Any] | None = None
    tried = []
    for name, shape in sizes["mfu"]:
        cfg = _model_cfg(shape)
        # The local spec's attention keeps [heads, seq, seq] scores: recompute the attention core.
        if not _use_te(cfg) and _cuda():
            cfg.recompute_granularity = "selective"
        try:
            _init()
            state = _setup(cfg)
            params = sum(p.numel() for p in state.chunks[0].parameters())
            batch = _batch(sequences, seq, cfg.vocab_size)
            losses, seconds = _steps(state, batch, micro, sizes["mfu_steps"])
        except Exception as err:  # out of memory, most likely: the smaller model stands
            tried.append({"model": name, "error": f"{type(err).__name__}: {str(err)[:300]}"})
            break
        finally:
            state = None
            destroy_distributed()
            if _cuda():
                torch.cuda.empty_cache()
        step_s = _median(seconds[1:]) if len(seconds) > 1 else seconds[0]
        tokens = sequences * seq
        flops = train_flops_per_token(shape, seq) * tokens
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
        achieved = flops / step_s / 1e12
        best = {"model": name, "shape": shape, "parameters": params, "tokens_per_step": tokens,
                "seq_length": seq, "micro_batch_size": micro, "step_s": step_s,
                "losses": losses, "recompute": cfg.recompute_granularity,
                "layer_spec": "transformer_engine" if _use_te(cfg) else "local",
                "fusions": active_fusions(cfg), "model_tflop_per_step": flops / 1e12,
                "achieved_tflops": achieved, "peak_tflops": peak,
                "mfu": achieved / peak if peak else None, "tokens_per_s": tokens / step_s,
                "smaller_models": [t for t in tried if "error" not in t], "not_fitting": [],
                "flops_formula": "per token 3 x [2 x (L x (2 h (heads+groups) d + 3 h f) + h V)"
                                 " + 4 L s heads d]"}
        tried.append({"model": name, "mfu": best["mfu"], "step_s": step_s})
        write_partial("mfu", best)  # a timeout on the next, larger model keeps this one
    if best is None:
        raise RuntimeError(f"no model fitted: {tried}")
    best["not_fitting"] = [t for t in tried if "error" in t]
    return best


def section_decode(mode: str) -> dict[str, Any]:
    import torch

    from megatron_rlpt.data.tokenizer import default_tokenizer_path, load_tokenizer
    from megatron_rlpt.rollout.base import SamplingParams
    from megatron_rlpt.rollout.megatron_engine import MegatronEngine
    from megatron_rlpt.runtime.distributed import destroy_distributed
    from megatron_rlpt.runtime.model import build_model

    sizes = SIZES[mode]
    d = sizes["decode"]
    cfg = _model_cfg(sizes["check"], vocab_size=8192)
    tokenizer = load_tokenizer(default_tokenizer_path())
    _init()
    chunks = build_model(cfg).chunks
    engine = MegatronEngine(chunks, tokenizer, cfg, max_batch_size=d["prompts"] * d["n"])
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 8000, (d["prompt_tokens"],), generator=gen).tolist()
               for _ in range(d["prompts"])]
    # A random model seldom samples EOS; no stop ids, so every row decodes max_tokens.
    params = SamplingParams(max_tokens=d["new_tokens"], temperature=1.0, seed=1)
    engine.generate_ids(prompts[:2], 1, SamplingParams(max_tokens=4, seed=0), stop_token_ids=[])
    _sync()
    t0 = time.perf_counter()
    out = engine.generate_ids(prompts, d["n"], params, stop_token_ids=[])
    _sync()
    wall = time.perf_counter() - t0
    destroy_distributed()
    generated = sum(len(c.token_ids) for row in out for c in row)
    if generated == 0:
        raise AssertionError("the engine generated nothing")
    return {"model": {**sizes["check"], "vocab_size": 8192}, "rows": d["prompts"] * d["n"],
            "prompt_tokens": d["prompt_tokens"], "new_tokens_per_row": d["new_tokens"],
            "generated_tokens": generated, "seconds": wall, "tokens_per_s": generated / wall}


def section_logprob_memory(mode: str) -> dict[str, Any]:
    import torch
    from logprob_memory import _batch as lp_batch
    from logprob_memory import chunked_fused, chunked_logits, naive_fused, naive_logits, peak_bytes

    p = SIZES[mode]["logprob"]
    n, v, h, c = p["tokens"], p["vocab"], p["hidden"], p["chunk"]
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, v, (n,), generator=gen).to(dev)
    batch = {k: t.to(dev) for k, t in lp_batch(n, gen).items()}

    def peak(fn: Any) -> int:
        if not cuda:
            return peak_bytes(fn)  # counted by LiveBytes on the CPU
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - base

    base = (torch.randn(n, v, generator=gen) * 4).to(dev, dtype)
    naive_in = base.clone().requires_grad_()
    naive_peak = peak(partial(naive_logits, naive_in, target, batch))
    del naive_in
    chunk_in = base.clone().requires_grad_()  # the in-place backward overwrites its input
    rows = {"logits": {"naive": naive_peak,
                       "chunked": peak(partial(chunked_logits, chunk_in, target, batch, c))}}
    del chunk_in, base
    hidden = torch.randn(n, h, generator=gen).to(dev, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(dev, dtype).requires_grad_()
    rows["fused"] = {"naive": peak(partial(naive_fused, hidden, weight, target, batch)),
                     "chunked": peak(partial(chunked_fused, hidden, weight, target, batch, c))}
    for row in rows.values():
        row["ratio"] = row["chunked"] / row["naive"]
    return {"tokens": n, "vocab": v, "hidden": h, "chunk": c, "dtype": str(dtype),
            "measured_by": "torch.cuda.max_memory_allocated" if cuda else "LiveBytes", **rows}


# ---- driver ----------------------------------------------------------------------------------


_SECTION_DIR: Path | None = None


def write_partial(name: str, result: dict[str, Any]) -> None:
    """Record a section's result so far: what the driver reads if the section is stopped."""
    if _SECTION_DIR is not None:
        atomic_write_text(_SECTION_DIR / f"{name}.json", json.dumps(
            {"ok": True, "partial": True, **result, "seconds": None}, indent=1, default=str))


def run_section(name: str, mode: str, out: Path, fail: bool = False) -> None:
    """Run one section in this process and write its JSON (figures or error)."""
    global _SECTION_DIR
    _SECTION_DIR = out
    os.environ.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    try:
        if fail:
            raise RuntimeError("failure injected by --fail-section")
        result = {"ok": True, **globals()[f"section_{name}"](mode)}
    except BaseException as err:  # recorded, and the driver carries on with the next section
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - t0
    # What the section needed beyond the standard library (the wheels run.sh must carry).
    result["third_party_modules"] = sorted(
        {m.split(".")[0] for m in list(sys.modules)} - set(sys.stdlib_module_names)
        - {"__main__", "bench", "logprob_memory", "megatron_rlpt"} - {m for m in sys.modules
                                                                      if m.startswith("_")})
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=1, default=str))


def render(results: dict[str, Any], mode: str) -> str:
    """The Markdown block for docs/performance.md."""
    env = results.get("env", {})
    lines = [f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} by `bash benchmarks/gpu/run.sh`"
             f"{' --cpu-dry-run (tiny models on the CPU: not a measurement)' if mode == 'cpu' else ''}"
             f": {env.get('device', '?')}, Python {env.get('python', '?')}, torch "
             f"{env.get('torch', '?')} (CUDA {env.get('cuda')}), megatron-core "
             f"{env.get('megatron_core', '?')}, Transformer Engine "
             f"{env.get('transformer_engine') or 'absent'}; bf16, TP=1.", "",
             "| check | result |", "|---|---|"]

    def row(name: str, text: str) -> None:
        if name not in results:
            return  # not asked for in this run (--only)
        r = results[name]
        lines.append(f"| {name} | {text if r.get('ok') else 'FAILED: ' + _cell(r.get('error'))} |")

    if not env.get("ok", True):
        row("env", "")
    t = results.get("train_step", {})
    if t.get("ok"):
        on = [k for k, v in t["fused"]["fusions"].items() if v]
        row("train_step", f"{t['layer_spec']} spec, {t['sequences']}x{t['seq_length']} tokens: "
            f"{t['fused']['step_s'] * 1e3:.1f} ms/step with fusions ({', '.join(on) or 'none'}), "
            f"{t['unfused']['step_s'] * 1e3:.1f} ms without "
            f"(ratio {t['fused_over_unfused_step_time']:.2f}); loss "
            f"{t['fused']['losses'][0]:.3f} → {t['fused']['losses'][-1]:.3f}")
    else:
        row("train_step", "")
    c = results.get("checkpoint", {})
    row("checkpoint", f"save {c.get('save_s', 0):.2f} s, load {c.get('load_s', 0):.2f} s, "
        f"{c.get('checkpoint_mib', 0):.0f} MiB; logits after load identical")
    r = results.get("rl_step", {})
    last = r.get("last_step", {})
    row("rl_step", f"{r.get('steps')} RLPT steps, {r.get('prompts_per_step')} prompts x "
        f"{r.get('group_size')} samples, in-process rollouts: step {last.get('time/step_s') or 0:.2f}"
        f" s (rollout {last.get('time/rollout_s') or 0:.2f} s, train "
        f"{last.get('time/train_s') or 0:.2f} s)")
    m = results.get("mfu", {})
    mfu = f"{m['mfu']:.1%}" if m.get("mfu") is not None else "n/a"
    row("mfu", f"{m.get('model')} ({(m.get('parameters') or 0) / 1e9:.2f} B parameters), "
        f"{m.get('tokens_per_step')} tokens/step, {m.get('layer_spec')} spec, recompute "
        f"{m.get('recompute')}: {m.get('step_s', 0):.2f} s/step, "
        f"{m.get('achieved_tflops', 0):.0f} TFLOP/s = **MFU {mfu}** of {m.get('peak_tflops')} "
        f"TFLOP/s; FLOPs {m.get('flops_formula')}")
    d = results.get("decode", {})
    row("decode", f"{d.get('rows')} rows x {d.get('new_tokens_per_row')} new tokens: "
        f"**{d.get('tokens_per_s', 0):.0f} tokens/s**")
    lp = results.get("logprob_memory", {})
    row("logprob_memory", f"{lp.get('tokens')} tokens, vocab {lp.get('vocab')}: chunked / naive "
        f"peak {lp.get('logits', {}).get('ratio', 0):.3f} (logits), "
        f"{lp.get('fused', {}).get('ratio', 0):.3f} (fused), by {lp.get('measured_by')}")
    return "\n".join(lines) + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="the same code on tiny models on the CPU (CI runs this)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help="comma-separated sections to run (a rerun of the failed ones)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"whole run's time budget (GPU default {GPU_BUDGET_S} s)")
    parser.add_argument("--fail-section", default="",
                        help="make this section fail (tests that the others still run)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # run one section in-process
    parser.add_argument("--section-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    mode = "cpu" if args.cpu_dry_run else "gpu"
    if args.section:
        run_section(args.section, mode, args.section_dir, fail=args.section == args.fail_section)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (GPU_BUDGET_S if mode == "gpu" else 3600.0)
    start = time.perf_counter()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    results: dict[str, Any] = {"mode": mode, "budget_s": budget}
    sections = Path(tempfile.mkdtemp(prefix="rlpt-gpu-bench-"))  # $OUT takes few files
    for name in names:
        left = budget - (time.perf_counter() - start)
        limit = min(GPU_LIMITS[name] if mode == "gpu" else 900, left)
        print(f"== {name} (limit {limit:.0f} s)", flush=True)
        if limit < 5:
            results[name] = {"ok": False, "error": "skipped: the run's time budget is spent",
                             "seconds": 0.0}
            print("   skipped: budget spent", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out),
               "--section", name, "--section-dir", str(sections),
               "--fail-section", args.fail_section] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=limit, capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired as err:
            tail = f"timed out after {limit:.0f} s\n" + str(err.stderr or "")[-2000:]
        path = sections / f"{name}.json"
        section = json.loads(path.read_text()) if path.is_file() else {
            "ok": False, "error": f"the section's process ended without a result: {tail[-300:]}"}
        if section.get("seconds") is None:  # stopped after writing a partial result
            section.update(seconds=time.perf_counter() - t0, stopped=tail[-300:])
        if not section["ok"]:
            section["log_tail"] = tail
        results[name] = section
        print(f"   {'ok' if section['ok'] else 'FAILED: ' + section['error'][:300]} "
              f"({section['seconds']:.1f} s)", flush=True)
    results["all_ok"] = all(results[n]["ok"] for n in names)
    results["seconds"] = time.perf_counter() - start
    atomic_write_text(args.out / "gpu.json", json.dumps(results, indent=1, default=str))
    atomic_write_text(args.out / "gpu.md", render(results, mode))
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    sys.exit(0 if results["all_ok"] else 1)


if __name__ == "__main__":
    main()
