"""Next-token stages: `pretrain` (continued pre-training) and `sft` (cold start).

`pretrain` reads Megatron-Core GPT datasets (memory-mapped IndexedDatasets, Megatron-LM's blends,
`data/gpt_dataset.py`) in `seq_length + 1` token samples and logs a validation loss every
`run.eval_every` steps. `sft` reads instruction JSONL, renders prompt and response with the
tokenizer's chat template and trains on the response tokens only. Batches are a pure function of (seed, step), so a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.stages.common import (
    global_positions,
    micro_batches,
    order_index,
    read_jsonl_fields,
)


class PretrainData:
    """Megatron-Core GPT datasets (`data/gpt_dataset.py`): memory-mapped, blended, seeded.

    Position p of the data order is sample p of the training dataset, which holds exactly the
    `run.steps * batch.sequences_per_step` samples the run consumes, so a resume at step s reads
    what an uninterrupted run reads (same seed, blend, seq_length and run.steps).
    """

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        from megatron_rlpt.data.gpt_dataset import build_gpt_datasets

        self.seq_length = cfg.data.seq_length
        valid = cfg.data.valid_sequences if cfg.run.eval_every else 0
        self.train, self.valid = build_gpt_datasets(
            cfg, tokenizer, cfg.run.steps * cfg.batch.sequences_per_step, valid)
        if cfg.run.eval_every and self.valid is None:
            raise UsageError("run.eval_every needs validation data: data.valid_path or a "
                             "data.split with a validation part (e.g. 98,2,0)")

    @staticmethod
    def _stack(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]).contiguous()
                for k in ("tokens", "labels", "loss_mask", "position_ids")}

    def rows(self, positions: list[int]) -> dict[str, torch.Tensor]:
        return self._stack([self.train[p] for p in positions])

    def valid_rows(self, positions: list[int]) -> dict[str, torch.Tensor]:
        return self._stack([self.valid[p] for p in positions])


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
            self.data: Any = PretrainData(cfg, tokenizer)
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
        every = self.cfg.run.eval_every
        if every and (step % every == 0 or step == self.cfg.run.steps):
            metrics["valid/loss"] = self.evaluate()
        return metrics

    def evaluate(self) -> float:
        """Mean next-token loss over the validation sequences (the same ones every time), shared
        among the data-parallel ranks; no gradients, dropout off."""
        from megatron.core import parallel_state as ps

        from megatron_rlpt.runtime.step import next_token_forward_step, run_forward_backward
        from megatron_rlpt.stages.common import data_parallel_share

        b = self.cfg.batch
        n = min(self.cfg.data.valid_sequences, len(self.data.valid))
        dp = ps.get_data_parallel_world_size()
        n -= n % (dp * b.micro_batch_size)  # whole micro-batches on every rank
        if n == 0:
            raise UsageError(f"data.valid_sequences must hold at least one micro-batch per "
                             f"data-parallel rank ({dp * b.micro_batch_size})")
        first, count = data_parallel_share(n)
        batches = micro_batches(self.data.valid_rows(list(range(first, first + count))),
                                b.micro_batch_size)
        for chunk in self.state.chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                metrics = run_forward_backward(self.state.chunks, next_token_forward_step,
                                               iter(batches), len(batches), b.micro_batch_size,
                                               self.cfg.data.seq_length, forward_only=True)
        finally:
            for chunk in self.state.chunks:
                chunk.train()
        return metrics["lm_loss"]

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
