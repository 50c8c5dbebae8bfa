"""Where RL prompts and their rewards come from: RLPT triples or RLVR math problems.

A source maps a position in the endless, seeded data order to a prompt (token ids, task, loss
weight, what the reward needs) and knows how to score completions of it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.stages.common import order_index, read_jsonl_fields

RLVR_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Prompt:
    """One RL prompt."""

    prompt_ids: list[int]
    task: str
    """`asr`, `msr` or `math`."""
    sample_weight: float
    reference: str
    """RLPT: the judge's reference text. RLVR: the gold answer."""
    target: str | None = None
    """RLPT: s_i alone (for the strict reward)."""


class PromptSource:
    """Base class: `prompt(position, rng)`, `make_judge()`, `score(judge, texts, prompts)`."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.cfg.rollout.max_prompt_tokens
        if len(ids) > limit:
            raise UsageError(f"a prompt of {len(ids)} tokens exceeds rollout.max_prompt_tokens="
                             f"{limit}; prepare the data with a smaller context budget")
        return ids


class RLPTSource(PromptSource):
    """ASR / MSR prompts from the triples written by `rlpt prepare`; judged by the configured judge."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        from megatron_rlpt.data.dataset import TripleDataset
        from megatron_rlpt.tasks import Templates

        self.dataset = TripleDataset(cfg.data.path)
        if len(self.dataset) == 0:
            raise UsageError(f"{cfg.data.path} holds no triples")
        self.templates = Templates.from_config(cfg.task)

    def prompt(self, position: int, rng: random.Random) -> Prompt:
        from megatron_rlpt.tasks import Task, msr_probability, render_prompt, task_loss_weight

        t = self.cfg.task
        index = order_index(position, len(self.dataset), self.cfg.run.seed)
        context, target, next_segment = self.dataset.texts(index)
        task = Task.MSR if rng.random() < msr_probability(t) else Task.ASR
        text = render_prompt(task, context, next_segment, t, self.templates,
                             self.tokenizer if t.chat_template else None)
        # The judge's reference: s_i and the following segments, exactly as in the document.
        k = t.asr_reference_segments if task is Task.ASR else t.msr_reference_segments
        if self.cfg.judge.reward_mode == "strict":
            k = 0
        return Prompt(self._encode(text), task.value, task_loss_weight(task, t),
                      self.dataset.reference(index, k), target)

    def make_judge(self) -> Any:
        from megatron_rlpt.reward import build_judge

        return build_judge(self.cfg.judge)

    def score(self, judge: Any, texts: list[str], prompts: list[Prompt]) -> list[Any]:
        from megatron_rlpt.reward.scoring import score_completions

        return score_completions(judge, texts, [p.reference for p in prompts],
                                 [p.target or "" for p in prompts],
                                 rejudge_attempts=self.cfg.judge.rejudge_attempts)


class RLVRSource(PromptSource):
    """Math problems from JSONL (`data.prompt_key`, `data.answer_key`), checked by Math-Verify."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        self.rows = read_jsonl_fields(cfg.data.path, (cfg.data.prompt_key, cfg.data.answer_key))

    def prompt(self, position: int, rng: random.Random) -> Prompt:
        from megatron_rlpt.tasks import apply_chat

        problem, answer = self.rows[order_index(position, len(self.rows), self.cfg.run.seed)]
        text = f"{problem}\n{RLVR_INSTRUCTION}"
        if self.cfg.task.chat_template:
            text = apply_chat(text, self.tokenizer, self.cfg.task.system_prompt)
        return Prompt(self._encode(text), "math", 1.0, answer)

    def make_judge(self) -> Any:
        from megatron_rlpt.reward.math_judge import MathJudge

        return MathJudge()

    def score(self, judge: Any, texts: list[str], prompts: list[Prompt]) -> list[Any]:
        return judge.score_answers(texts, [p.reference for p in prompts])


def build_prompt_source(cfg: Any, tokenizer: Any) -> PromptSource:
    """The prompt source of the configured stage."""
    return RLPTSource(cfg, tokenizer) if cfg.run.stage == "rlpt" else RLVRSource(cfg, tokenizer)
