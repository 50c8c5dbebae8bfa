"""Model config validation, vocabulary padding, rope scaling and bf16."""

from __future__ import annotations

import pytest
import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig
from tests.multirank import run_multirank


def test_padded_vocab_and_validation():
    cfg = ModelConfig(vocab_size=151_646, make_vocab_size_divisible_by=128)
    assert cfg.padded_vocab_size(1) == 151_680
    assert cfg.padded_vocab_size(4) % 512 == 0 and cfg.padded_vocab_size(4) >= 151_646
    with pytest.raises(UsageError, match="num_query_groups"):
        ModelConfig(num_attention_heads=4, num_query_groups=2).validate(tensor_parallel=4)
    with pytest.raises(UsageError, match="PP"):
        ModelConfig(num_layers=3).validate(pipeline_parallel=2)
    with pytest.raises(UsageError, match="architecture"):
        ModelConfig(architecture="gpt2").validate()
    with pytest.raises(UsageError, match="Transformer Engine"):
        ModelConfig(fp8="e4m3").validate()


@pytest.mark.multirank
def test_bf16_and_llama3_rope_scaling():
    out = run_multirank("tests.runtime.workers:bf16_vs_fp32", nproc=1, arch="llama")[0]
    assert out["bf16_dtype"] == "torch.bfloat16"
    assert out["bf16"].dtype == torch.float32  # Float16Module returns fp32 logits
    diff = (out["bf16"] - out["fp32"]).abs().max().item()
    assert 0 < diff < 0.05 * out["fp32"].abs().max().item()
    # llama3 scaling (factor 8, original context 32 in the tiny config) divides the low
    # frequencies by the factor and leaves the high ones alone.
    dim = out["inv_freq"].numel() * 2
    base = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    assert torch.allclose(out["inv_freq"][0], base[0])
    assert torch.allclose(out["inv_freq"][-1], base[-1] / 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU side of the fusion switches")
def test_fusions_are_on_by_default_and_off_on_the_cpu():
    """Megatron-LM's fusions are switched on by default, and a machine without CUDA (or without
    a fusion's kernel) builds the unfused path instead of failing."""
    from megatron_rlpt.runtime.model import (
        FUSIONS,
        active_fusions,
        fusion_kernels_available,
        transformer_config,
    )

    cfg = ModelConfig()
    assert all(getattr(cfg, name) for name in FUSIONS)
    assert fusion_kernels_available() == dict.fromkeys(FUSIONS, False)
    assert active_fusions(cfg) == dict.fromkeys(FUSIONS, False)
    tconfig = transformer_config(cfg)
    assert not any(getattr(tconfig, name) for name in FUSIONS)
