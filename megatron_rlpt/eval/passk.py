"""The unbiased pass@k estimator (Chen et al., 2021).

With `n` samples of which `c` are correct, pass@k = 1 - C(n-c, k) / C(n, k): the chance that at
least one of `k` samples drawn without replacement from the `n` is correct. The ratio of binomials
is computed as a running product, which neither overflows nor loses precision for n in the
thousands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with `c` correct out of `n` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as `(n, c)` pairs."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems to average")
    return sum(values) / len(values)


def valid_ks(ks: Sequence[int], n: int) -> list[int]:
    """The requested k that can be estimated from `n` samples (k <= n), sorted, with 1 always in."""
    return sorted({1, *(k for k in ks if 1 <= k <= n)})
