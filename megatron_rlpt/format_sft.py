"""Format-teaching SFT data from prepared triples: the warm-up before RLPT.

The paper cold-starts RLPT with instruction SFT so that the policy answers in the prediction
format. This module writes such a set from `rlpt prepare` output: each record's prompt is the
paper's ASR or MSR prompt for one triple, and its response a short reasoning stub followed by the
true segment s_i between the prediction tags. It teaches the format only; it is not the paper's
cold-start data (which is general instruction data), and its "reasoning" is a fixed sentence.

The records are JSONL `{"prompt": ..., "response": ...}`, what `rlpt train` stage `sft` reads
(`data.prompt_key` / `data.response_key`); the SFT stage applies the chat template itself.
`rlpt quickstart` uses the same function for its warm-up (no stub, half abstentions).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_rlpt.tasks import END_TAG, START_TAG

ABSTAIN = "I cannot tell what comes next."
"""A stand-in for a wrong answer (the judge never rewards it)."""
REASONING = {
    "asr": "The context ends mid-passage; the next sentence should carry on its topic, "
           "terms and style from where the last sentence stops.",
    "msr": "The masked part must lead from the text before it into the sentence after it, "
           "so it should introduce what that sentence takes up.",
}
"""The default reasoning stubs, per task: one fixed sentence before the prediction."""


def format_examples(dataset: Any, task_cfg: Any, seed: int, *, correct_fraction: float = 1.0,
                    reasoning: dict[str, str] | None = None, abstain: str = ABSTAIN,
                    tokenizer: Any = None, max_prompt_tokens: int = 0,
                    limit: int = 0) -> Iterator[dict[str, str]]:
    """SFT records for the triples of `dataset` (a `TripleDataset`), in order.

    Each triple becomes an ASR or MSR prompt (MSR with probability λ/(1+λ), as `task_cfg` says)
    answered with `reasoning[task]` (None: no reasoning) and then the true segment between the
    tags, or, with probability 1 - `correct_fraction`, with `abstain` instead of the segment.
    With `max_prompt_tokens` (and `tokenizer`) a long context is left-truncated as RLPT does.
    `limit` > 0 stops after that many records.
    """
    from megatron_rlpt.tasks import Task, Templates, msr_probability, render_prompt

    templates = Templates.from_config(task_cfg)
    rng = random.Random(seed)
    count = len(dataset) if limit <= 0 else min(limit, len(dataset))
    for i in range(count):
        context, target, next_segment = dataset.texts(i)
        # Draw order (answer, then task) is fixed: the quickstart's data depends on it.
        answer = target if rng.random() < correct_fraction else abstain
        task = Task.MSR if rng.random() < msr_probability(task_cfg) else Task.ASR
        if max_prompt_tokens > 0:
            from megatron_rlpt.stages.prompts import fit_context, fit_following

            def render(ctx: str, nxt: str, task: Task = task) -> list[int]:
                text = render_prompt(task, ctx, nxt, task_cfg, templates)
                return tokenizer(text, add_special_tokens=False)["input_ids"]

            if task is Task.MSR:
                next_segment = fit_following(render, next_segment, max_prompt_tokens, tokenizer)
            _, context, _ = fit_context(lambda ctx, nxt=next_segment: render(ctx, nxt),
                                        lambda i=i: dataset.context_pieces(i),
                                        max_prompt_tokens, tokenizer)
        prompt = render_prompt(task, context, next_segment, task_cfg, templates)
        stub = f"{reasoning[task.value]}\n" if reasoning else ""
        yield {"prompt": prompt, "response": f"{stub}{START_TAG}{answer}{END_TAG}"}


def write_format_sft(data_dir: str | Path, out: str | Path, task_cfg: Any, seed: int,
                     **kwargs: Any) -> int:
    """Write `format_examples` of the triples in `data_dir` to `out` (JSONL, atomically);
    returns the number of records."""
    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.utils.io import atomic_open

    n = 0
    with atomic_open(out, "w", encoding="utf-8") as f:
        for record in format_examples(TripleDataset(data_dir), task_cfg, seed, **kwargs):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
