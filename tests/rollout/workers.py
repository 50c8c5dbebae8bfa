"""Functions run on every rank by tests/multirank.py for the Megatron rollout engine tests.

One launch per layout runs the whole suite and returns everything the tests assert on, because a
torchrun launch costs more than the generation itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.runtime.distributed import ParallelConfig, destroy_distributed, init_distributed
from megatron_rlpt.runtime.model import ModelConfig
from megatron_rlpt.runtime.optim import OptimConfig

PROMPTS = [
    "The derivative of a constant function is zero, because",
    "Water boils at",
    "In a closed system the total energy",
    "A prime number has exactly two divisors:",
    "Newton's second law states that the net force on a body equals its mass times",
    "Entropy",
]


def model_vocab(tokenizer_size: int) -> int:
    """A vocabulary size >= the tokenizer's whose padded size is the same at TP=1 and TP=2
    (so a TP=1 checkpoint loads at TP=2) and strictly larger (so padded rows exist)."""
    rest = tokenizer_size % 256
    return tokenizer_size if rest > 128 else tokenizer_size - rest + 129


def tiny_model(vocab_size: int, arch: str = "llama") -> ModelConfig:
    return ModelConfig(
        architecture=arch,
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=24 if arch == "qwen3" else None,
        vocab_size=vocab_size,
        max_position_embeddings=96,
        add_qkv_bias=arch == "qwen2",
        qk_layernorm=arch == "qwen3",
        tie_embeddings=arch != "llama",
        rope_scaling={"factor": 8.0, "original_max_position_embeddings": 32}
        if arch == "llama" else None,
        # A larger init spreads the logits, so that greedy decoding has no near-ties.
        init_method_std=0.2,
    )


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _setup(cfg: ModelConfig, tp: int, pp: int = 1, seed: int = 1234):
    from megatron_rlpt.runtime.step import setup_training

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    init_distributed(parallel, seed=seed)
    optim = OptimConfig(lr=3e-2, schedule="constant", clip_grad=1.0)
    return setup_training(cfg, parallel, optim, total_steps=10)


def _inner(chunks: list[Any]) -> Any:
    from megatron_rlpt.rollout.megatron_engine import unwrap_chunks

    return unwrap_chunks(chunks)[0]


def full_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """`[len(ids), padded vocab]` fp32 logits of one unpadded sequence, no cache (fresh forward)."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    tokens = torch.tensor([ids])
    positions = torch.arange(len(ids)).unsqueeze(0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=tokens, position_ids=positions, attention_mask=None)
        out = gather_from_tensor_model_parallel_region(out.contiguous()).float()[0]
    model.train(was_training)
    return out


def reference_logprobs(model: Any, prompt: list[int], completion: list[int], vocab: int | None,
                       sampling: SamplingParams | None = None) -> torch.Tensor:
    """Log-probs of `completion` after `prompt` from a fresh full forward.

    `vocab`: cut the logits to the real vocabulary (None keeps the padded rows). `sampling`:
    apply its temperature / top-k / top-p first (None: temperature 1, no filtering).
    """
    from megatron_rlpt.rollout.sampling import filtered_logits

    logits = full_logits(model, prompt + completion)[len(prompt) - 1 : -1]
    if vocab is not None:
        logits = logits[:, :vocab]
    if sampling is not None:
        logits = filtered_logits(logits, sampling)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


@contextlib.contextmanager
def logit_bias(model: Any, bias: torch.Tensor):
    """Add `bias` (`[padded vocab]`) to the output layer's logits, full or vocab-parallel."""
    from megatron.core import parallel_state as ps

    def hook(_module, _inputs, output):
        logits, extra = output
        width = logits.shape[-1]
        if width == bias.numel():
            part = bias
        else:  # this TP rank's shard of the vocabulary
            rank = ps.get_tensor_model_parallel_rank()
            part = bias[rank * width : (rank + 1) * width]
        return logits + part.to(logits), extra

    handle = model.output_layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _pack(completions: list[list[Any]]) -> list[list[dict[str, Any]]]:
    return [[dataclasses.asdict(c) for c in group] for group in completions]


def _train_one_step(state: Any, vocab: int) -> dict[str, float]:
    from megatron_rlpt.runtime.step import next_token_forward_step, train_step

    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, vocab, (2, 17), generator=gen)
    batch = {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).unsqueeze(0).expand(2, -1).contiguous(),
    }
    return train_step(state, next_token_forward_step, iter([batch]), 1, 2, 16)


# ---- workers ---------------------------------------------------------------------------


def engine_suite(ckpt: str, tokenizer_dir: str, tp: int, save: bool) -> dict[str, Any]:
    """Everything the engine tests check, at one TP size, on the weights of `ckpt`.

    With `save` (TP=1) the randomly initialised model is saved to `ckpt` first; otherwise the
    model is loaded from it.
    """
    from megatron_rlpt.rollout.megatron_engine import MegatronEngine
    from megatron_rlpt.runtime.checkpoint import load_checkpoint, save_checkpoint

    tok = _tokenizer(tokenizer_dir)
    cfg = tiny_model(model_vocab(len(tok)))
    state = _setup(cfg, tp, seed=1234 if save else 99)
    if save:
        save_checkpoint(ckpt, 0, state.chunks)
    else:
        load_checkpoint(ckpt, state.chunks)
    model = _inner(state.chunks)
    vocab = cfg.vocab_size
    padded = cfg.padded_vocab_size(tp)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    out: dict[str, Any] = {"vocab": vocab, "padded": padded, "prompt_ids": prompt_ids,
                           "tokenizer_size": len(tok)}

    # 12 rows a batch: the greedy call fits one batch, the sampled ones need two.
    engine = MegatronEngine(state.chunks, tok, cfg, max_batch_size=12)
    nocache = MegatronEngine(state.chunks, tok, cfg, max_batch_size=12, kv_cache=False)
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    sample = SamplingParams(max_tokens=12, temperature=1.0, seed=11)

    # Greedy: KV cache against full recompute.
    out["greedy"] = _pack(engine.generate_ids(prompt_ids, 2, greedy, stop_token_ids=[]))
    out["greedy_nocache"] = _pack(nocache.generate_ids(prompt_ids, 2, greedy, stop_token_ids=[]))

    # Sampling at temperature 1: log-probs against a fresh forward, modes, reproducibility.
    rng_before = torch.get_rng_state()
    sampled = engine.generate_ids(prompt_ids, 3, sample, stop_token_ids=[])
    out["rng_unchanged"] = bool(torch.equal(rng_before, torch.get_rng_state()))
    out["sampled"] = _pack(sampled)
    out["sampled_ref"] = [[reference_logprobs(model, prompt_ids[i], c.token_ids, vocab)
                           for c in group] for i, group in enumerate(sampled)]
    raw = engine.generate_ids(prompt_ids, 3, sample, stop_token_ids=[], logprobs="raw")
    out["sampled_raw"] = _pack(raw)
    out["raw_ref"] = [[reference_logprobs(model, prompt_ids[i], c.token_ids, None)
                       for c in group] for i, group in enumerate(raw)]
    out["sampled_nocache"] = _pack(nocache.generate_ids(prompt_ids, 3, sample, stop_token_ids=[]))
    one_row = MegatronEngine(state.chunks, tok, cfg, max_batch_size=1)
    out["sampled_batch1"] = _pack(one_row.generate_ids(prompt_ids[:2], 3, sample,
                                                       stop_token_ids=[]))
    out["sampled_seed12"] = _pack(engine.generate_ids(
        prompt_ids, 3, dataclasses.replace(sample, seed=12), stop_token_ids=[]))

    # Temperature, top-k and top-p: log-probs of the filtered, tempered distribution.
    tempered = SamplingParams(max_tokens=10, temperature=0.7, top_k=40, top_p=0.8, seed=3)
    got = engine.generate_ids(prompt_ids, 2, tempered, stop_token_ids=[])
    out["tempered"] = _pack(got)
    out["tempered_ref"] = [[reference_logprobs(model, prompt_ids[i], c.token_ids, vocab, tempered)
                            for c in group] for i, group in enumerate(got)]
    out["top_k1"] = _pack(engine.generate_ids(
        prompt_ids, 2, SamplingParams(max_tokens=8, temperature=1.5, top_k=1, seed=4),
        stop_token_ids=[]))
    out["top_p_tiny"] = _pack(engine.generate_ids(
        prompt_ids, 2, SamplingParams(max_tokens=8, temperature=1.5, top_p=1e-6, seed=4),
        stop_token_ids=[]))

    # Finish reasons.
    out["short"] = _pack(engine.generate_ids(prompt_ids, 1, SamplingParams(max_tokens=5,
                                                                           temperature=0.0)))
    first = sampled[0][0]
    text = first.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    out["stop_string"] = stop
    out["stopped"] = _pack(engine.generate_ids(
        prompt_ids[:1], 3, dataclasses.replace(sample, stop=[stop, "no such string"]),
        stop_token_ids=[]))
    stop_token = first.token_ids[4]
    out["stop_token"] = stop_token
    out["stopped_token"] = _pack(engine.generate_ids(prompt_ids[:1], 3, sample,
                                                     stop_token_ids=[stop_token]))
    eos_bias = torch.zeros(padded)
    eos_bias[tok.eos_token_id] = 1e4
    with logit_bias(model, eos_bias):
        out["eos"] = _pack(engine.generate_ids(prompt_ids, 1, sample))
    near_end = [[5] * (cfg.max_position_embeddings - 3)]
    out["context_end"] = _pack(engine.generate_ids(near_end, 1, greedy, stop_token_ids=[]))

    # Padded vocabulary rows: made the most likely by far, still never produced.
    pad_bias = torch.zeros(padded)
    pad_bias[vocab:] = 50.0
    with logit_bias(model, pad_bias):
        out["padded_greedy"] = _pack(engine.generate_ids(prompt_ids, 2, greedy, stop_token_ids=[]))
        out["padded_sampled"] = _pack(engine.generate_ids(prompt_ids, 3, sample,
                                                          stop_token_ids=[]))
        out["padded_nocache"] = _pack(nocache.generate_ids(prompt_ids, 2, greedy,
                                                           stop_token_ids=[]))

    # The text API.
    out["text_api"] = _pack(engine.generate(PROMPTS, 2, greedy))

    # Modes: the trainer's chunks stay in train mode; the engine follows weight updates.
    out["train_mode_after"] = all(c.training for c in state.chunks) and model.training
    out["train_metrics"] = _train_one_step(state, vocab)
    out["greedy_after_step"] = _pack(engine.generate_ids(prompt_ids, 1, greedy,
                                                         stop_token_ids=[]))
    out["fresh_after_step"] = _pack(MegatronEngine(state.chunks, tok, cfg).generate_ids(
        prompt_ids, 1, greedy, stop_token_ids=[]))
    out["train_metrics_2"] = _train_one_step(state, vocab)  # training still works afterwards
    if tp == 2:
        out["pp2_error"] = pipeline_refused(tokenizer_dir, cfg)
    destroy_distributed()
    return out


def _setup_model(cfg: ModelConfig) -> Any:
    """Another model in an already initialised process (TP=1): built and DDP-wrapped."""
    from megatron_rlpt.runtime.step import setup_training

    optim = OptimConfig(lr=3e-2, schedule="constant")
    return setup_training(cfg, ParallelConfig(), optim, total_steps=10)


def arch_suite(tokenizer_dir: str, archs: list[str], speed_prompts: int, speed_n: int,
               speed_tokens: int) -> dict[str, Any]:
    """At TP=1: KV cache against full recompute and the log-prob invariant for each
    architecture, then the time to generate greedily with and without the cache."""
    from megatron_rlpt.rollout.megatron_engine import MegatronEngine

    init_distributed(ParallelConfig(), seed=7)
    tok = _tokenizer(tokenizer_dir)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    sample = SamplingParams(max_tokens=12, temperature=1.0, seed=2)
    out: dict[str, Any] = {}
    for arch in archs:
        cfg = tiny_model(model_vocab(len(tok)), arch)
        state = _setup_model(cfg)
        model = _inner(state.chunks)
        engine = MegatronEngine(state.chunks, tok, cfg)
        nocache = MegatronEngine(state.chunks, tok, cfg, kv_cache=False)
        sampled = engine.generate_ids(prompt_ids, 2, sample, stop_token_ids=[])
        out[arch] = {
            "greedy": _pack(engine.generate_ids(prompt_ids, 2, greedy, stop_token_ids=[])),
            "greedy_nocache": _pack(nocache.generate_ids(prompt_ids, 2, greedy,
                                                         stop_token_ids=[])),
            "sampled": _pack(sampled),
            "sampled_ref": [[reference_logprobs(model, prompt_ids[i], c.token_ids,
                                                cfg.vocab_size)
                             for c in group] for i, group in enumerate(sampled)],
        }

    # bf16 (Float16Module, bf16 KV cache): runs and keeps to the real vocabulary.
    cfg = dataclasses.replace(tiny_model(model_vocab(len(tok))), params_dtype="bf16")
    state = _setup_model(cfg)
    engine = MegatronEngine(state.chunks, tok, cfg)
    out["bf16"] = _pack(engine.generate_ids(prompt_ids, 2, sample, stop_token_ids=[]))
    out["bf16_vocab"] = cfg.vocab_size

    # Speed: longer prompts of mixed lengths, every row decoding to the end.
    cfg = dataclasses.replace(tiny_model(model_vocab(len(tok))), max_position_embeddings=512)
    state = _setup_model(cfg)
    long_ids = [tok(PROMPTS[i % len(PROMPTS)] * 3)["input_ids"] for i in range(speed_prompts)]
    greedy = SamplingParams(max_tokens=speed_tokens, temperature=0.0)
    speed: dict[str, Any] = {}
    for name, kv in (("kv", True), ("nocache", False)):
        engine = MegatronEngine(state.chunks, tok, cfg, max_batch_size=speed_prompts * speed_n,
                                kv_cache=kv)
        engine.generate_ids(long_ids[:1], 1, SamplingParams(max_tokens=2, temperature=0.0))
        begin = time.perf_counter()
        got = engine.generate_ids(long_ids, speed_n, greedy, stop_token_ids=[])
        speed[f"{name}_seconds"] = time.perf_counter() - begin
        speed[f"{name}_tokens"] = [c.token_ids for group in got for c in group]
    out["speed"] = speed
    destroy_distributed()
    return out


def pipeline_refused(tokenizer_dir: str, cfg: ModelConfig) -> str | None:
    """Re-lay the 2 ranks out as PP=2 and try to build the engine; return the UsageError."""
    from megatron.core import parallel_state as ps

    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.rollout.megatron_engine import MegatronEngine
    from megatron_rlpt.runtime.model import build_model

    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=2)
    built = build_model(cfg, ParallelConfig(pipeline_parallel=2))
    try:
        MegatronEngine(built.chunks, _tokenizer(tokenizer_dir), cfg)
    except UsageError as err:
        return str(err)
    return None


def make_tokenizer(directory: str) -> str:
    """The shipped tokenizer's directory if it loads, else a throwaway byte-level BPE saved in
    `directory` (trained on the prompts above plus some prose)."""
    from megatron_rlpt.data.tokenizer import default_tokenizer_path

    shipped = default_tokenizer_path()
    try:
        _tokenizer(str(shipped))
        return str(shipped)
    except Exception:  # noqa: BLE001 - not shipped yet (or half-written): train our own
        pass
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    prose = PROMPTS * 20 + [
        "Energy is conserved. Momentum is conserved in the absence of external forces.",
        "The integral of a sum is the sum of the integrals.",
    ] * 20
    bpe.train_from_iterator(prose, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    Path(directory).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory
