"""KOR-Bench answer checking per category and rule."""

from __future__ import annotations

import pytest

from megatron_rlpt.eval.kor import check_kor, extract_kor_answer


def ok(text: str, gold: str, category: str, rule_id: str = "1") -> bool:
    return check_kor(text, gold, category, rule_id)[0]


def test_extraction_takes_the_last_double_bracket() -> None:
    assert extract_kor_answer("format [[your answer]]; so [[B*I*V]]") == "B*I*V"
    assert extract_kor_answer("\\boxed{42}") == "42"
    assert extract_kor_answer("no answer") is None
    assert check_kor("no answer", "[[N]]", "cipher", "1") == (False, None)


def test_cipher_and_counterfactual_exact_after_spacing() -> None:
    assert ok("The ciphertext is [[ B*I*V*K*C* ]]", "[[B*I*V*K*C*]]", "cipher")
    assert ok('[["PF"]]', "[[PF]]", "cipher")
    assert not ok("[[PG]]", "[[PF]]", "cipher")
    assert ok("In that world: [[C]]", "[[C]]", "counterfactual")
    assert not ok("[[A]]", "[[C]]", "counterfactual")


def test_logic() -> None:
    gold = "[[p1&p2];[p3||p4];[(p3&~p4)||(~p3&p4)]]"
    assert ok("[[p1 & p2];[p3||p4];[(p3&~p4)||(~p3&p4)]]", gold, "logic")
    assert not ok("[[p3||p4];[p1&p2];[(p3&~p4)||(~p3&p4)]]", gold, "logic")
    # Rule 5 answers are sets of statements: any order.
    assert ok("[[b;a;c]]", "[[a;b;c]]", "logic", "5")
    assert not ok("[[a;b]]", "[[a;b;c]]", "logic", "5")


def test_operation() -> None:
    assert ok("[[24]]", "[[24]]", "operation")
    assert ok("[[24.0]]", "[[24]]", "operation")
    assert not ok("[[25]]", "[[24]]", "operation")
    assert ok("[[-12 or 4]]", "[[4or-12]]", "operation", "2")
    assert not ok("[[4]]", "[[4or-12]]", "operation", "2")
    assert ok(
        "[[-6-\\sqrt{22} or -6+\\sqrt{22}]]", "[[-6+\\sqrt{22}or-6-\\sqrt{22}]]", "operation", "2"
    )
    assert ok("[[\\cos(x)+2x]]", "[[2x+\\cos(x)]]", "operation", "16")
    assert not ok("[[2x-\\cos(x)]]", "[[2x+\\cos(x)]]", "operation", "16")
    assert ok("[[{x∣x≥1 or x≤0}]]", "[[{x∣x≤0 or x≥1}]]", "operation", "18")
    assert ok("[[{5,4,2,1}]]", "[[{1,2,4,5}]]", "operation", "18")
    assert not ok("[[{1,2,4}]]", "[[{1,2,4,5}]]", "operation", "18")
    assert ok("[[((1, 2), (9, 64))]]", "[[((1,2),(9,64))]]", "operation", "23")
    assert not ok("[[((2,1),(9,64))]]", "[[((1,2),(9,64))]]", "operation", "23")


@pytest.mark.parametrize(
    "rule, pred, gold, expected",
    [
        ("1", "[[Nine Ten nine eight ten]]", "[[nine ten nine eight ten]]", True),
        ("1", "[[nine ten]]", "[[nine ten nine eight ten]]", False),
        ("2", "[[tal]]", "[[t,tal]]", True),
        ("2", "[[ta]]", "[[t,tal]]", False),
        ("3", "[[ape, pea]]", "[[pea ape]]", True),
        ("4", "[[peal]]", "[[ pale peal palp pape plap pela plea]]", True),
        ("4", "[[pal]]", "[[ pale peal palp pape plap pela plea]]", False),
        ("5", "[[O=1, T=2, G=8, U=0]]", "[[O=1,T=2,G=8,U=0]]", True),
        ("5", "[[T=2,O=1,U=0,G=8]]", "[[O=1,T=2,G=8,U=0]]", True),
        ("5", "[[O=1,T=2,G=9,U=0]]", "[[O=1,T=2,G=8,U=0]]", False),
        # Equations: any filling with the same operators that evaluates right.
        ("9", "[[2+4*2-0=10]]", "[[6+2*3-2=10]]", True),
        ("9", "[[6+2*3-1=10]]", "[[6+2*3-2=10]]", False),
        ("9", "[[6-2*3+10=10]]", "[[6+2*3-2=10]]", False),
        # 24 game: another valid expression over the same numbers counts.
        ("10", "[[2×(9+5-2)]]", "[[(9+5-2)×2]]", True),
        ("10", "[[8/(3-8/3)]]", "[[8/(3-8/3)]]", True),
        ("10", "[[(9+5+2)×2]]", "[[(9+5-2)×2]]", False),
        ("10", "[[4×6]]", "[[(9+5-2)×2]]", False),
        ("18", "[[5 ↑ → ←, ↓ ↑ 6 ←]]", "[[5 ↑ → ←,↓ ↑ 6 ←]]", True),
        ("18", "[[5 ↑ ← →,↓ ↑ 6 ←]]", "[[5 ↑ → ←,↓ ↑ 6 ←]]", False),
        ("6", "[[4]]", "[[4]]", True),
        ("7", "[[1683 Vlietmolen, Van Dijk]]", "[[1683 Vlietmolen Van Dijk]]", True),
    ],
)
def test_puzzle_rules(rule: str, pred: str, gold: str, expected: bool) -> None:
    assert ok(f"Reasoning... {pred}", gold, "puzzle", rule) is expected


def test_every_shared_gold_scores_as_correct(shared_data) -> None:
    """Each gold answer, given back as the reply, passes; a wrong reply fails."""
    from megatron_rlpt.eval.loaders import load_benchmark

    items = load_benchmark("kor_bench", shared_data / "benchmarks")
    assert len(items) == 1250
    failed = []
    for item in items:
        rule = item.extra["rule_id"]
        inner = item.answer[2:-2]
        reply = inner
        if item.category == "puzzle" and rule in ("2", "4"):  # golds list every accepted answer
            reply = [a for a in inner.replace(",", " ").split() if a][0]
        elif item.category == "puzzle" and rule == "10":  # one expression per line
            reply = inner.split("\n")[0]
        if not check_kor(f"So: [[{reply}]]", item.answer, item.category, rule)[0]:
            failed.append(item.id)
        if item.category != "operation":  # math-verify on 250 wrong replies is slow
            assert not check_kor("[[987654321]]", item.answer, item.category, rule)[0], item.id
    # puzzle/84's gold "2+2+3*4=28" is arithmetically false (the left side is 16).
    assert failed == ["puzzle/84"]
