"""In-process rollout engine: sample completions from the trainer's own Megatron-Core model.

The engine holds the trainer's live model chunks, so the policy it samples from is always the
one being trained; `update_weights` has nothing to do.

Layout of a batch. Rows (prompt x sample) are aligned at position 0, as Megatron's own static
text-generation controller does, so the model runs with `attention_mask=None` (causal attention)
and exact positions, under Megatron's local and Transformer Engine attention alike:

    prefill   each distinct prompt of the batch up to the batch's shortest prompt length L0,
              once, into a `StaticInferenceContext` KV cache; the cache rows are then repeated
              for the prompt's samples
    decode    one position at a time for every live row; a row whose prompt is longer than the
              current position is fed its own next prompt token (teacher forcing), the others
              sample. Rows that finish are dropped from the batch and from the cache.

Prompts are batched longest first, so a batch holds prompts of similar length and little of the
prompt goes through the one-token decode path. `kv_cache=False` runs the same schedule with a
full forward of the whole sequence at every step (the reference the cache is tested against).

Tensor parallelism: the last position's logits are gathered across the TP group, every TP rank
computes the same sample, and TP rank 0's tokens and log-probs are broadcast over the group so
the ranks can never diverge. The request itself (prompts, n, sampling, seed) is taken from TP
rank 0 as well. Pipeline parallelism is not supported: rollouts need PP=1 or an external engine.

Sampling: the model's padded vocabulary rows (`ModelConfig.padded_vocab_size > vocab_size`) are
cut off before anything else, so they can never be drawn. Randomness comes from
`megatron_rlpt.rollout.sampling`: one counter-based stream per (prompt index, sample index),
seeded from `SamplingParams.seed`, independent of batch composition and of the global torch RNG.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import Completion, SamplingParams
from megatron_rlpt.rollout.sampling import (
    LOGPROB_MODES,
    row_generators,
    sample_tokens,
    validate_sampling,
)
from megatron_rlpt.runtime.model import ModelConfig

logger = logging.getLogger(__name__)

_Unit = tuple[int, int, int]
"""(prompt index, first sample index, sample count): the rows one prompt puts in a batch."""


def unwrap_chunks(chunks: Sequence[Any]) -> list[Any]:
    """The modules inside Megatron's DistributedDataParallel wrappers (others as they are)."""
    from megatron.core.distributed import DistributedDataParallel

    return [c.module if isinstance(c, DistributedDataParallel) else c for c in chunks]


class MegatronEngine:
    """`RolloutEngine` on the trainer's Megatron-Core GPTModel, generating in this process."""

    def __init__(
        self,
        chunks: Sequence[Any],
        tokenizer: Any,
        model_config: ModelConfig,
        *,
        max_batch_size: int = 64,
        kv_cache: bool = True,
        logprobs: str = "sampling",
        seed: int = 0,
    ) -> None:
        """Wrap this rank's model chunks (`TrainState.chunks`, DDP-wrapped or not).

        `max_batch_size`: most rows (prompt x sample) decoded together. `kv_cache`: use
        Megatron's static KV cache (False: recompute the whole sequence every step).
        `logprobs`: `sampling` (the distribution each token was drawn from) or `raw` (untempered
        log-softmax over the full output layer, padded rows included). `seed`: draws the base
        seed of calls whose `SamplingParams.seed` is None (pass seeds for resumable runs).
        """
        from megatron.core import parallel_state as ps
        from megatron.core.utils import get_model_config

        if not chunks:
            raise UsageError("MegatronEngine needs the model chunks of this rank")
        if ps.get_pipeline_model_parallel_world_size() > 1 or len(chunks) > 1:
            raise UsageError("the in-process Megatron rollout engine needs pipeline_parallel=1 "
                             "(and no virtual pipeline); use rollout.engine=vllm or sglang")
        if max_batch_size < 1:
            raise UsageError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if logprobs not in LOGPROB_MODES:
            raise UsageError(f"logprobs must be one of {LOGPROB_MODES}, got {logprobs!r}")
        self.chunks = list(chunks)
        self.model = unwrap_chunks(chunks)[0]
        tconfig = get_model_config(self.model)
        if getattr(tconfig, "sequence_parallel", False) or \
                getattr(tconfig, "context_parallel_size", 1) > 1:
            raise UsageError("the in-process Megatron rollout engine needs sequence_parallel off "
                             "and context_parallel=1; use rollout.engine=vllm or sglang")
        self.tokenizer = tokenizer
        self.vocab_size = model_config.vocab_size
        self.max_positions = model_config.max_position_embeddings
        self.max_batch_size = max_batch_size
        self.kv_cache = kv_cache
        self.logprobs = logprobs
        self._seeds = random.Random(seed)
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self.tp_group = ps.get_tensor_model_parallel_group() if self.tp_size > 1 else None
        self.tp_src = ps.get_tensor_model_parallel_src_rank()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        value = getattr(self.tokenizer, "eos_token_id", None)
        if value is None:
            return []
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]

    # -- RolloutEngine ---------------------------------------------------------------------

    def update_weights(self, weights: Any = None) -> None:
        """Nothing to do: the engine samples from the trainer's live model chunks.

        After `optimizer.step()` the chunks already hold the new weights, so the next call of
        `generate` uses them. `weights` is accepted and ignored to meet the contract.
        """

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its `n` completions (see `generate_ids`)."""
        return self.generate_ids([self._encode(p) for p in prompts], n, sampling)

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        sampling: SamplingParams,
        *,
        stop_token_ids: Sequence[int] | None = None,
        logprobs: str | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` completions of each tokenised prompt; per prompt, in order, its `n`.

        A completion ends with `stop` at a token of `stop_token_ids` (None: the tokenizer's EOS
        ids; the token is kept in `token_ids` but not in `text`) or when its text contains a
        string of `sampling.stop` (kept in the text, which is cut right after it), else with
        `length` after `max_tokens` tokens or at the model's context length. `logprobs`
        overrides the engine's log-prob mode for this call. Every TP rank must call this
        together; TP rank 0's arguments are the ones used.
        """
        request = {
            "prompt_ids": [[int(t) for t in p] for p in prompt_ids],
            "n": int(n),
            "sampling": asdict(sampling),
            "stop_token_ids": None if stop_token_ids is None else [int(t) for t in stop_token_ids],
            "logprobs": logprobs or self.logprobs,
        }
        request["base_seed"] = sampling.seed if sampling.seed is not None \
            else self._seeds.getrandbits(63)
        request = self._from_tp_src(request)
        return self._generate(**request)

    # -- request handling ------------------------------------------------------------------

    def _from_tp_src(self, request: dict[str, Any]) -> dict[str, Any]:
        """TP rank 0's request, on every rank of the TP group."""
        if self.tp_size == 1:
            return request
        holder = [request]
        torch.distributed.broadcast_object_list(holder, src=self.tp_src, group=self.tp_group)
        return holder[0]

    def _encode(self, prompt: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        # A chat-templated prompt already starts with BOS; do not add a second one.
        add_special = not (bos and prompt.startswith(bos))
        ids = list(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        return ids

    def _generate(self, prompt_ids: list[list[int]], n: int, sampling: dict[str, Any],
                  stop_token_ids: list[int] | None, logprobs: str,
                  base_seed: int) -> list[list[Completion]]:
        params = SamplingParams(**sampling)
        validate_sampling(params)
        if n < 1:
            raise UsageError(f"n must be at least 1, got {n}")
        if logprobs not in LOGPROB_MODES:
            raise UsageError(f"logprobs must be one of {LOGPROB_MODES}, got {logprobs!r}")
        budgets = [self._budget(i, p, params.max_tokens) for i, p in enumerate(prompt_ids)]
        stop_ids = set(self.eos_ids if stop_token_ids is None else stop_token_ids)
        results: list[list[Completion | None]] = [[None] * n for _ in prompt_ids]
        with self._inference_mode():
            for batch in self._batches(prompt_ids, n):
                outs = self._run_batch(batch, prompt_ids, budgets, params, base_seed,
                                       stop_ids, logprobs)
                for (i, s, count), row_outs in zip(batch, outs):
                    results[i][s : s + count] = row_outs
        return results  # type: ignore[return-value]

    def _budget(self, index: int, ids: list[int], max_tokens: int) -> int:
        if not ids:
            raise UsageError(f"prompt {index} is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise UsageError(f"prompt {index} has token ids outside the vocabulary "
                             f"[0, {self.vocab_size}): {bad[:5]}")
        room = self.max_positions - len(ids)
        if room <= 0:
            raise UsageError(f"prompt {index} has {len(ids)} tokens, leaving no room in the "
                             f"model's {self.max_positions}-token context")
        return min(max_tokens, room)

    def _batches(self, prompt_ids: list[list[int]], n: int) -> list[list[_Unit]]:
        """Group (prompt, samples) units into batches of at most `max_batch_size` rows.

        Longest prompts first, so that each batch holds prompts of similar length.
        """
        chunk = min(n, self.max_batch_size)
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        units = [(i, s, min(chunk, n - s)) for i in order for s in range(0, n, chunk)]
        batches: list[list[_Unit]] = []
        for unit in units:
            if batches and sum(u[2] for u in batches[-1]) + unit[2] <= self.max_batch_size:
                batches[-1].append(unit)
            else:
                batches.append([unit])
        return batches

    @contextlib.contextmanager
    def _inference_mode(self) -> Iterator[None]:
        """Eval mode and no autograd while generating; the chunks' modes are restored after."""
        modes = [c.training for c in self.chunks]
        try:
            for c in self.chunks:
                c.eval()
            with torch.no_grad():
                yield
        finally:
            for c, mode in zip(self.chunks, modes):
                c.train(mode)

    # -- the decoding loop -----------------------------------------------------------------

    def _run_batch(self, units: list[_Unit], prompt_ids: list[list[int]], budgets: list[int],
                   sampling: SamplingParams, base_seed: int, stop_ids: set[int],
                   logprob_mode: str) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        row_unit = [u for u, (_, _, count) in enumerate(units) for _ in range(count)]
        row_keys = [(i, s + j) for i, s, count in units for j in range(count)]
        plen = [len(prompt_ids[i]) for i, _ in row_keys]
        end = [plen[r] + budgets[i] for r, (i, _) in enumerate(row_keys)]
        width, start = max(end), min(plen)
        seq = torch.zeros(len(row_keys), width, dtype=torch.long)
        for r, (i, _) in enumerate(row_keys):
            seq[r, : plen[r]] = torch.tensor(prompt_ids[i])
        seq = seq.to(device)
        gens = row_generators(base_seed, row_keys)
        generated: list[list[int]] = [[] for _ in row_keys]
        logps: list[list[float]] = [[] for _ in row_keys]
        finish = [""] * len(row_keys)
        window = max((len(s) for s in sampling.stop), default=0) + 8

        context = None
        unit_rows = torch.tensor(row_unit, device=device)
        if self.kv_cache:
            from megatron.core.inference.contexts import StaticInferenceContext

            # The prefill runs once per distinct prompt; its cache rows are then repeated.
            context = StaticInferenceContext(max_batch_size=len(units), max_sequence_length=width)
            first = torch.stack([seq[row_unit.index(u), :start] for u in range(len(units))])
            logits = self._forward(first, 0, context)[unit_rows]
            _select_cache_rows(context, unit_rows)
            context.enable_decode_mode()
        else:
            logits = self._forward(seq[:, :start], 0, None)

        active = list(range(len(row_keys)))  # rows still decoding, in batch order
        for t in range(start, width):
            sampling_rows = [k for k, r in enumerate(active) if t >= plen[r]]
            if sampling_rows:
                picked = logits[sampling_rows]
                tokens, lps = sample_tokens(
                    picked[:, : self.vocab_size], sampling,
                    [gens[active[k]] for k in sampling_rows], logprob_mode, raw_logits=picked)
                tokens, lps = self._tp_agree(tokens, lps)
                rows = torch.tensor([active[k] for k in sampling_rows], device=device)
                seq[rows, t] = tokens
                for k, tok, lp in zip(sampling_rows, tokens.tolist(), lps.tolist()):
                    r = active[k]
                    generated[r].append(tok)
                    logps[r].append(lp)
                    if tok in stop_ids or self._hit_stop(generated[r], sampling.stop, window):
                        finish[r] = "stop"
                    elif t + 1 >= end[r]:
                        finish[r] = "length"
            keep = [k for k, r in enumerate(active) if not finish[r]]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                if context is not None:
                    _select_cache_rows(context, index)
                active = [active[k] for k in keep]
            rows = torch.tensor(active, device=device)
            if context is not None:
                logits = self._forward(seq[rows, t : t + 1], t, context)
            else:
                logits = self._forward(seq[rows, : t + 1], 0, None)

        completions = [
            Completion(text=self._text(generated[r], finish[r], stop_ids, sampling.stop),
                       token_ids=generated[r], logprobs=logps[r], finish_reason=finish[r])
            for r in range(len(row_keys))
        ]
        grouped, first_row = [], 0
        for _, _, count in units:
            grouped.append(completions[first_row : first_row + count])
            first_row += count
        return grouped

    def _forward(self, tokens: torch.Tensor, offset: int, context: Any) -> torch.Tensor:
        """Full-vocabulary fp32 logits `[rows, padded vocab]` of the last position of `tokens`.

        `offset` is the position of `tokens[:, 0]`; with a KV cache it must equal the number of
        positions already cached.
        """
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        positions = positions.unsqueeze(0).expand(tokens.shape[0], -1)
        if context is None:
            from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

            out = self.model(input_ids=tokens, position_ids=positions, attention_mask=None)
            last = out[:, -1, :].contiguous()  # vocab-parallel [rows, V/TP]
            return gather_from_tensor_model_parallel_region(last).float()
        if context.sequence_len_offset != offset:
            raise RuntimeError(f"KV cache holds {context.sequence_len_offset} positions, "
                               f"forward starts at {offset}")
        # Under an inference context Megatron gathers the TP logits of the last position only.
        out = self.model(input_ids=tokens, position_ids=positions, attention_mask=None,
                         inference_context=context, runtime_gather_output=True)
        context.increment_sequence_len_offset(tokens.shape[1])
        return out[:, -1, :].float()

    def _tp_agree(self, tokens: torch.Tensor, logps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """TP rank 0's tokens and log-probs on every TP rank (one small broadcast)."""
        if self.tp_size == 1:
            return tokens, logps
        packed = torch.stack([tokens.double(), logps.double()])
        torch.distributed.broadcast(packed, src=self.tp_src, group=self.tp_group)
        return packed[0].long(), packed[1].float()

    # -- text ------------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        # Special tokens stay in the text: RLPT's tags may be added tokens of the vocabulary.
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _hit_stop(self, ids: list[int], stop: list[str], window: int) -> bool:
        if not stop:
            return False
        tail = self._decode(ids[-window:])
        return any(s in tail for s in stop)

    def _text(self, ids: list[int], finish: str, stop_ids: set[int], stop: list[str]) -> str:
        if finish == "stop" and ids and ids[-1] in stop_ids:
            ids = ids[:-1]  # the end-of-sequence token is not part of the text
        text = self._decode(ids)
        ends = [text.find(s) + len(s) for s in stop if s in text]
        if finish == "stop" and ends:
            text = text[: min(ends)]  # keep the first stop string, drop what follows it
        return text


def _select_cache_rows(context: Any, index: torch.Tensor) -> None:
    """Keep (or repeat) the KV-cache rows `index` of a `StaticInferenceContext`, in that order.

    The static context stores each layer's cache as `(key, value)` tensors shaped
    `[max sequence, batch, groups, head dim]` in `key_value_memory_dict`.
    """
    memory = context.key_value_memory_dict
    if not memory:
        raise RuntimeError("the KV cache is empty: run the prefill first")
    for layer, (key, value) in memory.items():
        memory[layer] = (key.index_select(1, index), value.index_select(1, index))
    context.max_batch_size = int(index.numel())
