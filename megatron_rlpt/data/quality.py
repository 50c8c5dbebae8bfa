"""Model-based quality filter of `rlpt prepare`: an instruction-tuned LM scores each document.

The model reads a document (cut to `quality.max_doc_chars`) and grades its educational value on
an additive 0–5 scale; documents scoring below `quality.threshold` are dropped as
`quality_model`. The model is either

- a local Hugging Face directory, run in-process with transformers (greedy, batched), or
- an `http(s)://` URL of an OpenAI-compatible server (`/v1/chat/completions`,
  `/v1/completions`) or SGLang's native `/generate`, for scale; every request has a timeout and
  bounded retries with exponential backoff.

A scoring that fails (server error after the retries, an answer without a score) is recorded as
failed with its status, never replaced by a made-up score; `quality.on_failure` says whether
such a document is kept or dropped (`quality_failed`), and the manifest counts both.

Scores persist per document in `<work_dir>/quality-<scorer id>.jsonl`, keyed by the SHA-256 of
the normalised text, one line appended (in a single write) per document and fsynced per batch.
A rerun after a kill reads them back and scores only what is missing; a torn last line is
ignored. The scorer id hashes everything that changes a score (model, API, prompt, limits), so
changing any of them starts a new file. Failures are not persisted: a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_rlpt.errors import UsageError

QUALITY_PROMPT = """\
Below is an extract from a document. Rate how useful it would be for teaching, anywhere from \
primary school to university, by adding up points on this scale:

- 1 point if the extract gives some information on an educational subject, even when it is \
mixed with advertising, navigation text or other unrelated material.
- 1 more point if it covers parts of such a subject but is disorganised, incomplete or partly \
off-topic.
- A third point if it could be used in teaching and presents ideas that belong to a school or \
university curriculum coherently, even if it is shallow or leaves things out.
- A fourth point if it is well organised and clearly written, close to a section of a textbook \
or a tutorial, with little unrelated content.
- A fifth point if it is excellent teaching material: focused, thorough, without distractions, \
explaining its ideas or working through its reasoning step by step.

An extract with no educational value at all scores 0.

Extract:
<<<
{document}
>>>

Begin your answer with "Educational score:" and the total points, a single digit from 0 to \
5. You may add one sentence of justification on the next line."""

ANSWER_PREFIX = "Educational score:"
"""Written as the start of the answer where the API allows it (in-process model, completions
and `/generate`), so that even a small model's first tokens are the score."""

MAX_SCORE = 5.0
FAILURE_STATUSES = ("parse_error", "timeout", "http_error", "connection_error", "bad_response",
                    "error")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_NUMBER = r"\**\s*(\d+(?:\.\d+)?)"
_LABELLED = re.compile(r"educational\s+score\s*\**\s*[:=]?\s*" + _NUMBER, re.IGNORECASE)
_GENERIC = re.compile(r"\bscore\b\s*(?:is|of)?\s*\**\s*[:=]?\s*" + _NUMBER, re.IGNORECASE)
_BARE = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5)?\s*\.?\s*$")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def parse_quality_score(text: str) -> float | None:
    """The 0–5 score in a model's answer, or None when it gave none or several different ones.

    Accepts `Educational score: 3`, `**Educational score:** 4`, `Score: 2/5`, `score is 1`
    and a bare `3` (or `3/5`); a reasoning block `<think>…</think>` is ignored, an unfinished one
    means no answer. A number outside 0–5 (`Score: 10`) is no score.
    """
    text = _THINK.sub(" ", text)
    if re.search(r"<think>", text, re.IGNORECASE):
        return None
    for pattern in (_LABELLED, _GENERIC):
        values = {float(v) for v in pattern.findall(text)}
        if values:
            if len(values) > 1:
                return None
            (value,) = values
            return value if 0.0 <= value <= MAX_SCORE else None
    bare = _BARE.match(text)
    if bare:
        value = float(bare.group(1))
        return value if 0.0 <= value <= MAX_SCORE else None
    return None


@dataclass
class ScoreResult:
    """One document's scoring: `score` is None exactly when `status` is not `ok`."""

    score: float | None
    status: str
    raw: str = ""
    cached: bool = False


def document_key(text: str) -> str:
    """The cache key of a document: SHA-256 of its (normalised) text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def load_prompt(cfg: Any) -> str:
    """The scoring prompt: `cfg.prompt_file` (with a `{document}` placeholder) or the built-in."""
    if not cfg.prompt_file:
        return QUALITY_PROMPT
    try:
        prompt = Path(cfg.prompt_file).read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"quality.prompt_file: cannot read {cfg.prompt_file}: {err}") from err
    if "{document}" not in prompt:
        raise UsageError(f"quality.prompt_file {cfg.prompt_file} has no {{document}} placeholder")
    return prompt.removesuffix("\n")


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def scorer_id(cfg: Any) -> str:
    """Hash of everything that changes a score; names the persisted scores file."""
    ident = {"model": cfg.model, "api": cfg.api if is_url(cfg.model) else "hf",
             "server_model": cfg.server_model, "prompt": load_prompt(cfg),
             "prefix": ANSWER_PREFIX, "max_doc_chars": cfg.max_doc_chars,
             "max_tokens": cfg.max_tokens}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def render(prompt: str, text: str, max_chars: int) -> str:
    # One replace, so braces in the document (LaTeX, code) are left alone.
    return prompt.replace("{document}", text[:max_chars] if max_chars > 0 else text)


# --- persisted scores -------------------------------------------------------------------------

class ScoreStore:
    """Append-only JSONL of `{"key", "score", "raw"}`, read back on start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores: dict[str, float] = {}
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        score = float(rec["score"])
                        key = str(rec["key"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill, or not ours
                    if 0.0 <= score <= MAX_SCORE:
                        self.scores[key] = score

    def get(self, key: str) -> float | None:
        return self.scores.get(key)

    def add(self, items: Sequence[tuple[str, float, str]]) -> None:
        """Persist (key, score, raw) triples: one `write` per line on an O_APPEND descriptor,
        so concurrent workers never interleave inside a line; fsync once per call."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for key, score, raw in items:
                line = json.dumps({"key": key, "score": score, "raw": raw[:200]},
                                  ensure_ascii=False) + "\n"
                os.write(fd, line.encode("utf-8", "surrogatepass"))
                self.scores[key] = score
            os.fsync(fd)
        finally:
            os.close(fd)


# --- scorers ----------------------------------------------------------------------------------

class HFScorer:
    """Greedy generation with transformers on a local HF directory, loaded on first use (so
    forked workers each load their own copy)."""

    def __init__(self, cfg: Any, prompt: str) -> None:
        self.cfg, self.prompt = cfg, prompt
        self.model: Any = None
        self.tokenizer: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.cfg.model
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, self.cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                          dtype=dtype)
        self.model.to(self.cfg.device).eval()

    def _text(self, document: str) -> str:
        user = render(self.prompt, document, self.cfg.max_doc_chars)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                      tokenize=False, add_generation_prompt=True)
        else:
            text = user + "\n\n"
        return text + ANSWER_PREFIX

    def score(self, documents: Sequence[str]) -> list[ScoreResult]:
        import torch

        if self.model is None:
            self._load()
        out: list[ScoreResult] = []
        for start in range(0, len(documents), self.cfg.batch_size):
            batch = [self._text(d) for d in documents[start : start + self.cfg.batch_size]]
            try:
                enc = self.tokenizer(batch, return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.cfg.device)
                with torch.no_grad():
                    gen = self.model.generate(**enc, max_new_tokens=self.cfg.max_tokens,
                                              do_sample=False, temperature=None, top_p=None,
                                              top_k=None,
                                              pad_token_id=self.tokenizer.pad_token_id)
                texts = self.tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:],
                                                    skip_special_tokens=True)
            except Exception as err:  # noqa: BLE001 - a failed batch is a failed scoring
                out += [ScoreResult(None, "error", f"{type(err).__name__}: {err}"[:300])
                        for _ in batch]
                continue
            for t in texts:
                answer = ANSWER_PREFIX + t
                value = parse_quality_score(answer)
                out.append(ScoreResult(value, "ok" if value is not None else "parse_error",
                                       answer))
        return out


class _Failure(Exception):
    def __init__(self, status: str, detail: str, retry: bool) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retry = status, detail, retry


class HTTPScorer:
    """An OpenAI-compatible or SGLang server: requests in `concurrency` threads, each with a
    total deadline of `timeout_s` and up to `max_retries` retries (timeouts, connection
    errors, malformed bodies, 408/429/5xx) with exponential backoff and jitter."""

    def __init__(self, cfg: Any, prompt: str) -> None:
        self.cfg, self.prompt = cfg, prompt
        self.base = cfg.model.rstrip("/").removesuffix("/v1")
        self._model_name: str | None = cfg.server_model
        self._lock = threading.RLock()  # _model() holds it across its own retries
        self._rng = random.Random(0)
        self.api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None

    def _request(self, path: str, body: dict | None) -> Any:
        """One HTTP exchange; the JSON body of a 200, else a `_Failure`."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        deadline = time.monotonic() + self.cfg.timeout_s
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                chunks = []
                # The socket timeout bounds each read; the deadline bounds a trickled body.
                while chunk := resp.read(65536):
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise _Failure("timeout", f"body not complete in {self.cfg.timeout_s}s",
                                       True)
                payload = b"".join(chunks)
        except urllib.error.HTTPError as err:
            raise _Failure("http_error", f"HTTP {err.code}", err.code in _RETRY_STATUS) from err
        except _Failure:
            raise
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise _Failure("timeout", f"no answer in {self.cfg.timeout_s}s", True) from err
            raise _Failure("connection_error", f"{type(err).__name__}: {err}"[:200], True) \
                from err
        try:
            return json.loads(payload)
        except ValueError as err:
            raise _Failure("bad_response", "body is not JSON", True) from err

    def _with_retries(self, path: str, body: dict | None) -> Any:
        attempt = 0
        while True:
            try:
                return self._request(path, body)
            except _Failure as failure:
                if not failure.retry or attempt >= self.cfg.max_retries:
                    raise
                with self._lock:
                    jitter = self._rng.random()
                delay = min(self.cfg.backoff_s * 2 ** attempt, 30.0) * (0.5 + 0.5 * jitter)
                time.sleep(delay)
                attempt += 1

    def _model(self) -> str:
        with self._lock:
            if self._model_name is None:
                listing = self._with_retries("/v1/models", None)
                try:
                    self._model_name = str(listing["data"][0]["id"])
                except (KeyError, IndexError, TypeError) as err:
                    raise _Failure("bad_response", "/v1/models lists no model", False) from err
            return self._model_name

    def _one(self, document: str) -> ScoreResult:
        user = render(self.prompt, document, self.cfg.max_doc_chars)
        api, prefix = self.cfg.api, ""
        try:
            if api == "chat":
                body = {"model": self._model(), "messages": [{"role": "user", "content": user}],
                        "max_tokens": self.cfg.max_tokens, "temperature": 0}
                reply = self._with_retries("/v1/chat/completions", body)
                text_of = lambda r: r["choices"][0]["message"]["content"]  # noqa: E731
            elif api == "completions":
                prefix = ANSWER_PREFIX
                body = {"model": self._model(), "prompt": user + "\n\n" + prefix,
                        "max_tokens": self.cfg.max_tokens, "temperature": 0}
                reply = self._with_retries("/v1/completions", body)
                text_of = lambda r: r["choices"][0]["text"]  # noqa: E731
            else:
                prefix = ANSWER_PREFIX
                body = {"text": user + "\n\n" + prefix,
                        "sampling_params": {"max_new_tokens": self.cfg.max_tokens,
                                            "temperature": 0}}
                reply = self._with_retries("/generate", body)
                text_of = lambda r: r["text"]  # noqa: E731
            try:
                text = text_of(reply)
                if not isinstance(text, str):
                    raise TypeError(type(text).__name__)
            except (KeyError, IndexError, TypeError) as err:
                return ScoreResult(None, "bad_response", f"unexpected reply: {err}"[:300])
        except _Failure as failure:
            return ScoreResult(None, failure.status, failure.detail)
        answer = prefix + text
        value = parse_quality_score(answer)
        return ScoreResult(value, "ok" if value is not None else "parse_error", answer)

    def score(self, documents: Sequence[str]) -> list[ScoreResult]:
        if not documents:
            return []
        with ThreadPoolExecutor(min(self.cfg.concurrency, len(documents))) as pool:
            return list(pool.map(self._one, documents))


# --- the filter -------------------------------------------------------------------------------

class QualityFilter:
    """Scores documents (persisted scores first), for the pipeline's first stage."""

    def __init__(self, cfg: Any, work_dir: str | Path) -> None:
        if not cfg.model:
            raise UsageError("quality.model is not set")
        self.cfg = cfg
        prompt = load_prompt(cfg)
        if is_url(cfg.model):
            self.scorer: Any = HTTPScorer(cfg, prompt)
        else:
            if not Path(cfg.model).is_dir():
                raise UsageError(f"--quality-model {cfg.model} is neither an http(s) URL nor a "
                                 "Hugging Face model directory")
            self.scorer = HFScorer(cfg, prompt)
        self.id = scorer_id(cfg)
        self.store = ScoreStore(Path(work_dir) / f"quality-{self.id}.jsonl")

    @property
    def scores_path(self) -> Path:
        return self.store.path

    def score(self, documents: Sequence[str]) -> list[ScoreResult]:
        """One result per document, in order; new successful scores are persisted at once."""
        keys = [document_key(d) for d in documents]
        results: list[ScoreResult | None] = []
        todo: list[int] = []
        for i, key in enumerate(keys):
            known = self.store.get(key)
            if known is None:
                results.append(None)
                todo.append(i)
            else:
                results.append(ScoreResult(known, "ok", cached=True))
        if todo:
            try:
                fresh = self.scorer.score([documents[i] for i in todo])
            except Exception as err:  # noqa: BLE001 - a scorer crash fails these documents only
                fresh = [ScoreResult(None, "error", f"{type(err).__name__}: {err}"[:300])
                         for _ in todo]
            self.store.add([(keys[i], r.score, r.raw) for i, r in zip(todo, fresh)
                            if r.score is not None])
            for i, r in zip(todo, fresh):
                results[i] = r
        return [r for r in results if r is not None]
