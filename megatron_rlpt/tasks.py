"""The two RLPT tasks: prompts, answer extraction, ASR/MSR mixing and the judge's reference.

ASR (autoregressive segment reasoning) asks for the segment s_i after the context s_<i; MSR
(middle segment reasoning) asks for s_i given s_<i and the following segment s_i+1. The default
prompts are the paper's text byte for byte (`RLPT_SPEC.md` §2.2–2.3); a config may point to
other template files. Pure functions, no model.
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_rlpt.errors import UsageError

START_TAG = "<|startofprediction|>"
"""Opens the predicted segment in a completion (plain text, not an added vocabulary token)."""
END_TAG = "<|endofprediction|>"
"""Closes the predicted segment."""

ASR_TEMPLATE = (
    "Complete the text provided under ### Context by predicting the next most probable sentence.\n"
    "Please reason step by step to determine the best possible continuation, and then enclose "
    "your final answer within <|startofprediction|> and <|endofprediction|> tags.\n"
    "### Context\n"
    "{context}"
)
"""The paper's ASR prompt (§2.2). Placeholder: `{context}` = s_<i."""

MSR_TEMPLATE = (
    "## Text Material ##: {prompt}\n"
    "<MASK>\n"
    "{next_step}\n"
    "## Task ##: Fill in the <MASK> section of the material with appropriate sentences or a "
    "solution step.\n"
    "Carefully reason step by step to determine the most suitable completion. Finally, provide "
    "your best prediction for the <MASK> section. Enclose your final answer for the <MASK> part "
    "within <|startofprediction|> and <|endofprediction|>."
)
"""The paper's MSR prompt (§2.3). Placeholders: `{prompt}` = s_<i, `{next_step}` = s_i+1."""

ASR_FIELDS = ("context",)
MSR_FIELDS = ("prompt", "next_step")


class Task(str, enum.Enum):
    """Which objective a prompt trains."""

    ASR = "asr"
    MSR = "msr"


@dataclass
class TaskConfig:
    """How RLPT prompts are built and mixed, and what reference the judge sees."""

    lam: float = 0.5
    """λ of the paper's objective J = E_ASR[r] + λ·E_MSR[r] (Eq. 5). The paper does not state its
    value; 0.5 follows the spec's inferred recipe. 0 trains ASR only."""
    lambda_mode: Literal["sampling", "loss_weight"] = "sampling"
    """How λ enters: `sampling` draws each prompt as MSR with probability λ/(1+λ) (loss weight 1
    for both tasks); `loss_weight` draws ASR and MSR equally often and weights MSR samples by λ
    in the loss. Both have the same expected objective up to a constant factor."""
    asr_template_file: str | None = None
    """A file holding another ASR template with a `{context}` placeholder; None: the paper's."""
    msr_template_file: str | None = None
    """A file holding another MSR template with `{prompt}` and `{next_step}`; None: the paper's."""
    chat_template: bool = False
    """Wrap each prompt as a user message in the tokenizer's chat template (with the generation
    prompt). The paper does not say whether it did; off means the raw prompt text is sent."""
    system_prompt: str | None = None
    """A system message placed before the user message when `chat_template` is on."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for `apply_chat_template` (e.g. `enable_thinking` for Qwen3)."""
    asr_reference_segments: int = 3
    """For ASR, how many segments after s_i the judge's reference holds besides s_i (the paper
    gives 'several' without a number). With the prefix reward a prediction that runs on past s_i
    into the following text still earns the reward."""
    msr_reference_segments: int = 0
    """For MSR, how many segments after s_i join the reference. 0 (s_i alone) by default: the
    prompt shows s_i+1, so a reference holding it would reward copying the visible text."""
    segment_separator: str = " "
    """Joins segments when a context or reference is given as a list of segments."""


# -- templates -----------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Replace `{name}` placeholders in one pass.

    Unlike `str.format` this leaves every other brace alone (LaTeX in a template or in the text is
    common) and never expands a placeholder that appears inside an inserted value.
    """
    return _PLACEHOLDER.sub(
        lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template
    )


def load_template(path: str | Path, fields: Sequence[str]) -> str:
    """Read a template file; it must use each placeholder in `fields`.

    The file is read as UTF-8 and one final newline (which editors add) is dropped, so a file
    holding the paper's text reproduces the built-in template exactly.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read prompt template {path}: {err.strerror}") from err
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    missing = [f for f in fields if "{" + f + "}" not in text]
    if missing:
        raise UsageError(
            f"prompt template {path} lacks placeholder(s) {', '.join('{' + f + '}' for f in missing)}"
        )
    return text


@dataclass(frozen=True)
class Templates:
    """The ASR and MSR templates in force."""

    asr: str = ASR_TEMPLATE
    msr: str = MSR_TEMPLATE

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> Templates:
        asr = load_template(cfg.asr_template_file, ASR_FIELDS) if cfg.asr_template_file else ASR_TEMPLATE
        msr = load_template(cfg.msr_template_file, MSR_FIELDS) if cfg.msr_template_file else MSR_TEMPLATE
        return cls(asr=asr, msr=msr)


def _join(text: str | Sequence[str], sep: str) -> str:
    return text if isinstance(text, str) else sep.join(text)


def asr_prompt(context: str | Sequence[str], template: str = ASR_TEMPLATE, sep: str = " ") -> str:
    """The ASR prompt for context s_<i (a string, or its segments joined by `sep`)."""
    return fill_template(template, {"context": _join(context, sep)})


def msr_prompt(
    context: str | Sequence[str], next_segment: str, template: str = MSR_TEMPLATE, sep: str = " "
) -> str:
    """The MSR prompt for context s_<i and the visible following segment s_i+1."""
    return fill_template(template, {"prompt": _join(context, sep), "next_step": next_segment})


def apply_chat(prompt: str, tokenizer: Any, system_prompt: str | None = None,
               **template_kwargs: Any) -> str:
    """`prompt` as the user turn of `tokenizer`'s chat template, ending with the assistant cue."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError("chat_template is on but the tokenizer has no chat template")
    messages = [{"role": "user", "content": prompt}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **template_kwargs
    )


def render_prompt(
    task: Task,
    context: str | Sequence[str],
    next_segment: str,
    cfg: TaskConfig,
    templates: Templates | None = None,
    tokenizer: Any = None,
) -> str:
    """The prompt text for one sample: the task's template, chat-wrapped if the config asks."""
    templates = templates or Templates.from_config(cfg)
    sep = cfg.segment_separator
    if task is Task.ASR:
        text = asr_prompt(context, templates.asr, sep)
    else:
        text = msr_prompt(context, next_segment, templates.msr, sep)
    if cfg.chat_template:
        if tokenizer is None:
            raise UsageError("chat_template is on: pass the policy's tokenizer")
        text = apply_chat(text, tokenizer, cfg.system_prompt, **cfg.chat_template_kwargs)
    return text


# -- extraction ----------------------------------------------------------------------------------


class ExtractStatus(str, enum.Enum):
    """What the completion's prediction tags looked like."""

    OK = "ok"
    MISSING = "missing"
    """No start tag at all."""
    UNCLOSED = "unclosed"
    """The last start tag is never followed by an end tag (e.g. the completion was cut off)."""
    EMPTY = "empty"
    """The last tag pair encloses only whitespace."""


@dataclass(frozen=True)
class Extraction:
    """The predicted segment of a completion, or why there is none."""

    prediction: str | None
    status: ExtractStatus
    num_start_tags: int
    """How many start tags the completion holds (more than one: the model restated its answer)."""

    @property
    def ok(self) -> bool:
        return self.status is ExtractStatus.OK


def extract_prediction(text: str) -> Extraction:
    """The predicted segment: the text after the *last* start tag, up to the next end tag.

    - no start tag → MISSING (a stray end tag alone does not count);
    - the last start tag has no end tag after it → UNCLOSED, even if an earlier pair was closed:
      the model's final answer is the last one it opened;
    - several pairs → the last one wins; nested start tags (`S a S b E`) → the innermost (`b`);
    - whitespace around the prediction is stripped; nothing left → EMPTY.

    Every status but OK earns reward 0 (a valid reward, counted apart from judge failures).
    """
    count = text.count(START_TAG)
    start = text.rfind(START_TAG)
    if start < 0:
        return Extraction(None, ExtractStatus.MISSING, 0)
    body_start = start + len(START_TAG)
    end = text.find(END_TAG, body_start)
    if end < 0:
        return Extraction(None, ExtractStatus.UNCLOSED, count)
    prediction = text[body_start:end].strip()
    if not prediction:
        return Extraction(None, ExtractStatus.EMPTY, count)
    return Extraction(prediction, ExtractStatus.OK, count)


# -- mixing and references -----------------------------------------------------------------------


def msr_probability(cfg: TaskConfig) -> float:
    """Probability that a prompt is drawn as MSR."""
    if cfg.lam < 0 or not math.isfinite(cfg.lam):
        raise UsageError(f"task lambda must be a finite number >= 0, got {cfg.lam}")
    if cfg.lambda_mode == "sampling":
        return cfg.lam / (1.0 + cfg.lam)
    if cfg.lambda_mode == "loss_weight":
        return 0.5 if cfg.lam > 0 else 0.0
    raise UsageError(f"unknown lambda_mode {cfg.lambda_mode!r}; use 'sampling' or 'loss_weight'")


def assign_tasks(num_prompts: int, cfg: TaskConfig, rng: random.Random) -> list[Task]:
    """Tasks for `num_prompts` prompts (one per GRPO group).

    The MSR count is num_prompts·p rounded up or down at random (so its expectation is exact and
    its spread small), placed at random positions.
    """
    p = msr_probability(cfg)
    expected = num_prompts * p
    num_msr = int(expected) + (rng.random() < expected - int(expected))
    tasks = [Task.MSR] * num_msr + [Task.ASR] * (num_prompts - num_msr)
    rng.shuffle(tasks)
    return tasks


def task_loss_weight(task: Task, cfg: TaskConfig) -> float:
    """The loss weight of a sample of `task`: λ for MSR under `loss_weight` mode, else 1."""
    if cfg.lambda_mode == "loss_weight" and task is Task.MSR:
        return float(cfg.lam)
    return 1.0


def build_reference(
    task: Task,
    target: str,
    following: Sequence[str],
    cfg: TaskConfig,
    strict: bool = False,
) -> str:
    """The text the judge compares a prediction against.

    `target` is s_i and `following` the segments after it (s_i+1, s_i+2, ...). ASR appends the
    first `asr_reference_segments` of them, MSR the first `msr_reference_segments`; the strict
    reward (`strict=True`, the paper's ablation) always uses s_i alone.
    """
    extra = 0 if strict else (
        cfg.asr_reference_segments if task is Task.ASR else cfg.msr_reference_segments
    )
    if extra < 0:
        raise UsageError("reference segment counts must be >= 0")
    return cfg.segment_separator.join([target, *following[:extra]])
