"""One benchmark question, in the shape every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHOICE = "choice"
"""Multiple choice: the gold is an option letter."""
MATH = "math"
"""A math problem: the gold is an expression checked with Math-Verify."""
KOR = "kor"
"""A KOR-Bench question: a rule, a question and a `[[...]]` answer checked per category."""


@dataclass
class Item:
    """One question of one benchmark."""

    benchmark: str
    """Benchmark name (`mmlu`, `math500`, ...)."""
    id: str
    """Identifier unique within the benchmark."""
    kind: str
    """`choice`, `math` or `kor`: how prompts are built and answers checked."""
    question: str
    """The question or problem text."""
    answer: str
    """The gold answer: an option letter, a math expression, or KOR-Bench's `[[...]]` text."""
    choices: list[str] = field(default_factory=list)
    """Option texts of a multiple-choice question, in the order lettered A, B, C, ..."""
    category: str = ""
    """Subject (MMLU), category (MMLU-Pro, KOR-Bench) or subject area (MATH); may be empty."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific fields: KOR-Bench's `rule` text and `rule_id`, GPQA's record id."""
