"""Where RL prompts and their rewards come from: RLPT triples or RLVR math problems.

A source maps a position in the endless, seeded data order to a prompt (token ids, task, loss
weight, what the reward needs) and knows how to score completions of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
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
    truncated: bool = False
    """RLPT: the context was left-truncated to fit `rollout.max_prompt_tokens`."""


class PromptSource:
    """Base class: `prompt(position, rng)`, `make_judge()`, `score(judge, texts, prompts)`."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> list[int]:
        ids = self._tokens(text)
        limit = self.cfg.rollout.max_prompt_tokens
        if len(ids) > limit:
            raise UsageError(f"a prompt of {len(ids)} tokens exceeds rollout.max_prompt_tokens="
                             f"{limit}")
        return ids


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest x in [lo, hi] with ok(x), given ok(hi) and ok monotone (False then True)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def fit_context(encode: Callable[[str], list[int]], pieces: Callable[[], list[str]],
                limit: int, tokenizer: Any) -> tuple[list[int], str, bool]:
    """The prompt's token ids with its context left-truncated to fit `limit` tokens, that
    context, and whether it was cut.

    `encode(context)` renders and tokenizes the whole prompt; `pieces()` is the context cut at
    sentence starts (`TripleDataset.context_pieces`). Whole leading sentences go first (the
    paper's left-truncated context); if the last sentence alone is still too long, its leading
    tokens go. Each candidate is measured as the rendered prompt, so template, chat wrapping and
    token merges at the seams are all counted.
    """
    parts = pieces()
    context = "".join(parts)
    ids = encode(context)
    if len(ids) <= limit:
        return ids, context, False

    def fits_from(j: int) -> bool:
        return len(encode("".join(parts[j:]))) <= limit

    last = len(parts) - 1
    if last >= 1 and fits_from(last):
        context = "".join(parts[_smallest(1, last, fits_from):])
        return encode(context), context, True
    # One sentence is still too long: keep as many of its last tokens as fit.
    tail = tokenizer(parts[-1], add_special_tokens=False)["input_ids"]

    def suffix(drop: int) -> str:
        return tokenizer.decode(tail[drop:]).lstrip("\ufffd") if drop < len(tail) else ""

    if len(encode("")) > limit:
        raise UsageError(f"max_prompt_tokens={limit} is too small for the prompt "
                         "template even with an empty context")
    context = suffix(_smallest(0, len(tail), lambda d: len(encode(suffix(d))) <= limit))
    return encode(context), context, True


def fit_following(render: Callable[[str, str], list[int]], following: str, limit: int,
                  tokenizer: Any) -> str:
    """MSR's visible s_i+1 cut to its leading tokens (what directly follows the mask) so that
    `render(context, following)` fits `limit` with an empty context; unchanged if even an empty
    s_i+1 does not fit (fit_context then reports the budget as too small)."""
    ids = tokenizer(following, add_special_tokens=False)["input_ids"]

    def kept(drop: int) -> str:
        return tokenizer.decode(ids[:len(ids) - drop])

    def fits(drop: int) -> bool:
        return len(render("", kept(drop))) <= limit

    if not fits(len(ids)):
        return following
    return kept(_smallest(0, len(ids), fits))


class RLPTSource(PromptSource):
    """ASR / MSR prompts from the triples written by `rlpt prepare`; judged by the configured judge."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        super().__init__(cfg, tokenizer)
        from megatron_rlpt.data.dataset import TripleDataset, WeightedTriples
        from megatron_rlpt.data.gpt_dataset import parse_blend
        from megatron_rlpt.tasks import Templates

        paths, weights = parse_blend(cfg.data.path)
        datasets = [TripleDataset(p) for p in paths]
        self.dataset = datasets[0]
        self.blend: WeightedTriples | None = None
        def tokenizer_of(ds: Any) -> dict:
            return {k: v for k, v in ds.manifest.get("tokenizer", {}).items() if k != "path"}

        for other in datasets[1:]:
            if tokenizer_of(other) != tokenizer_of(datasets[0]):
                raise UsageError(f"{other.path} was prepared with another tokenizer than "
                                 f"{datasets[0].path}; a data.path blend needs one tokenizer")
        if len(datasets) > 1 or weights is not None:
            # Unweighted lists weigh each directory by its number of triples (as Megatron-LM).
            self.blend = WeightedTriples(datasets, weights or [len(d) for d in datasets],
                                         cfg.run.seed)
        elif len(self.dataset) == 0:
            raise UsageError(f"{cfg.data.path} holds no triples")
        self.templates = Templates.from_config(cfg.task)

    def locate(self, position: int) -> tuple[Any, int]:
        """The prepared directory and triple index at `position` of the data order."""
        if self.blend is not None:
            return self.blend.locate(position)
        return self.dataset, order_index(position, len(self.dataset), self.cfg.run.seed)

    def prompt(self, position: int, rng: random.Random) -> Prompt:
        from megatron_rlpt.tasks import Task, msr_probability, render_prompt, task_loss_weight

        t = self.cfg.task
        dataset, index = self.locate(position)
        _, target, next_segment = dataset.texts(index)
        task = Task.MSR if rng.random() < msr_probability(t) else Task.ASR

        limit = self.cfg.rollout.max_prompt_tokens

        def render(ctx: str, following: str) -> list[int]:
            return self._tokens(render_prompt(task, ctx, following, t, self.templates,
                                              self.tokenizer if t.chat_template else None))

        cut_following = False
        if task is Task.MSR and len(render("", next_segment)) > limit:
            next_segment = fit_following(render, next_segment, limit, self.tokenizer)
            cut_following = True
        ids, _, truncated = fit_context(lambda ctx: render(ctx, next_segment),
                                        lambda: dataset.context_pieces(index), limit,
                                        self.tokenizer)
        # The judge's reference: s_i and the following segments, exactly as in the document.
        k = t.asr_reference_segments if task is Task.ASR else t.msr_reference_segments
        if self.cfg.judge.reward_mode == "strict":
            k = 0
        return Prompt(ids, task.value, task_loss_weight(task, t),
                      dataset.reference(index, k), target, truncated or cut_following)

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
