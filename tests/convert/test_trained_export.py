"""A checkpoint written by training (TP=2, with optimizer state) exports to Hugging Face and gives
the trained Megatron model's logits in transformers.

`rlpt train` does not exist yet; the TP=2 worker trains the way it will (setup_training,
train_step, save_checkpoint, model_config.json in the checkpoint root). Switch to a real
`rlpt train` run once the command lands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_rlpt.convert import megatron_to_hf
from tests.convert.fixtures import ARCHS, fixed_tokens, hf_logits
from tests.multirank import REPO_ROOT

pytestmark = pytest.mark.multirank


def test_trained_checkpoint_exports_with_its_logits(converted, launches, tmp_path):
    from transformers import AutoModelForCausalLM

    base = converted["base"]
    run = base / "trained"
    ranks = [r["trained"] for r in launches["tp2"]]
    trained = ranks[0]["logits"]
    assert (ranks[1]["logits"] - trained).abs().max() == 0  # TP ranks agree
    assert (run / "model_config.json").is_file() and not (run / "tokenizer").exists()

    out = megatron_to_hf(run, tmp_path / "hf", hf_template=converted["tokenizer"])
    tokens = fixed_tokens(ARCHS["qwen2"]["vocab_size"])
    exported = hf_logits(out, tokens)
    assert (exported - trained).abs().max().item() <= 1e-4
    # Training moved the model away from the converted one, so the match above is not vacuous.
    assert (exported - hf_logits(base / "hf-qwen2", tokens)).abs().max().item() > 1e-2

    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["vocab_size"] == 320
    # No template config.json: the special tokens come from the tokenizer.
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0 and generation["bos_token_id"] == 1


def test_tools_script_is_rlpt_convert(converted, tmp_path):
    """tools/convert_checkpoint.py passes its arguments to `rlpt convert` (exit status, errors)."""
    script = str(REPO_ROOT / "tools" / "convert_checkpoint.py")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, script, "megatron-to-hf", "--ckpt",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rlpt convert: error: checkpoint not found: {tmp_path / 'missing'}"]
    assert not (tmp_path / "out").exists()
