"""The unbiased pass@k estimator against exhaustive enumeration and the closed form."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from megatron_rlpt.eval.passk import mean_pass_at_k, pass_at_k, valid_ks


def _enumerated(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (c of them correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_enumerated(n, c, k)), abs=1e-12)


def test_closed_form_large_n() -> None:
    # n = 1000 overflows float binomials; the product form stays exact to ~1e-12.
    for c, k in [(0, 8), (1, 1), (3, 8), (500, 64), (990, 8), (999, 1000)]:
        exact = 1 - Fraction(math.comb(1000 - c, k), math.comb(1000, k))
        assert pass_at_k(1000, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_1_is_mean_accuracy() -> None:
    counts = [(64, 0), (64, 16), (64, 64), (64, 5)]
    assert mean_pass_at_k(counts, 1) == pytest.approx(sum(c / 64 for _, c in counts) / 4)


def test_edges_and_errors() -> None:
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 8, 1) == 1.0
    for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
    assert valid_ks([8, 1, 64, 16], n=16) == [1, 8, 16]
    assert valid_ks([8], n=4) == [1]
