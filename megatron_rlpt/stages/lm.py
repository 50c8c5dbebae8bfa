"""Next-token stages: `pretrain` (continued pre-training) and `sft` (cold start).

`pretrain` reads documents from a JSONL/text file or a Megatron IndexedDataset prefix, joins
them with the end-of-text token and cuts the stream into `seq_length + 1` windows. `sft` reads
instruction JSONL, renders prompt and response with the tokenizer's chat template and trains on
the response tokens only. Batches are a pure function of (seed, step), so a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.stages.common import (
    global_positions,
    micro_batches,
    order_index,
    read_jsonl_fields,
)


def _read_texts(path: Path, key: str = "text") -> list[str]:
    if path.suffix == ".jsonl":
        return [text for (text,) in read_jsonl_fields(path, (key,))]
    return [path.read_text(encoding="utf-8")]


def token_stream(path: str, tokenizer: Any) -> np.ndarray:
    """All training tokens of `path` as one array, documents separated by end-of-text."""
    p = Path(path)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if IndexedDataset.exists(str(p)):
        ds = IndexedDataset(str(p))
        parts = [np.asarray(ds[i]) for i in range(len(ds))]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if not p.is_file():
        raise UsageError(f"pretrain data {path} is neither a file nor an IndexedDataset prefix")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in _read_texts(p):
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    return np.asarray(ids, dtype=np.int64)


class PretrainData:
    """Fixed windows over the token stream, visited in a seeded order, epoch after epoch."""

    def __init__(self, path: str, tokenizer: Any, seq_length: int, seed: int) -> None:
        self.tokens = token_stream(path, tokenizer)
        self.seq_length = seq_length
        self.seed = seed
        self.num_windows = (len(self.tokens) - 1) // seq_length
        if self.num_windows < 1:
            raise UsageError(f"{path} holds {len(self.tokens)} tokens, fewer than one sequence "
                             f"of {seq_length + 1}")

    def rows(self, positions: list[int]) -> dict[str, torch.Tensor]:
        windows = [self._window(p) for p in positions]
        rows = torch.as_tensor(np.stack(windows))
        n, s = len(positions), self.seq_length
        return {"tokens": rows[:, :-1], "labels": rows[:, 1:], "loss_mask": torch.ones(n, s),
                "position_ids": torch.arange(s).expand(n, -1).contiguous()}

    def _window(self, position: int) -> np.ndarray:
        start = order_index(position, self.num_windows, self.seed) * self.seq_length
        return self.tokens[start : start + self.seq_length + 1]


class SFTData:
    """Instruction pairs rendered with the chat template; loss on the response tokens only."""

    def __init__(self, path: str, tokenizer: Any, seq_length: int, seed: int,
                 prompt_key: str, response_key: str) -> None:
        self.tokenizer, self.seq_length, self.seed = tokenizer, seq_length, seed
        self.examples = read_jsonl_fields(path, (prompt_key, response_key))
        self.truncated = 0
        """Examples of the last `rows()` call cut at `seq_length` (their ending and EOS lost)."""

    def encode(self, prompt: str, response: str) -> tuple[list[int], int]:
        """Token ids of the whole conversation and how many of them are the prompt."""
        tok = self.tokenizer
        messages = [{"role": "user", "content": prompt}]
        if getattr(tok, "chat_template", None):
            prefix = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            prefix = prompt + "\n"
        prompt_ids = tok(prefix, add_special_tokens=False)["input_ids"]
        response_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return prompt_ids + response_ids, len(prompt_ids)

    def rows(self, positions: list[int]) -> dict[str, torch.Tensor]:
        s = self.seq_length
        n = len(positions)
        tokens = torch.full((n, s + 1), self.tokenizer.eos_token_id, dtype=torch.long)
        mask = torch.zeros(n, s)
        longest = 1
        self.truncated = 0
        for r, pos in enumerate(positions):
            example = self.examples[order_index(pos, len(self.examples), self.seed)]
            ids, n_prompt = self.encode(*example)
            self.truncated += len(ids) > s + 1
            ids = ids[: s + 1]
            tokens[r, : len(ids)] = torch.tensor(ids)
            # Label j predicts token j+1: train where that token belongs to the response.
            mask[r, max(n_prompt - 1, 0) : len(ids) - 1] = 1
            longest = max(longest, len(ids) - 1)
        # Pad to the batch's longest conversation, not to seq_length: no compute on padding.
        tokens, mask = tokens[:, : longest + 1], mask[:, :longest].contiguous()
        return {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                "loss_mask": mask,
                "position_ids": torch.arange(longest).expand(n, -1).contiguous()}


class LMStage:
    """One optimizer step of next-token training on this rank's share of the global batch."""

    def __init__(self, cfg: Any, state: Any, tokenizer: Any) -> None:
        self.cfg, self.state = cfg, state
        self._warned_truncation = False
        d = cfg.data
        if cfg.run.stage == "pretrain":
            self.data: Any = PretrainData(d.path, tokenizer, d.seq_length, cfg.run.seed)
        else:
            self.data = SFTData(d.path, tokenizer, d.seq_length, cfg.run.seed, d.prompt_key,
                                d.response_key)

    def step(self, step: int) -> dict[str, float]:
        from megatron_rlpt.runtime.step import next_token_forward_step, train_step

        b = self.cfg.batch
        positions = global_positions(step, b.sequences_per_step)
        batches = micro_batches(self.data.rows(positions), b.micro_batch_size)
        seq_length = max(mb["tokens"].shape[1] for mb in batches)
        metrics = train_step(self.state, next_token_forward_step, iter(batches), len(batches),
                             b.micro_batch_size, seq_length)
        metrics["loss"] = metrics.pop("lm_loss")
        if isinstance(self.data, SFTData):
            metrics["sft/truncated_examples"] = self._count_truncated(step, len(positions))
        return metrics

    def _count_truncated(self, step: int, per_rank: int) -> float:
        """Over-long SFT examples in this step, over all DP ranks; the first time any appear,
        rank 0 warns: a cut example trains on a response that never ends (its EOS is lost)."""
        from megatron.core import parallel_state as ps

        counts = torch.tensor([float(self.data.truncated), float(per_rank)])
        torch.distributed.all_reduce(counts, group=ps.get_data_parallel_group())
        cut, total = int(counts[0]), int(counts[1])
        if cut and not self._warned_truncation and torch.distributed.get_rank() == 0:
            self._warned_truncation = True
            warnings.warn(
                f"step {step}: {cut} of {total} SFT examples are longer than data.seq_length="
                f"{self.cfg.data.seq_length} tokens and were truncated (the cut part and the "
                "closing EOS are not trained); raise data.seq_length or filter the data. "
                "Metric sft/truncated_examples counts them per step.", stacklevel=2)
        return float(cut)
