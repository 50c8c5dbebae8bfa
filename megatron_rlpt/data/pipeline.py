"""`rlpt prepare`: the whole pipeline, streaming, on any number of worker processes.

    read → normalise + rule filter (+ quality hook) → MinHash signature      [workers]
         → LSH near-dup, keep-first in input order                            [main process]
         → PII mask → decontaminate → segment → tokenize → triples            [workers]
         → write IndexedDataset + texts + manifest, in input order            [main process]

Documents travel in fixed-size chunks through an order-preserving, bounded queue: at most a few
chunks per worker are in flight, so memory does not grow with the corpus, and every result is
consumed in input order, so the output bytes do not depend on the number of workers. The output
is assembled in a temporary directory beside `--output` and renamed into place at the end: a
killed run leaves no partial dataset under the final name, and a rerun starts afresh.

Every record read is accounted for: `documents.in == documents.out + sum(dropped.values())`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megatron_rlpt.data import filters, pii
from megatron_rlpt.data.config import PrepareConfig, config_to_dict
from megatron_rlpt.data.readers import InputReader, Record, expand_inputs, input_format
from megatron_rlpt.errors import UsageError

FORMAT = "rlpt-triples"
FORMAT_VERSION = 1

# Which stage drops a document for each reason (for the per-stage counts).
STAGE_OF_REASON = {
    "malformed_json": "read", "invalid_utf8": "read", "missing_field": "read",
    "not_text": "read", "empty": "read", "too_large": "read", "read_error": "read",
    "too_short": "filter", "too_long": "filter", "symbol_ratio": "filter",
    "alpha_ratio": "filter", "repeated_lines": "filter", "quality_model": "filter",
    "quality_failed": "filter",
    "near_duplicate": "dedup",
    "contaminated": "decontaminate",
    "too_few_segments": "segment",
    "no_triples": "triples",
    "processing_error": "error",
}
NO_DECONTAMINATION_WARNING = (
    "rlpt prepare: no benchmark files given (--decontaminate PATH or decontaminate.benchmarks): "
    "the data is NOT decontaminated against any evaluation set; manifest.json records "
    "\"decontamination\": \"none\"")

STAGES = ["read", "filter", "dedup", "pii", "decontaminate", "segment", "triples", "write"]


# --- per-document work (runs in workers) ------------------------------------------------------

@dataclass
class DocResult:
    source: int
    index: int
    doc_id: str | None
    nbytes: int
    reason: str | None = None
    detail: str | None = None
    text: str | None = None
    preview: str | None = None
    signature: np.ndarray | None = None
    quality_score: float | None = None
    # filled by stage B
    text_bytes: bytes | None = None
    seg_bytes: np.ndarray | None = None
    triples: list | None = None
    counts: dict[str, int] = field(default_factory=dict)


_STATE: dict[str, Any] = {}


def _init_state(cfg: PrepareConfig, tokenizer_path: str, contamination: Any,
                tokenizer: Any = None) -> None:
    """Per-process state: set in the parent before forking, or in each spawned worker."""
    from megatron_rlpt.data.segment import sentence_tokenizer
    from megatron_rlpt.data.tokenizer import load_tokenizer
    from megatron_rlpt.data.triples import TokenCodec

    _STATE["cfg"] = cfg
    _STATE["codec"] = TokenCodec(tokenizer if tokenizer is not None
                                 else load_tokenizer(tokenizer_path))
    _STATE["contamination"] = contamination
    _STATE["quality"] = filters.load_quality_hook(cfg.filter.quality_hook)
    _STATE["quality_filter"] = None
    if cfg.quality.model:
        from megatron_rlpt.data.quality import QualityFilter

        _STATE["quality_filter"] = QualityFilter(cfg.quality, cfg.quality.work_dir)
    sentence_tokenizer(cfg.segment.language)


def _preview(text: str | None, cfg: PrepareConfig) -> str | None:
    if text is None or cfg.write.quarantine_max_chars <= 0:
        return None
    return text[: cfg.write.quarantine_max_chars]


def _stage_a_one(rec: Record, cfg: PrepareConfig) -> DocResult:
    r = DocResult(rec.source, rec.index, rec.doc_id, rec.nbytes, rec.reason, rec.detail)
    if rec.reason is not None:
        return r
    text = filters.normalize(rec.text, cfg.filter)
    reason, detail = filters.rule_filter(text, cfg.filter)
    if reason is None and _STATE.get("quality") is not None:
        score = float(_STATE["quality"](text))
        if score < cfg.filter.quality_threshold:
            reason, detail = "quality_model", f"score {score:.4f} < {cfg.filter.quality_threshold}"
    if reason is not None:
        r.reason, r.detail, r.preview = reason, detail, _preview(text, cfg)
        return r
    r.text = text
    if cfg.dedup.enabled:
        from megatron_rlpt.data.dedup import signature

        r.signature = signature(text, cfg.dedup)
    return r


def stage_a(records: list[Record]) -> list[DocResult]:
    cfg: PrepareConfig = _STATE["cfg"]
    out = []
    for rec in records:
        try:
            out.append(_stage_a_one(rec, cfg))
        except Exception as err:  # noqa: BLE001 - one bad document never ends the run
            out.append(DocResult(rec.source, rec.index, rec.doc_id, rec.nbytes,
                                 "processing_error", f"{type(err).__name__}: {err}"[:300],
                                 preview=_preview(rec.text, cfg)))
    if _STATE.get("quality_filter") is not None:
        _quality_model(out, cfg)
    return out


def _quality_model(results: list[DocResult], cfg: PrepareConfig) -> None:
    """Score the chunk's surviving documents in one batch and drop those below the threshold
    (or whose scoring failed, with `quality.on_failure: drop`)."""
    q = cfg.quality
    alive = [r for r in results if r.reason is None and r.text is not None]
    for r, res in zip(alive, _STATE["quality_filter"].score([r.text for r in alive])):
        r.counts["quality.cached" if res.cached else "quality.scored"] = 1
        if res.score is None:
            r.counts["quality.failed"] = 1
            r.counts[f"quality.failed.{res.status}"] = 1
            if q.on_failure == "drop":
                r.reason, r.detail = "quality_failed", f"{res.status}: {res.raw[:200]}"
        else:
            r.quality_score = res.score
            r.counts[f"quality.score.{res.score:g}"] = 1
            if res.score < q.threshold:
                r.reason, r.detail = "quality_model", f"score {res.score:g} < {q.threshold:g}"
        if r.reason is not None:
            r.preview, r.text, r.signature = _preview(r.text, cfg), None, None


def _byte_offsets(text: str, offsets: list[int]) -> list[int]:
    """UTF-8 byte offsets of sorted character offsets."""
    out, pos, acc = [], 0, 0
    for c in offsets:
        acc += len(text[pos:c].encode("utf-8"))
        pos = c
        out.append(acc)
    return out


def _stage_b_one(r: DocResult, cfg: PrepareConfig) -> DocResult:
    from megatron_rlpt.data.decontam import cut_spans
    from megatron_rlpt.data.segment import segment
    from megatron_rlpt.data.triples import build_triples

    text = r.text
    r.text = None
    counts = r.counts
    if cfg.pii.enabled:
        text, spans = pii.mask(text, cfg.pii.kinds, cfg.pii.placeholder)
        if spans:
            counts["pii.documents_masked"] = 1
            for s in spans:
                counts[f"pii.{s.kind}"] = counts.get(f"pii.{s.kind}", 0) + 1
    index = _STATE.get("contamination")
    if index is not None and len(index):
        found = index.find(text)
        if found:
            if cfg.decontaminate.mode == "drop":
                r.reason = "contaminated"
                r.detail = "overlaps: " + " | ".join(text[a:b][:80] for a, b in found[:3])
                r.preview = _preview(text, cfg)
                return r
            text = cut_spans(text, found)
            counts["decontaminate.documents_cut"] = 1
            counts["decontaminate.spans_cut"] = len(found)
    spans, sstats = segment(text, cfg.segment)
    counts["segment.sentences"] = sstats.sentences
    counts["segment.short_merged"] = sstats.merged
    counts["segment.short_dropped"] = sstats.dropped
    if len(spans) < 3:
        r.reason, r.detail = "too_few_segments", f"{len(spans)} segments < 3"
        r.preview = _preview(text, cfg)
        return r
    counts["segment.segments"] = len(spans)
    triples, tstats = build_triples(text, spans, _STATE["codec"], cfg.triples,
                                    cfg.write.check_roundtrip)
    for name in ("segment_too_long", "context_truncated", "context_cut_in_segment",
                 "inexact_roundtrip", "subsampled_out"):
        counts[f"triples.{name}"] = getattr(tstats, name)
    if not triples:
        r.reason, r.detail = "no_triples", "every candidate triple was skipped"
        r.preview = _preview(text, cfg)
        return r
    # character offsets -> UTF-8 byte offsets, in one pass over the text
    points = sorted({p for s in spans for p in s} | {t.context_start for t in triples})
    byte_of = dict(zip(points, _byte_offsets(text, points)))
    r.text_bytes = text.encode("utf-8")
    r.seg_bytes = np.array([[byte_of[a], byte_of[b]] for a, b in spans], dtype=np.int64)
    for t in triples:
        t.context_start = byte_of[t.context_start]
    r.triples = triples
    return r


def stage_b(results: list[DocResult]) -> list[DocResult]:
    cfg: PrepareConfig = _STATE["cfg"]
    out = []
    for r in results:
        if r.reason is not None:
            out.append(r)
            continue
        try:
            out.append(_stage_b_one(r, cfg))
        except Exception as err:  # noqa: BLE001 - one bad document never ends the run
            r.reason, r.detail = "processing_error", f"{type(err).__name__}: {err}"[:300]
            r.text, r.triples, r.text_bytes = None, None, None
            out.append(r)
    return out


# --- ordering and parallelism -----------------------------------------------------------------

def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(pool, fn: Callable, items: Iterable, max_pending: int) -> Iterator:
    """`map(fn, items)` on `pool`, in order, with at most `max_pending` tasks in flight."""
    if pool is None:
        for item in items:
            yield fn(item)
        return
    pending: collections.deque = collections.deque()
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_pending:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            pending.append(pool.apply_async(fn, (item,)))
        if not pending:
            return
        yield pending.popleft().get()


# --- the run ----------------------------------------------------------------------------------

@dataclass
class PrepareResult:
    output: Path
    manifest: dict
    seconds: float


def _check_output(output: Path) -> None:
    if output.exists():
        if not output.is_dir():
            raise UsageError(f"--output {output} exists and is not a directory")
        if any(output.iterdir()) and not (output / "manifest.json").is_file():
            raise UsageError(f"--output {output} is a non-empty directory that is not an rlpt "
                             "prepare output; refusing to replace it")
    parent = output.parent if str(output.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--output {output}: cannot write to {parent}")


def _clean_stale_temps(output: Path) -> None:
    """Remove temporary directories of earlier runs on this host that were killed."""
    import shutil

    host = socket.gethostname()
    for tmp in output.parent.glob(f".{output.name}.*.tmp"):
        owner = tmp / ".owner"
        try:
            who = json.loads(owner.read_text())
        except (OSError, ValueError):
            continue
        if who.get("host") != host:
            continue
        try:
            os.kill(int(who["pid"]), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except (PermissionError, KeyError, ValueError):
            alive = True
        if not alive:
            shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    def __init__(self, enabled: bool, total_bytes: int) -> None:
        self.bar = None
        self.bytes = 0
        self.start = time.monotonic()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True,
                            unit_divisor=1024, desc="prepare", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1)
        self.docs = 0
        self.triples = 0

    def update(self, nbytes: int, triples: int) -> None:
        self.docs += 1
        self.triples += triples
        self.bytes += nbytes
        if self.bar is not None:
            self.bar.update(nbytes)
            if self.docs % 64 == 0:
                dt = max(time.monotonic() - self.start, 1e-9)
                self.bar.set_postfix_str(f"{self.docs / dt:.0f} docs/s, "
                                         f"{self.bytes / dt / 1e6:.2f} MB/s, "
                                         f"{self.triples} triples", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare(inputs: list[str], output: str | Path, tokenizer: str | Path | None = None,
            cfg: PrepareConfig | None = None, workers: int = 1, progress: bool | None = None,
            log: Callable[[str], None] | None = None) -> PrepareResult:
    """Run the pipeline; returns the manifest. Bad arguments raise UsageError before any work."""
    from megatron_rlpt.data.config import validate
    from megatron_rlpt.data.decontam import ContaminationIndex, describe
    from megatron_rlpt.data.tokenizer import (
        default_tokenizer_path,
        load_tokenizer,
        tokenizer_identity,
    )
    from megatron_rlpt.utils.io import atomic_directory

    t_start = time.monotonic()
    cfg = cfg or PrepareConfig()
    validate(cfg)
    if workers < 1:
        raise UsageError("--workers must be >= 1")
    if not inputs:
        raise UsageError("no --input given")
    output = Path(output)
    paths = expand_inputs(list(inputs))
    for p in paths:
        input_format(p)  # rejects unsupported combinations early
    _check_output(output)
    if cfg.quality.model and not cfg.quality.work_dir:
        # Outside the output (replaced whole at the end), so scores survive a killed run.
        cfg = dataclasses.replace(cfg, quality=dataclasses.replace(
            cfg.quality, work_dir=str(output) + ".work"))
    tokenizer_path = Path(tokenizer) if tokenizer else default_tokenizer_path()
    tok = load_tokenizer(tokenizer_path)
    contamination = None
    if cfg.decontaminate.benchmarks:
        contamination = ContaminationIndex.build(cfg.decontaminate.benchmarks, cfg.decontaminate)
    if progress is None:
        progress = sys.stderr.isatty()
    if contamination is None:
        # Off silently, benchmark text in the corpus would inflate every evaluation after it.
        if log is not None:
            log(f"warning: {NO_DECONTAMINATION_WARNING}")
        else:
            warnings.warn(NO_DECONTAMINATION_WARNING, stacklevel=2)
    log = log or (lambda msg: None)

    _init_state(cfg, str(tokenizer_path), contamination, tok)
    pool = None
    if workers > 1:
        # fork: workers inherit the tokenizer, Punkt model and benchmark index already built
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "fork":
            pool = ctx.Pool(workers)
        else:
            pool = ctx.Pool(workers, initializer=_init_state,
                            initargs=(cfg, str(tokenizer_path), contamination))

    from megatron_rlpt.data.dedup import NearDupIndex
    from megatron_rlpt.data.writer import PREFIX, TripleWriter

    reader = InputReader(paths, cfg.read.text_field, cfg.read.id_field, cfg.read.text_unit,
                         cfg.read.max_document_bytes, cfg.read.parquet_batch_rows)
    per_file = [{"records": 0, "bytes": 0} for _ in paths]
    dropped: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    docs_in = docs_out = 0
    dedup_index = NearDupIndex(cfg.dedup) if cfg.dedup.enabled else None
    doc_labels: dict[int, str] = {}
    # The bar's total is known only when every input is read as its own bytes.
    plain = all(fmt != "parquet" and comp is None for fmt, comp in reader.formats)
    total_bytes = sum(p.stat().st_size for p in paths) if plain else 0

    def label(r: DocResult) -> str:
        return f"{paths[r.source]}#{r.index}" + (f" ({r.doc_id})" if r.doc_id else "")

    seq = 0

    def dedup_stage(chunks: Iterator[list[DocResult]]) -> Iterator[list[DocResult]]:
        nonlocal seq
        for chunk in chunks:
            for r in chunk:
                seq += 1
                if r.reason is None and dedup_index is not None:
                    match = dedup_index.offer(seq, r.signature)
                    if match is not None:
                        r.reason = "near_duplicate"
                        r.detail = (f"of {doc_labels.get(match.key, match.key)}, "
                                    f"estimated Jaccard {match.similarity:.3f}")
                        r.preview = _preview(r.text, cfg)
                        r.text = None
                    else:
                        doc_labels[seq] = label(r)
                r.signature = None
            yield chunk

    max_pending = max(2, 4 * workers)
    bar = _Progress(progress, total_bytes)
    t_loop = time.monotonic()
    _clean_stale_temps(output)
    try:
        with atomic_directory(output) as tmp:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
            (tmp / ".owner").write_text(json.dumps({"host": socket.gethostname(),
                                                    "pid": os.getpid()}))
            writer = TripleWriter(tmp, len(tok))  # imports megatron.core: not timed
            t_loop = bar.start = time.monotonic()
            if bar.bar is not None:
                bar.bar.reset(total=bar.bar.total)
            quarantine = (open(tmp / "quarantine.jsonl", "w", encoding="utf-8")
                          if cfg.write.quarantine else None)
            try:
                chunks = _batched(reader, cfg.docs_per_task)
                a_results = ordered_map(pool, stage_a, chunks, max_pending)
                b_results = ordered_map(pool, stage_b, dedup_stage(a_results), max_pending)
                for chunk in b_results:
                    for r in chunk:
                        docs_in += 1
                        per_file[r.source]["records"] += 1
                        per_file[r.source]["bytes"] += r.nbytes
                        for k, v in r.counts.items():
                            counts[k] += v
                        if r.reason is not None:
                            dropped[r.reason] += 1
                            if quarantine is not None:
                                quarantine.write(json.dumps({
                                    "source": str(paths[r.source]), "record": r.index,
                                    "id": r.doc_id, "stage": STAGE_OF_REASON.get(r.reason, "?"),
                                    "reason": r.reason, "detail": r.detail, "text": r.preview,
                                }, ensure_ascii=False, sort_keys=True) + "\n")
                            bar.update(r.nbytes, 0)
                            continue
                        meta = {
                            "document": writer.documents, "source": str(paths[r.source]),
                            "record": r.index, "id": r.doc_id, "triples": len(r.triples),
                        }
                        if cfg.quality.model:
                            meta["quality_score"] = r.quality_score
                        writer.add_document(r.text_bytes, r.seg_bytes, r.triples, meta)
                        docs_out += 1
                        bar.update(r.nbytes, len(r.triples))
                writer.finalize()
                if quarantine is not None:
                    quarantine.close()
            except BaseException:
                writer.abort()
                if quarantine is not None:
                    quarantine.close()
                raise
            manifest = _manifest(cfg, paths, reader, per_file, tokenizer_path, tok,
                                 contamination, docs_in, docs_out, dropped, counts, writer,
                                 dedup_index, tmp, PREFIX, tokenizer_identity, describe)
            # the directory itself is renamed into place atomically
            (tmp / "manifest.json").write_text(
                json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            # Last, so that a run killed while hashing its outputs is still recognised as dead.
            (tmp / ".owner").unlink()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.monotonic() - t_start
    log(summary(manifest, time.monotonic() - t_loop, bar.bytes))
    quality = manifest["stages"]["filter"].get("quality")
    if quality and quality["failed"]:
        fate = "kept unscored" if cfg.quality.on_failure == "keep" else "dropped"
        log(f"warning: the quality model failed on {quality['failed']} documents ({fate}): "
            f"{quality['failed_by_status']}")
    return PrepareResult(output, manifest, seconds)


def _manifest(cfg, paths, reader, per_file, tokenizer_path, tok, contamination, docs_in,
              docs_out, dropped, counts, writer, dedup_index, tmp, prefix, tokenizer_identity,
              describe) -> dict:
    stage_dropped: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for reason, n in sorted(dropped.items()):
        stage_dropped[STAGE_OF_REASON.get(reason, "error")][reason] = n
    remaining = docs_in
    stages: dict[str, dict] = {}
    for stage in ["read", "filter", "dedup", "decontaminate", "segment", "triples"]:
        lost = sum(stage_dropped.get(stage, {}).values())
        stages[stage] = {"in": remaining, "out": remaining - lost,
                         "dropped": stage_dropped.get(stage, {})}
        remaining -= lost
        if stage == "dedup":
            stages["pii"] = {"in": remaining, "out": remaining,
                             "documents_masked": counts.get("pii.documents_masked", 0),
                             "spans": {k: counts.get(f"pii.{k}", 0) for k in cfg.pii.kinds}}
    if "error" in stage_dropped:
        stages["error"] = {"dropped": stage_dropped["error"]}
    stages["dedup"]["kept_in_index"] = len(dedup_index) if dedup_index is not None else None
    stages["decontaminate"]["documents_cut"] = counts.get("decontaminate.documents_cut", 0)
    stages["decontaminate"]["spans_cut"] = counts.get("decontaminate.spans_cut", 0)
    stages["segment"].update({k.split(".", 1)[1]: v for k, v in sorted(counts.items())
                              if k.startswith("segment.")})
    stages["triples"].update({k.split(".", 1)[1]: v for k, v in sorted(counts.items())
                              if k.startswith("triples.")})
    stages["triples"]["triples"] = writer.triples
    if cfg.quality.model:
        from megatron_rlpt.data.quality import scorer_id

        def count(prefix: str) -> dict[str, int]:
            return {k[len(prefix):]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

        stages["filter"]["quality"] = {
            "model": cfg.quality.model, "threshold": cfg.quality.threshold,
            "on_failure": cfg.quality.on_failure,
            "scored": counts.get("quality.scored", 0), "cached": counts.get("quality.cached", 0),
            "failed": counts.get("quality.failed", 0), "failed_by_status": count("quality.failed."),
            "scores": count("quality.score."),
            "scores_file": str(Path(cfg.quality.work_dir) / f"quality-{scorer_id(cfg.quality)}.jsonl"),
        }
    stages["write"] = {"documents": writer.documents, "segments": writer.segments,
                       "triples": writer.triples, "tokens": writer.tokens,
                       "text_bytes": writer.text_bytes,
                       "inexact_roundtrip": counts.get("triples.inexact_roundtrip", 0)}
    outputs = {}
    for f in sorted(tmp.iterdir()):
        if f.is_file() and f.name not in ("manifest.json", ".owner"):
            outputs[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    tok_info = tokenizer_identity(tokenizer_path)
    tok_info.update({"vocab_size": len(tok), "eos_token_id": tok.eos_token_id,
                     "class": type(tok).__name__})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "megatron_prefix": prefix,
        "sequences_per_document": ["context", "target", "next"],
        "token_dtype": np.dtype(writer.dtype).name,
        "config": config_to_dict(cfg),
        "inputs": [{"path": str(p), "format": "/".join(x for x in reader.formats[i] if x),
                    "sha256": reader.checksums.get(str(p)), **per_file[i]}
                   for i, p in enumerate(paths)],
        "tokenizer": tok_info,
        "decontamination": ({**describe(contamination), "sha256": {
            f: _sha256(Path(f)) for f in contamination.files}} if contamination else "none"),
        "documents": {"in": docs_in, "out": docs_out, "dropped": dict(sorted(dropped.items()))},
        "dropped_by_reason": dict(sorted(dropped.items())),
        "stages": stages,
        "outputs": outputs,
    }


def summary(manifest: dict, seconds: float, nbytes: int) -> str:
    d = manifest["documents"]
    lines = [f"documents: {d['in']} in, {d['out']} out, {d['in'] - d['out']} dropped"]
    for stage in STAGES:
        s = manifest["stages"].get(stage)
        if not s:
            continue
        extra = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items())
        if stage == "pii":
            extra = f"{s['documents_masked']} documents masked; " + ", ".join(
                f"{k} {v}" for k, v in s["spans"].items() if v)
        if stage == "write":
            extra = (f"{s['triples']} triples, {s['tokens']} tokens, {s['segments']} segments"
                     f" of {s['documents']} documents")
        io_ = f"{s['in']} → {s['out']}" if "in" in s else ""
        lines.append(f"  {stage:<14}{io_:<16}{extra}")
    mbps = nbytes / max(seconds, 1e-9) / 1e6
    lines.append(f"{nbytes / 1e6:.1f} MB processed in {seconds:.1f} s ({mbps:.2f} MB/s)")
    return "\n".join(lines)

