"""The generative judge's prompt and the parsing of its `Score: 0|1` answer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from megatron_rlpt.tasks import fill_template, load_template

JUDGE_FIELDS = ("reference", "predicted")

PREFIX_JUDGE_TEMPLATE = (
    "## Task\n"
    "Given a Predicted sentence and a Reference paragraph, determine whether the Predicted text "
    "is a prefix (initial segment) of the Reference paragraph, and whether it expresses exactly "
    "the same semantic content as the corresponding prefix of the Reference. The Predicted text "
    "does not need to match the prefix of the Reference word-for-word, but it must convey the "
    "same meaning.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "## Scoring Rules\n"
    "- If the Predicted text semantically matches the prefix of the Reference, assign a score "
    "of 1.\n"
    "- If the Predicted text does not semantically match the prefix of the Reference, assign a "
    "score of 0.\n"
    "When making your judgment, focus primarily on semantic equivalence, not on exact wording.\n"
    "\n"
    "Only output the score on a single line; do not provide any explanatory text or additional "
    "content.\n"
    "Output format (choose one):\n"
    "- Score: 0\n"
    "or\n"
    "- Score: 1"
)
"""The paper's judge prompt for the prefix reward (RLPT_SPEC.md §3.3), byte for byte."""

STRICT_JUDGE_TEMPLATE = (
    "## Task\n"
    "Given a Predicted sentence and a Reference sentence, determine whether the Predicted text "
    "expresses exactly the same semantic content as the Reference sentence: nothing missing and "
    "nothing added. The Predicted text does not need to match the Reference word-for-word, but "
    "it must convey the same meaning.\n"
    "\n"
    "Reference: {reference}\n"
    "\n"
    "Predicted: {predicted}\n"
    "\n"
    "## Scoring Rules\n"
    "- If the Predicted text semantically matches the Reference, assign a score of 1.\n"
    "- If the Predicted text does not semantically match the Reference, assign a score of 0.\n"
    "When making your judgment, focus primarily on semantic equivalence, not on exact wording.\n"
    "\n"
    "Only output the score on a single line; do not provide any explanatory text or additional "
    "content.\n"
    "Output format (choose one):\n"
    "- Score: 0\n"
    "or\n"
    "- Score: 1"
)
"""The strict reward's prompt (the paper's ablation, §4.4). The paper does not print it: this is
the project's text, the prefix prompt with the prefix clause replaced by full equivalence."""


def judge_template(mode: Literal["prefix", "strict"] = "prefix", path: str | Path | None = None) -> str:
    """The judge template: from `path` if given (it must use `{reference}` and `{predicted}`),
    else the built-in one for the reward mode."""
    if path is not None:
        return load_template(path, JUDGE_FIELDS)
    if mode == "prefix":
        return PREFIX_JUDGE_TEMPLATE
    if mode == "strict":
        return STRICT_JUDGE_TEMPLATE
    raise ValueError(f"unknown reward mode {mode!r}; use 'prefix' or 'strict'")


def render_judge_prompt(template: str, predicted: str, reference: str) -> str:
    """The judge prompt for one item."""
    return fill_template(template, {"reference": reference, "predicted": predicted})


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
# "Score: 1", "- Score: 0", "**Score:** 1", "score=1", "Score: 1.0"; not "Score: 10" or "1.5".
_SCORE = re.compile(r"\bscore\b[\s*_:：=]*([01])(?:\.0+)?(?![\w.])", re.IGNORECASE)


def parse_score(text: str) -> int | None:
    """The judge's 0/1 verdict, or None when it cannot be read.

    Reasoning inside `<think>…</think>` is ignored, and an unfinished `<think>` block means no
    verdict. Every `Score: X` outside it must agree: a judge that writes both `Score: 0` and
    `Score: 1` (say, by echoing the output format) has given no verdict. A bare `0` or `1` as the
    whole answer also counts.
    """
    text = _THINK.sub(" ", text)
    if re.search(r"<think>", text, re.IGNORECASE):
        return None
    values = {m.group(1) for m in _SCORE.finditer(text)}
    if not values:
        bare = text.strip().strip("*").strip()
        return int(bare) if bare in ("0", "1") else None
    return int(values.pop()) if len(values) == 1 else None
