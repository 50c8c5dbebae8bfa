"""`rlpt eval --engine vllm` through the rollouts' vLLM sidecar, against the real vLLM CPU build of
`.venv-vllm` (or `RLPT_VLLM_PYTHON`): one greedy run, whose completions must be the HF engine's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_rlpt.cli import main
from tests.convert.test_vllm import _vllm_python

from .conftest import _project_tokenizer

pytestmark = pytest.mark.slow
BENCHMARKS = "gsm8k,math500"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with head size 32 (vLLM's CPU attention takes no smaller)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama_h32")
    tokenizer = AutoTokenizer.from_pretrained(_project_tokenizer())
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # peaked logits: greedy choices are far from ties
    model.save_pretrained(out)
    return out


def _eval(model: Path, shared_data: Path, out: Path, engine: str) -> list[dict]:
    argv = ["eval", "--model", str(model), "--benchmarks", BENCHMARKS,
            "--data-dir", str(shared_data / "benchmarks"), "--limit", "3", "--n", "2",
            "--temperature", "0", "--max-tokens", "10", "--engine", engine,
            "--output-dir", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["engine"] == engine and sorted(results["benchmarks"]) == ["gsm8k", "math500"]
    rows = []
    for name in ("gsm8k", "math500"):
        prompts = {}
        for line in open(out / "prompts" / f"{name}.jsonl"):
            record = json.loads(line)
            prompts[record["id"]] = record["prompt"]
        for line in open(out / "samples" / f"{name}.jsonl"):
            row = json.loads(line)
            rows.append({**row, "prompt": prompts[row["id"]]})
    return rows


def test_eval_with_vllm_from_its_own_venv(model_dir, shared_data, tmp_path):
    # Nothing configured: the sidecar finds .venv-vllm in the checkout (or RLPT_VLLM_PYTHON).
    _vllm_python()  # fails with instructions when vLLM is not set up
    vllm_rows = _eval(model_dir, shared_data, tmp_path / "vllm", "vllm")
    hf_rows = _eval(model_dir, shared_data, tmp_path / "hf", "hf")
    assert len(vllm_rows) == len(hf_rows) == 2 * 3 * 2
    for v, h in zip(vllm_rows, hf_rows):
        assert (v["id"], v["sample"], v["prompt"]) == (h["id"], h["sample"], h["prompt"])
        assert 0 < v["num_tokens"] <= 10 and v["finish_reason"] in ("stop", "length")
        # The same model, prompt tokens and greedy decoding, both in float32 on the CPU.
        assert v["completion"] == h["completion"], (v, h)


def test_missing_vllm_python_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RLPT_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))
    argv = ["eval", "--model", str(tmp_path), "--benchmarks", "gsm8k", "--engine", "vllm",
            "--data-dir", str(tmp_path)]
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps(
        {"question": "1+1?", "answer": "#### 2"}) + "\n")
    (tmp_path / "config.json").write_text("{}")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--engine vllm: vLLM: no Python at" in err and "RLPT_VLLM_PYTHON" in err
