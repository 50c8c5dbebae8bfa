"""The generative judge in this process: any `RolloutEngine`, by default a Hugging Face model.

For a single node without a judge server. Greedy decoding of the judge prompt, optionally
wrapped in the judge tokenizer's chat template, then the same `Score: 0|1` parsing as over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from megatron_rlpt.reward.base import Judge, JudgeItem, JudgeResult, JudgeStatus
from megatron_rlpt.reward.prompts import parse_score, render_judge_prompt
from megatron_rlpt.rollout.base import RolloutEngine, SamplingParams
from megatron_rlpt.tasks import apply_chat

logger = logging.getLogger(__name__)


class EngineJudge(Judge):
    """`Judge` that generates the verdict with a rollout engine in this process."""

    def __init__(
        self,
        engine: RolloutEngine,
        template: str,
        *,
        tokenizer: Any = None,
        chat_template: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_tokens: int = 32,
        temperature: float = 0.0,
    ) -> None:
        """`tokenizer` (default: the engine's own) supplies the chat template; with
        `chat_template` on and a tokenizer that has one, the prompt is the user turn."""
        super().__init__()
        self.engine = engine
        self.template = template
        tokenizer = tokenizer if tokenizer is not None else getattr(engine, "tokenizer", None)
        self.tokenizer = tokenizer if (
            chat_template and getattr(tokenizer, "chat_template", None) is not None
        ) else None
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0)

    def prompt(self, item: JudgeItem) -> str:
        """The exact text the engine is given for `item`."""
        text = render_judge_prompt(self.template, item.predicted, item.reference)
        if self.tokenizer is not None:
            text = apply_chat(text, self.tokenizer, **self.chat_template_kwargs)
        return text

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        if not items:
            return []
        prompts = [self.prompt(item) for item in items]
        self.stats.requests += len(prompts)
        try:
            outputs = self.engine.generate(prompts, 1, self.sampling)
        except Exception as err:  # a judge failure, not a crash of the trainer
            logger.warning("in-process judge failed on %d item(s): %s", len(items), err)
            results = [JudgeResult.failure(JudgeStatus.ERROR, type(err).__name__)
                       for _ in items]
        else:
            results = []
            for completions in outputs:
                text = completions[0].text
                score = parse_score(text)
                results.append(
                    JudgeResult(float(score), JudgeStatus.OK, raw=text) if score is not None
                    else JudgeResult.failure(JudgeStatus.PARSE_ERROR, "no single Score: 0|1",
                                             raw=text)
                )
        self.stats.record(results)
        return results

    @classmethod
    def from_pretrained(cls, path: str, template: str, *, device: str | None = None,
                        dtype: str | None = None, batch_size: int = 16,
                        **kwargs: Any) -> EngineJudge:
        """The judge on a Hugging Face model directory, run with the in-process HF engine."""
        from megatron_rlpt.rollout.hf_engine import HFEngine

        engine = HFEngine(path, device=device, dtype=dtype, batch_size=batch_size,
                          progress=False)
        return cls(engine, template, **kwargs)
