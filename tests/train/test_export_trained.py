"""A checkpoint written by `rlpt train` exports with `rlpt convert` and loads in transformers
with the trained Megatron model's logits."""

from __future__ import annotations

import torch

from tests.multirank import run_multirank
from tests.train.test_resume import _config, _rlpt


def test_rlpt_train_checkpoint_exports_to_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    config = _config(tmp_path, tmp_path / "run")
    proc = _rlpt(["train", "--config", str(config), "run.steps=2", "run.save_every=2"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    hf_dir = tmp_path / "hf"
    proc = _rlpt(["convert", "megatron-to-hf", "--ckpt", str(tmp_path / "run" / "checkpoints"),
                  "--out", str(hf_dir)])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    tokens = [[5, 17, 300, 2, 99, 1024, 8000, 42], [7, 7, 7, 1, 2, 3, 4, 5]]
    megatron = run_multirank("tests.train.workers:megatron_logits", nproc=1, config=str(config),
                             ckpt=str(tmp_path / "run" / "checkpoints"), tokens=tokens)[0]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        hf = model(torch.tensor(tokens)).logits
    assert hf.shape == megatron.shape
    assert (hf - megatron).abs().max().item() <= 1e-4
