"""KOR-Bench answer checking, by category and rule, following the benchmark's own conventions.

Answers are wrapped in `[[...]]`. Cipher and counterfactual answers must match after dropping
quotes, spaces and brackets. Logic answers keep their brackets (they separate sub-answers); rule 5
takes its `;`-separated parts in any order. Operation answers are compared as numbers or formulas
(Math-Verify), as order-free sets for "x or y" answers, by their inequalities for set-builder
answers, as character sets for rule 18 and as integer sequences for rules 23-25. Puzzles have a
check per rule: spelled-out words (1), one of several accepted answers (2, 4), word lists in any
order (3), letter=digit assignments in any order (5), equations that must evaluate correctly (9,
10), grids (18), and letters and digits only for the rest.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from fractions import Fraction

from megatron_rlpt.eval.extract import last_boxed, last_double_bracket
from megatron_rlpt.eval.math_check import check_math

CATEGORIES = ("cipher", "counterfactual", "logic", "operation", "puzzle")


def extract_kor_answer(text: str) -> str | None:
    """The last `[[...]]` in a completion, else the last `\\boxed{}`; None if neither."""
    found = last_double_bracket(text)
    return found if found is not None else last_boxed(text)


def _inner(gold: str) -> str:
    found = last_double_bracket(gold)
    return found if found is not None else gold.strip()


def _plain(text: str) -> str:
    return re.sub(r"[\"\s\[\]]", "", text)


def _letters(text: str) -> str:
    return re.sub(r"[^A-Za-z]", "", text).lower()


def _alnum(text: str) -> str:
    return re.sub(r"\W+", "", text)


# -- safe arithmetic for the equation puzzles -------------------------------------------------

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _arith(text: str) -> Fraction | None:
    """Exact value of + - * / ( ) arithmetic on integers, or None if it is anything else."""
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").replace("x", "*")

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("not arithmetic")

    try:
        return walk(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _operators(text: str) -> list[str]:
    return re.findall(r"[+\-*/]", text.replace("×", "*").replace("÷", "/").replace("−", "-"))


# -- puzzle rules ----------------------------------------------------------------------------


def _puzzle(rule_id: str, pred: str, gold: str) -> bool:
    if rule_id == "1":
        return _letters(pred) == _letters(gold)
    if rule_id == "2":  # one common affix; the gold lists the accepted ones
        return _letters(pred) in {_letters(g) for g in gold.split(",") if _letters(g)}
    if rule_id == "3":
        return sorted(w for w in re.split(r"\W+", pred.lower()) if w) == sorted(
            w for w in re.split(r"\W+", gold.lower()) if w
        )
    if rule_id == "4":  # one word; the gold lists every accepted word
        return _letters(pred) in {_letters(g) for g in re.split(r"[\s,]+", gold) if _letters(g)}
    if rule_id == "5":
        return sorted(re.sub(r"\s+", "", pred).split(",")) == sorted(
            re.sub(r"\s+", "", gold).split(",")
        )
    if rule_id == "9":  # fill the blanks of "a+b*c-d=10": same operators, correct value
        target = re.search(r"=\s*(-?\d+)", gold)
        left = pred.split("=")[0]
        value = _arith(left)
        return (
            target is not None
            and value is not None
            and _operators(left) == _operators(gold.split("=")[0])
            and value == int(target.group(1))
        )
    if rule_id == "10":  # 24 game: the given numbers, each once, making 24
        left = pred.strip().split("\n")[0].split("=")[0]
        gold_left = gold.strip().split("\n")[0].split("=")[0]  # the gold lists several
        same_numbers = sorted(re.findall(r"\d+", left)) == sorted(re.findall(r"\d+", gold_left))
        return same_numbers and _arith(left) == 24
    if rule_id == "18":
        return re.sub(r"[,\s\[\]]+", "", pred) == re.sub(r"[,\s\[\]]+", "", gold)
    return _alnum(pred) == _alnum(gold)


# -- operation rules -------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)  # samples repeat answers; Math-Verify can take seconds
def _same_value(pred: str, gold: str) -> bool:
    if _plain(pred) == _plain(gold):
        return True
    return check_math(f"\\boxed{{{pred}}}", gold).correct


def _or_parts(text: str) -> list[str]:
    text = re.sub(r"\\text\s*\{\s*or\s*\}", "or", text)
    return [part.strip() for part in text.split("or")]


def _operation(rule_id: str, pred: str, gold: str) -> bool:
    if "≤" in gold or "≥" in gold:  # set-builder answers: compare their bounds
        bounds = re.compile(r"(≥|≤)\s*(-?\d+\.?\d*)")
        return sorted(bounds.findall(pred)) == sorted(bounds.findall(gold))
    if rule_id == "18":  # set results: the elements in any order
        return sorted(_alnum(pred)) == sorted(_alnum(gold))
    if rule_id in {"23", "24", "25"}:  # matrices and pairs: the numbers in order
        return re.findall(r"\d+", pred) == re.findall(r"\d+", gold)
    if "or" in gold:
        pred_parts, gold_parts = _or_parts(pred), _or_parts(gold)
        if len(pred_parts) != len(gold_parts):
            return False
        unmatched = list(gold_parts)
        for part in pred_parts:
            hit = next((g for g in unmatched if _same_value(part, g)), None)
            if hit is None:
                return False
            unmatched.remove(hit)
        return True
    return _same_value(pred, gold)


def check_kor(completion: str, gold: str, category: str, rule_id: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) for one KOR-Bench completion."""
    pred = extract_kor_answer(completion)
    if pred is None:
        return False, None
    gold_inner = _inner(gold)
    if category == "logic":
        clean = re.compile(r"[\"\s.]")
        if rule_id == "5":
            return sorted(clean.sub("", pred).split(";")) == sorted(
                clean.sub("", gold_inner).split(";")
            ), pred
        return clean.sub("", pred) == clean.sub("", gold_inner), pred
    if category == "operation":
        return _operation(rule_id, pred, gold_inner), pred
    if category == "puzzle":
        return _puzzle(rule_id, pred, gold_inner), pred
    return _plain(pred) == _plain(gold_inner), pred
