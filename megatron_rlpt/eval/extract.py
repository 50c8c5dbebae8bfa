"""Pull the final answer out of a model's completion: option letters, `\\boxed{}`, `[[...]]`."""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJKLMNOP"

# "The answer is (C)", "answer: **C**", "Answer: $\boxed{C}$", "the correct answer is option C".
_ANSWER_IS = re.compile(
    r"answer\s*(?:is|:)?\s*:?\s*(?:\*\*|__)?\s*(?:the\s+)?(?:option|choice)?\s*"
    r"[\(\[]?\s*\$?\s*(?:\\(?:boxed|text|textbf|mathrm|mathbf)\s*\{\s*)*[\(\[]?([A-P])\b",
    re.IGNORECASE,
)
# A bare letter as the whole reply, or at its start followed by ")", "." or ":" ("B) ...").
_LEADING = re.compile(r"^\s*(?:\*\*)?[\(\[]?([A-P])\s*(?:[\)\]\.:]|\*\*|$)")


def _letter_ok(letter: str, num_choices: int) -> bool:
    return len(letter) == 1 and letter in LETTERS[:num_choices]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or None."""
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    best = text[start:i]
                    break
    return best.strip() if best is not None else None


def last_double_bracket(text: str) -> str | None:
    """Content of the last `[[...]]` (KOR-Bench's answer wrapper), or None.

    Inner single brackets survive: `[[p1&p2];[p3]]` gives `p1&p2];[p3`, as KOR-Bench's own
    answers are written. The last occurrence wins, so a restated format example earlier in the
    reasoning does not count as the answer.
    """
    matches = re.findall(r"\[\[\s*(.*?)\s*\]\](?!\])", text, re.DOTALL)
    return matches[-1] if matches else None


def extract_choice(text: str, num_choices: int) -> str | None:
    """The option letter a completion commits to, or None.

    In order of trust: the last "answer is X" / "Answer: X" phrase; the last `\\boxed{X}` or
    `[[X]]`; a reply that is (or starts with) a bare letter such as "B" or "(B)". Letters beyond
    the question's options are ignored.
    """
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        letter = match.group(1).upper()
        # "answer is a ..." is prose, not option A: a lower-case letter counts only when wrapped.
        wrapped = re.search(r"[\(\[{]\s*$", text[: match.start(1)]) is not None
        if match.group(1).islower() and not wrapped:
            continue
        # "Answer: I think ..." is the pronoun, not option I.
        if letter == "I" and not wrapped and re.match(r"\s+[a-z]", text[match.end(1) :]):
            continue
        if _letter_ok(letter, num_choices):
            return letter
    for box in (last_boxed(text), last_double_bracket(text)):
        if box is not None:
            inner = re.sub(r"\\text\s*\{([^}]*)\}", r"\1", box).strip(" ()[]{}.*$")
            if _letter_ok(inner, num_choices):
                return inner
    match = _LEADING.match(text)
    if match and _letter_ok(match.group(1), num_choices):
        return match.group(1)
    return None
