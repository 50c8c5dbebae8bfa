"""Math answer checking with Math-Verify, safe off the main thread.

Math-Verify bounds its sympy work with `signal.alarm`, which only works on the main thread of a
process. On the main thread we call it directly; from any other thread (an evaluation run inside
a trainer's background thread, say) each check is sent to a one-process worker pool, whose worker
runs it on its own main thread with the same timeouts. A parse or verify that times out counts as
not correct.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import multiprocessing
import re
import threading
from dataclasses import dataclass

from megatron_rlpt.eval.extract import last_boxed

logger = logging.getLogger(__name__)

TIMEOUT_S = 5
"""Math-Verify's own limit, per parse and per verify call."""


@dataclass(frozen=True)
class MathResult:
    correct: bool
    """Whether the completion's final answer equals the gold answer."""
    extracted: str | None
    """The answer as found in the completion (boxed content, or Math-Verify's pick), or None."""


def gold_text(answer: object) -> str:
    """A gold answer as text; integral floats (AMC23 stores 27.0) lose their `.0`."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


def _normalize(text: str) -> str:
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right|,|;|!|\s)", "", text)
    return re.sub(r"\s+", "", text).strip("$.")


def _check_here(completion: str, gold: str) -> MathResult:
    from math_verify import parse, verify

    boxed = last_boxed(completion)
    source = f"\\boxed{{{boxed}}}" if boxed is not None else completion
    pred = parse(source, parsing_timeout=TIMEOUT_S)
    extracted = boxed if boxed is not None else (pred[1] if len(pred) > 1 else None)
    if extracted is None:
        return MathResult(False, None)
    # The same text as the gold is right whatever the verifier makes of it.
    if _normalize(extracted) == _normalize(gold):
        return MathResult(True, extracted)
    target = parse(f"${gold}$", parsing_timeout=TIMEOUT_S)
    if not target or not pred:
        return MathResult(False, extracted)
    return MathResult(bool(verify(target, pred, timeout_seconds=TIMEOUT_S)), extracted)


_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shutdown_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def _worker_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: forking a process that holds torch threads is not safe.
            _pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_shutdown_pool)
        return _pool


def check_math(completion: str, gold: object) -> MathResult:
    """Whether `completion`'s final answer (last `\\boxed{}`, else Math-Verify's own extraction)
    is mathematically equal to `gold`: 1/2, \\frac{1}{2}, 0.5 and "5 cm" vs 5 all match."""
    gold = gold_text(gold)
    if threading.current_thread() is threading.main_thread():
        return _check_here(completion, gold)
    future = _worker_pool().submit(_check_here, completion, gold)
    try:
        # Startup of the worker (imports) plus two parses and a verify.
        return future.result(timeout=60 + 3 * TIMEOUT_S)
    except cf.TimeoutError:
        logger.warning("math check did not finish; counted as wrong")
        future.cancel()
        return MathResult(False, last_boxed(completion))


class MathChecker:
    """`check_math` with a per-gold cache: repeated samples often give the same answer."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], MathResult] = {}

    def __call__(self, completion: str, gold: object) -> MathResult:
        gold = gold_text(gold)
        boxed = last_boxed(completion)
        if boxed is None:  # Math-Verify searches the whole text; no cheap key.
            return check_math(completion, gold)
        key = (boxed, gold)
        if key not in self._cache:
            self._cache[key] = check_math(completion, gold)
        return self._cache[key]
