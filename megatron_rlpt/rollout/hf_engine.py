"""An in-process rollout engine on a Hugging Face transformers causal LM.

The fallback when vLLM is not installed, and the engine the CPU tests run. Prompts are batched with
left padding and prefilled once; the KV cache is then repeated for the `n` samples of each prompt,
and rows that finish are dropped from the batch. Each (prompt, sample) row draws from its own
random generator, seeded from `SamplingParams.seed`, the prompt's position and the sample index,
so a seeded call gives the same completions whatever the batch size.

Log-probabilities are those of the distribution each token was drawn from: the model's softmax
at the sampling temperature, restricted by top-k / top-p and renormalised. Greedy decoding
(temperature 0) reports the model's untempered log-probabilities.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from megatron_rlpt.rollout.base import Completion, SamplingParams

logger = logging.getLogger(__name__)


def _row_seed(base: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.blake2b(f"{base}:{prompt_index}:{sample_index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """`from_pretrained`'s dtype keyword: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def policy_logprobs(logits: Any, sampling: SamplingParams) -> Any:
    """Log-probabilities of the distribution to sample from, for a `[rows, vocab]` logits tensor
    (temperature, top-k and top-p as in `rollout.sampling.filtered_logits`; temperature 0 leaves
    the logits as they are and the caller takes the argmax)."""
    import torch

    from megatron_rlpt.rollout.sampling import filtered_logits

    return torch.log_softmax(filtered_logits(logits, sampling), dim=-1)


def encode_prompt(tokenizer: Any, prompt: str, pad_id: int | None = None) -> list[int]:
    """Token ids of a text prompt, as every engine that takes text feeds it to the model: with
    the tokenizer's special tokens, unless the prompt (chat-templated) already starts with BOS;
    never empty (BOS, else `pad_id`, else 0)."""
    bos = getattr(tokenizer, "bos_token", None)
    # A chat-templated prompt already starts with BOS; do not add a second one.
    add_special = not (bos and prompt.startswith(bos))
    ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    if not ids:
        fallback = tokenizer.bos_token_id
        ids = [fallback if fallback is not None else (pad_id or 0)]
    return list(ids)


class HFEngine:
    """`RolloutEngine` on a transformers `AutoModelForCausalLM`, generating in this process."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ) -> None:
        """`model` is a model directory (or hub id) or a loaded model, then with its `tokenizer`.

        `batch_size` is the most sequences (prompt x sample rows) decoded together; `dtype` is
        `float32`, `bfloat16` or `float16` (default: bfloat16 on a GPU, float32 on the CPU).
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(
                path, **_dtype_kwarg(getattr(torch, dtype))
            )
        elif tokenizer is None:
            raise ValueError("pass the tokenizer along with a loaded model")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.eos_ids = self._eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    # -- RolloutEngine ---------------------------------------------------------------------

    def update_weights(self, weights: Any) -> None:
        """Load new weights: a state dict in HF naming, or a directory / `.safetensors` file.

        Names the model does not have are an error; names left out keep their current values,
        so weights may be pushed in parts.
        """
        import torch

        if isinstance(weights, (str, os.PathLike)):
            from safetensors.torch import load_file

            path = Path(weights)
            files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
            if not files:
                raise ValueError(f"no .safetensors files in {path}")
            state: dict[str, Any] = {}
            for file in files:
                state.update(load_file(str(file)))
            weights = state
        if not isinstance(weights, Mapping):
            raise TypeError(f"weights must be a state dict or a path, not {type(weights)}")
        with torch.no_grad():
            result = self.model.load_state_dict(dict(weights), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"unknown weight names: {sorted(result.unexpected_keys)[:5]}")

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its `n` completions."""
        import torch

        if n < 1:
            raise ValueError("n must be at least 1")
        if sampling.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        encoded = [self._encode(p) for p in prompts]
        base_seed = sampling.seed
        if base_seed is None:  # follows torch.manual_seed, like the rest of torch
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        # Work units of (prompt, first sample, sample count), longest prompts first so that a
        # batch pads little; a unit never exceeds the batch size.
        chunk = min(n, self.batch_size)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        units = [(i, s, min(chunk, n - s)) for i in order for s in range(0, n, chunk)]
        batches: list[list[tuple[int, int, int]]] = []
        for unit in units:
            if batches and sum(u[2] for u in batches[-1]) + unit[2] <= self.batch_size:
                batches[-1].append(unit)
            else:
                batches.append([unit])
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        bar = tqdm(total=len(prompts) * n, desc="generating", unit="seq", disable=not self.progress)
        for batch in batches:
            for (i, s, count), row_outs in zip(
                batch, self._generate_batch(batch, encoded, sampling, base_seed)
            ):
                results[i][s : s + count] = row_outs
            bar.update(sum(u[2] for u in batch))
        bar.close()
        return results  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------

    def _encode(self, prompt: str) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.pad_id)

    def _generate_batch(
        self,
        units: Sequence[tuple[int, int, int]],
        encoded: Sequence[list[int]],
        sampling: SamplingParams,
        base_seed: int,
    ) -> list[list[Completion]]:
        import torch

        dev = self.device
        prompt_ids = [encoded[i] for i, _, _ in units]
        width = max(len(ids) for ids in prompt_ids)
        max_new = sampling.max_tokens
        if self.max_positions is not None:
            room = self.max_positions - width
            if room <= 0:
                raise ValueError(
                    f"a prompt of {width} tokens leaves no room in the model's "
                    f"{self.max_positions}-token context"
                )
            max_new = min(max_new, room)
        input_ids = torch.full((len(units), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(units), width), dtype=torch.long)
        for r, ids in enumerate(prompt_ids):
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            mask[r, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self._prefill(input_ids, mask, positions)
            # Repeat each prompt's cache and logits for its samples.
            repeat = torch.tensor([count for _, _, count in units], device=dev)
            rows = torch.repeat_interleave(torch.arange(len(units), device=dev), repeat)
            cache = out.past_key_values
            cache.batch_select_indices(rows)
            logits = out.logits[:, -1, :][rows]
            mask = mask[rows]
            row_keys = [(i, s + j) for i, s, count in units for j in range(count)]
            gens = []
            for i, sample in row_keys:
                gen = torch.Generator(device=dev)
                gen.manual_seed(_row_seed(base_seed, i, sample))
                gens.append(gen)
            tokens: list[list[int]] = [[] for _ in row_keys]
            logps: list[list[float]] = [[] for _ in row_keys]
            finish = ["length"] * len(row_keys)
            active = list(range(len(row_keys)))  # rows still decoding, in cache order
            stop_window = max((len(s) for s in sampling.stop), default=0) + 8
            for _ in range(max_new):
                logprobs = policy_logprobs(logits, sampling)
                if sampling.temperature <= 0:
                    chosen = torch.argmax(logprobs, dim=-1)
                else:
                    probs = logprobs.exp()
                    chosen = torch.cat(
                        [
                            torch.multinomial(probs[k], 1, generator=gens[r])
                            for k, r in enumerate(active)
                        ]
                    )
                picked = logprobs.gather(-1, chosen[:, None]).squeeze(-1).tolist()
                chosen_list = chosen.tolist()
                keep = []
                for k, r in enumerate(active):
                    tok = chosen_list[k]
                    tokens[r].append(tok)
                    logps[r].append(picked[k])
                    if tok in self.eos_ids or self._hit_stop(tokens[r], sampling.stop, stop_window):
                        finish[r] = "stop"
                    else:
                        keep.append(k)
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(index)
                    mask = mask[index]
                    chosen = chosen[index]
                    active = [active[k] for k in keep]
                if len(tokens[active[0]]) >= max_new:
                    break
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
                out = self.model(
                    input_ids=chosen[:, None],
                    attention_mask=mask,
                    position_ids=(mask.sum(-1, keepdim=True) - 1),
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :]
        completions = [
            Completion(
                text=self._text(tokens[r], sampling.stop, finish[r]),
                token_ids=tokens[r],
                logprobs=logps[r],
                finish_reason=finish[r],
            )
            for r in range(len(row_keys))
        ]
        grouped, start = [], 0
        for _, _, count in units:
            grouped.append(completions[start : start + count])
            start += count
        return grouped

    def _prefill(self, input_ids: Any, mask: Any, positions: Any) -> Any:
        kwargs = dict(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True
        )
        try:  # only the last position's logits: no [batch, prompt, vocab] tensor
            return self.model(**kwargs, logits_to_keep=1)
        except TypeError:  # architectures without `logits_to_keep`
            return self.model(**kwargs)

    def _hit_stop(self, tokens: list[int], stop: list[str], window: int) -> bool:
        if not stop:
            return False
        tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def _text(self, tokens: list[int], stop: list[str], finish: str) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if finish == "stop" and stop:
            ends = [text.find(s) + len(s) for s in stop if s in text]
            if ends:
                text = text[: min(ends)]  # keep the first stop string, drop what follows
        return text
