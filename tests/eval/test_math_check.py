"""Math answers: equivalent forms are correct, different values are not, on any thread."""

from __future__ import annotations

import threading

import pytest

from megatron_rlpt.eval.math_check import MathChecker, check_math, gold_text


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("\\frac{1}{2}", "so x = \\boxed{1/2}"),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("0.5", "\\boxed{\\dfrac{1}{2}}"),
        ("\\frac12", "\\boxed{\\tfrac{1}{2}}"),
        ("5", "The length is \\boxed{5 \\text{ cm}}."),
        ("5\\text{ cm}", "\\boxed{5}"),
        ("5", "\\boxed{5\\,\\mathrm{cm}}"),
        ("10\\%", "\\boxed{10}"),
        ("\\$18.90", "\\boxed{18.90}"),
        ("1,000", "\\boxed{1000}"),
        ("27.0", "\\boxed{27}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}"),
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
        ("2x+\\cos(x)", "\\boxed{\\cos x + 2x}"),
        ("\\text{(C)}", "\\boxed{\\text{(C)}}"),
        ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
        ("90^\\circ", "\\boxed{90}"),
        ("x=5", "\\boxed{5}"),
    ],
)
def test_equivalent_forms_are_correct(gold: str, completion: str) -> None:
    assert check_math(completion, gold).correct


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("\\frac{1}{3}", "\\boxed{0.33}"),
        ("5", "\\boxed{6 \\text{ cm}}"),
        ("27", "\\boxed{27.5}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi)}"),
        ("2x+\\cos(x)", "\\boxed{2x - \\cos(x)}"),
        ("\\{1,2\\}", "\\boxed{\\{1,3\\}}"),
        ("204", "I could not solve it."),
        ("204", ""),
    ],
)
def test_wrong_answers_are_not(gold: str, completion: str) -> None:
    assert not check_math(completion, gold).correct


def test_last_box_counts_and_is_reported() -> None:
    result = check_math("first \\boxed{3}, corrected: \\boxed{4}", "4")
    assert result.correct and result.extracted == "4"
    assert not check_math("first \\boxed{4}, corrected: \\boxed{3}", "4").correct


def test_without_box_math_verify_extraction_is_used() -> None:
    result = check_math("Therefore, the final answer is $\\frac{3}{4}$.", "0.75")
    assert result.correct and result.extracted


def test_gold_text_drops_integral_float_suffix() -> None:
    assert gold_text(27.0) == "27"
    assert gold_text(2.5) == "2.5"
    assert gold_text(" 70 ") == "70"


def test_checker_caches_by_answer() -> None:
    checker = MathChecker()
    assert checker("a \\boxed{1/2}", "0.5").correct
    assert checker("b \\boxed{1/2}", "0.5").correct
    assert len(checker._cache) == 1


def test_off_main_thread() -> None:
    # Math-Verify's signal-based timeout fails on other threads; the checker must still work.
    results: list = []

    def work() -> None:
        results.append(check_math("\\boxed{\\frac{2}{4}}", "0.5"))
        results.append(check_math("\\boxed{3}", "0.5"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert [r.correct for r in results] == [True, False]
