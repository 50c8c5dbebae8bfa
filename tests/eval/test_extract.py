"""Final-answer extraction from completions."""

from __future__ import annotations

import pytest

from megatron_rlpt.eval.extract import extract_choice, last_boxed, last_double_bracket


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Let's see... The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("answer: **B**", "B"),
        ("So the answer is $\\boxed{\\text{E}}$.", "E"),
        ("The correct answer is option G.", "G"),
        ("First I thought the answer is (A). On reflection the answer is (B).", "B"),
        ("B", "B"),
        ("(C) because of symmetry", "C"),
        ("D. Paris", "D"),
        ("Therefore \\boxed{F}", "F"),
        ("[[H]]", "H"),
        ("the answer is a matter of taste", None),
        ("Answer: I think it is unclear", None),
        ("A good question with no answer", None),
        ("nothing to see", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, 10) == expected


def test_letters_beyond_the_options_are_ignored() -> None:
    assert extract_choice("The answer is (E).", 4) is None
    assert extract_choice("The answer is (B). Not (E).", 4) == "B"
    assert extract_choice("The answer is (J).", 10) == "J"


def test_boxed_and_brackets() -> None:
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{ \{1,2\} }") == r"\{1,2\}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None
    text = "format: [[your answer]] ... so [[p1&p2];[p3||p4]]"
    assert last_double_bracket(text) == "p1&p2];[p3||p4"
    assert last_double_bracket("[[N]]") == "N"
    assert last_double_bracket("[N]") is None
