"""Normalisation and rule-based quality filters (stage 2), plus the model-based filter hook."""

from __future__ import annotations

import importlib
import re
import unicodedata
from collections.abc import Callable

from megatron_rlpt.data.config import FilterConfig
from megatron_rlpt.errors import UsageError

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_TRAILING = re.compile(r" +\n")
_BLANKS = re.compile(r"\n{3,}")
# Characters that are neither letters nor digits but are ordinary in prose and math.
_COMMON_PUNCT = set(".,;:!?'\"()[]{}-–—/%&+=<>*^_$#@`~|\\’‘“”…°×·±÷≤≥≠≈∞√∑∫πθλμσΔΩαβγδε")


def normalize(text: str, cfg: FilterConfig) -> str:
    """Unicode normalisation and whitespace clean-up (idempotent)."""
    if cfg.unicode_form != "none":
        text = unicodedata.normalize(cfg.unicode_form, text)
    if cfg.normalize_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _SPACES.sub(" ", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANKS.sub("\n\n", text)
        text = "\n".join(line.strip() for line in text.split("\n"))
        text = _BLANKS.sub("\n\n", text).strip()
    return text


_NONSPACE_RUN = re.compile(r"\S+")
_NON_ALNUM = re.compile(r"[^\w\s]|_")


def text_stats(text: str) -> dict[str, float]:
    """The quantities the rules look at."""
    nonspace = "".join(_NONSPACE_RUN.findall(text))
    n = len(nonspace) or 1
    alpha = sum(map(str.isalpha, nonspace))
    digits = sum(map(str.isdigit, nonspace))
    others = _NON_ALNUM.findall(nonspace)
    symbols = len(others) - sum(map(_COMMON_PUNCT.__contains__, others))
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    repeated = len(lines) - len(set(lines))
    return {
        "chars": len(text),
        "words": len(text.split()),
        "alpha_ratio": alpha / n,
        "digit_ratio": digits / n,
        "symbol_ratio": symbols / n,
        "repeated_line_ratio": repeated / (len(lines) or 1),
    }


def rule_filter(text: str, cfg: FilterConfig) -> tuple[str | None, str | None]:
    """(reason, detail) if the document fails a rule, else (None, None)."""
    if len(text) < cfg.min_chars:
        return "too_short", f"{len(text)} chars < {cfg.min_chars}"
    if len(text) > cfg.max_chars:
        return "too_long", f"{len(text)} chars > {cfg.max_chars}"
    s = text_stats(text)
    if s["words"] < cfg.min_words:
        return "too_short", f"{s['words']} words < {cfg.min_words}"
    if s["symbol_ratio"] > cfg.max_symbol_ratio:
        return "symbol_ratio", f"{s['symbol_ratio']:.3f} > {cfg.max_symbol_ratio}"
    if s["alpha_ratio"] < cfg.min_alpha_ratio:
        return "alpha_ratio", f"{s['alpha_ratio']:.3f} < {cfg.min_alpha_ratio}"
    if s["repeated_line_ratio"] > cfg.max_repeated_line_ratio:
        return "repeated_lines", f"{s['repeated_line_ratio']:.3f} > {cfg.max_repeated_line_ratio}"
    return None, None


def load_quality_hook(spec: str | None) -> Callable[[str], float] | None:
    """`module:function` to the function; a bad spec is a UsageError."""
    if not spec:
        return None
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name:
        raise UsageError(f"filter.quality_hook {spec!r} is not of the form module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"filter.quality_hook: cannot import {module_name}: {err}") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(f"filter.quality_hook: {module_name} has no function {func_name}")
    return func
