"""The model-based quality filter of `rlpt prepare`: score parsing, an OpenAI-compatible server on
127.0.0.1 (scores, drops, failures, retries, persistence), a run killed with SIGKILL and resumed
without re-scoring, and in-process transformers models (a tiny random Llama and SmolLM2)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prepare_testlib import small_config

from megatron_rlpt.data.config import QualityConfig
from megatron_rlpt.data.pipeline import prepare
from megatron_rlpt.data.quality import QualityFilter, parse_quality_score
from tests.multirank import REPO_ROOT
from tests.objective.servers import ScriptedJudgeServer
from tests.real.conftest import smollm2_hf  # noqa: F401 - the SmolLM2 fixture

_GRADE = re.compile(r"Reviewer grade (\d)")


def grader(prompt: str) -> str:
    """A scripted quality model: the grade a document states about itself."""
    match = _GRADE.search(prompt)
    if not match:
        return "I cannot grade this."
    return f"Educational score: {match.group(1)}\nThe extract is graded as it asks."


@pytest.mark.parametrize("text,score", [
    ("Educational score: 3", 3.0),
    ("Educational score: 4\nWell organised.", 4.0),
    ("**Educational score:** 5", 5.0),
    ("<think>maybe 1?</think>Educational score: 2", 2.0),
    ("Score: 2/5", 2.0),
    ("The score is 1.", 1.0),
    ("4", 4.0),
    ("3/5", 3.0),
    ("Educational score: 0.", 0.0),
    ("Educational score: N", None),
    ("Educational score: 10", None),
    ("Educational score: 6", None),
    ("Educational score: 2\nEducational score: 4", None),
    ("<think>Educational score: 3", None),
    ("This text is quite educational.", None),
    ("", None),
])
def test_parse_quality_score(text, score):
    assert parse_quality_score(text) == score


def _sections(shared_data: Path, n: int) -> list[dict]:
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f][1 : n + 1]


def _corpus(shared_data: Path, path: Path, extras: list[str]) -> list[str]:
    """One chemistry section per entry of `extras`, each opening with that sentence (within
    the part of the document the model sees)."""
    docs = _sections(shared_data, len(extras))
    with open(path, "w", encoding="utf-8") as f:
        for d, extra in zip(docs, extras):
            f.write(json.dumps({"id": d["id"], "text": extra + "\n\n" + d["text"]}) + "\n")
    return [d["id"] for d in docs]


def _config(url: str, work: Path, **quality):
    cfg = small_config()
    cfg.quality = QualityConfig(model=url, work_dir=str(work), threshold=3.0, max_retries=2,
                                backoff_s=0.01, timeout_s=20, **quality)
    return cfg


def _documents(out: Path) -> dict[str, dict]:
    return {d["id"]: d for d in map(json.loads, (out / "documents.jsonl").read_text().splitlines())}


def _quarantine(out: Path) -> dict[str, dict]:
    return {q["id"]: q for q in map(json.loads, (out / "quarantine.jsonl").read_text().splitlines())}


GRADES = ["Reviewer grade 0.", "Reviewer grade 2.", "Reviewer grade 3.", "Reviewer grade 5.",
          "Reviewer grade 4. [[fault:503*1]]",  # fails once, then answers
          "Reviewer grade 5. [[fault:500]]",    # fails every time
          "No grade here. [[fault:noscore]]"]   # answers without a score


@pytest.mark.parametrize("api", ["chat", "completions", "sglang"])
def test_server_scores_drops_and_failures(shared_data, tmp_path, api):
    ids = _corpus(shared_data, tmp_path / "in.jsonl", GRADES)
    with ScriptedJudgeServer(answer=grader) as server:
        result = prepare([str(tmp_path / "in.jsonl")], tmp_path / "out", workers=1,
                         cfg=_config(server.url, tmp_path / "work", api=api))
        requests = sum(server.requests[p] for p in
                       ("/v1/chat/completions", "/v1/completions", "/generate"))
    q = result.manifest["stages"]["filter"]["quality"]
    assert q["scored"] == 7 and q["cached"] == 0
    # A failed scoring is counted with its status and never becomes a score.
    assert q["failed"] == 2 and q["failed_by_status"] == {"http_error": 1, "parse_error": 1}
    assert q["scores"] == {"0": 1, "2": 1, "3": 1, "4": 1, "5": 1}
    assert result.manifest["dropped_by_reason"] == {"quality_model": 2}
    docs, dropped = _documents(tmp_path / "out"), _quarantine(tmp_path / "out")
    assert {dropped[i]["detail"] for i in ids[:2]} == {"score 0 < 3", "score 2 < 3"}
    assert all(dropped[i]["reason"] == "quality_model" for i in ids[:2])
    # on_failure: keep — the two failures stay, unscored.
    assert [docs[i]["quality_score"] for i in ids[2:]] == [3.0, 5.0, 4.0, None, None]
    # 7 first attempts, 1 retry of the 503, 2 retries of the 500.
    assert requests == 7 + 1 + 2
    lines = Path(q["scores_file"]).read_text().splitlines()
    assert len(lines) == 5  # failures are not persisted


def test_rerun_reuses_scores_and_drops_failures(shared_data, tmp_path):
    ids = _corpus(shared_data, tmp_path / "in.jsonl", GRADES)
    with ScriptedJudgeServer(answer=grader) as server:
        prepare([str(tmp_path / "in.jsonl")], tmp_path / "out1", workers=1,
                cfg=_config(server.url, tmp_path / "work"))
        first = dict(server.attempts)
        result = prepare([str(tmp_path / "in.jsonl")], tmp_path / "out2", workers=2,
                         cfg=_config(server.url, tmp_path / "work", on_failure="drop"))
        second = {k: v - first.get(k, 0) for k, v in server.attempts.items()}
    q = result.manifest["stages"]["filter"]["quality"]
    assert q["cached"] == 5 and q["scored"] == 2 and q["failed"] == 2
    # Only the two failed documents went to the server again (the 500 with its retries).
    assert sorted(v for v in second.values() if v) == [1, 3]
    dropped = _quarantine(tmp_path / "out2")
    assert dropped[ids[5]]["reason"] == dropped[ids[6]]["reason"] == "quality_failed"
    assert dropped[ids[5]]["detail"].startswith("http_error")
    assert result.manifest["dropped_by_reason"] == {"quality_failed": 2, "quality_model": 2}


def _prepare_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "megatron_rlpt.cli", "prepare", *args],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_killed_run_resumes_without_rescoring(shared_data, tmp_path):
    n = 12
    grades = [f"Reviewer grade {k % 6}." for k in range(n)]
    _corpus(shared_data, tmp_path / "in.jsonl", grades)
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text("docs_per_task: 1\ntriples: {max_context_tokens: 96, "
                   "max_triples_per_document: 6}\nquality: {concurrency: 1, backoff_s: 0.01}\n")
    scores = tmp_path / "out.work"
    with ScriptedJudgeServer(answer=grader, base_delay_s=0.5) as server:
        args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
                "--config", str(cfg), "--quality-model", server.url,
                "--quality-threshold", "2", "--no-progress"]
        proc = _prepare_cli(args)
        deadline = time.monotonic() + 300
        persisted: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(scores.glob("quality-*.jsonl"))
            persisted = files[0].read_text().splitlines() if files else []
            if len(persisted) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        (scores_file,) = scores.glob("quality-*.jsonl")
        before = {json.loads(line)["key"] for line in scores_file.read_text().splitlines()
                  if line.endswith("}")}
        assert 3 <= len(before) < n
        attempts_before = dict(server.attempts)
        assert not (tmp_path / "out").exists()

        proc = _prepare_cli(args)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        resumed = {k: v - attempts_before.get(k, 0) for k, v in server.attempts.items()}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    q = manifest["stages"]["filter"]["quality"]
    assert q["cached"] >= len(before) and q["cached"] + q["scored"] == n and q["failed"] == 0
    # The resumed run asked the server only about documents without a persisted score.
    assert sum(resumed.values()) == n - q["cached"]
    assert manifest["dropped_by_reason"] == {"quality_model": 4}  # grades 0 and 1, twice each

    # Same output as a run that was never killed.
    with ScriptedJudgeServer(answer=grader) as server:
        straight_args = args[:3] + [str(tmp_path / "straight")] + args[4:]
        straight_args[straight_args.index("--quality-model") + 1] = server.url
        proc = _prepare_cli(straight_args)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    straight = json.loads((tmp_path / "straight" / "manifest.json").read_text())
    assert manifest["outputs"] == straight["outputs"]
    assert manifest["documents"] == straight["documents"]


def _tiny_llama(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama with the shipped tokenizer and its chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_rlpt.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def test_in_process_model_failures_are_recorded_never_made_up(shared_data, tmp_path):
    model = _tiny_llama(tmp_path / "tiny")
    ids = _corpus(shared_data, tmp_path / "in.jsonl", ["", "", ""])
    cfg = small_config()
    cfg.quality = QualityConfig(model=str(model), work_dir=str(tmp_path / "work"),
                                on_failure="drop", max_tokens=6, max_doc_chars=400, batch_size=2)
    result = prepare([str(tmp_path / "in.jsonl")], tmp_path / "out", cfg=cfg)
    q = result.manifest["stages"]["filter"]["quality"]
    assert q["scored"] == 3
    # A random model rarely writes a score; whatever it wrote is either parsed or a failure.
    assert q["failed"] + sum(q["scores"].values()) == 3
    assert q["failed_by_status"] == ({"parse_error": q["failed"]} if q["failed"] else {})
    dropped = _quarantine(tmp_path / "out") if q["failed"] else {}
    for i in ids:
        if i in dropped and dropped[i]["reason"] == "quality_failed":
            raw = dropped[i]["detail"].split(": ", 1)[1]
            assert parse_quality_score(raw) is None
    assert result.manifest["dropped_by_reason"].get("quality_failed", 0) == q["failed"]


def test_smollm2_scores_real_documents(smollm2_hf, shared_data, tmp_path):  # noqa: F811
    docs = [d["text"] for d in _sections(shared_data, 1)]
    docs.append("Home | Shop | Login | Cart. Buy cheap watches now!!! Best prices and free "
                "shipping on all orders. Click here to subscribe to our newsletter. Copyright "
                "2024, all rights reserved. Terms and conditions apply.")
    cfg = QualityConfig(model=str(smollm2_hf), max_tokens=4, max_doc_chars=500)
    scorer = QualityFilter(cfg, tmp_path / "work")
    results = scorer.score(docs)
    for r in results:
        assert r.status in ("ok", "parse_error") and not r.cached
        assert (r.score is None) == (r.status != "ok")
        assert r.score is None or (0 <= r.score <= 5 and parse_quality_score(r.raw) == r.score)
    assert any(r.status == "ok" for r in results), [r.raw for r in results]
    # A new filter on the same work directory reads the scores back instead of generating.
    again = QualityFilter(cfg, tmp_path / "work").score(docs)
    assert [(r.score, r.cached) for r in again if r.status == "ok"] == \
        [(r.score, True) for r in results if r.status == "ok"]
