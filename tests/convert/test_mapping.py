"""The mapping rules and config translation, checked against layouts written out by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_rlpt.convert import hf_config, mapping
from megatron_rlpt.convert.hf_files import parse_size
from megatron_rlpt.convert.model_config_file import load_model_config, save_model_config
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig
from tests.convert.fixtures import ARCHS

CFG = ModelConfig(architecture="qwen2", hidden_size=8, num_attention_heads=4, num_query_groups=2,
                  kv_channels=3, ffn_hidden_size=6, vocab_size=10, add_qkv_bias=True,
                  num_layers=1)


def _rule(hf_suffix: str) -> mapping.Rule:
    return next(r for r in mapping.rules(CFG) if r.hf.endswith(hf_suffix))


def test_qkv_rows_are_interleaved_per_query_group():
    hd, heads, groups = 3, 4, 2
    q = torch.arange(heads * hd * 8, dtype=torch.float32).view(heads * hd, 8)
    k = -torch.arange(1, groups * hd * 8 + 1, dtype=torch.float32).view(groups * hd, 8)
    v = 1000 + torch.arange(groups * hd * 8, dtype=torch.float32).view(groups * hd, 8)
    full = torch.zeros((heads + 2 * groups) * hd, 8)
    for name, t in (("q_proj.weight", q), ("k_proj.weight", k), ("v_proj.weight", v)):
        mapping.place(CFG, _rule(name), full, t)
    # group g: its two query heads, then its key head, then its value head
    expected = torch.cat([q[0:6], k[0:3], v[0:3], q[6:12], k[3:6], v[3:6]])
    assert torch.equal(full, expected)
    for name, t in (("q_proj.weight", q), ("k_proj.weight", k), ("v_proj.weight", v)):
        assert torch.equal(mapping.extract(CFG, _rule(name), full), t)


def test_qkv_bias_and_fc1_and_vocab_parts():
    bias = torch.zeros((4 + 4) * 3)
    q_b = torch.arange(12.0)
    mapping.place(CFG, _rule("q_proj.bias"), bias, q_b)
    assert torch.equal(bias[:6], q_b[:6]) and torch.equal(bias[12:18], q_b[6:])

    fc1 = torch.zeros(12, 8)
    gate, up = torch.randn(6, 8), torch.randn(6, 8)
    mapping.place(CFG, _rule("gate_proj.weight"), fc1, gate)
    mapping.place(CFG, _rule("up_proj.weight"), fc1, up)
    assert torch.equal(fc1, torch.cat([gate, up]))

    emb = torch.zeros(16, 8)
    mapping.place(CFG, _rule("embed_tokens.weight"), emb, torch.ones(10, 8))
    assert emb[:10].eq(1).all() and emb[10:].eq(0).all()
    assert mapping.extract(CFG, _rule("embed_tokens.weight"), emb).shape == (10, 8)
    with pytest.raises(ValueError, match="shape"):
        mapping.place(CFG, _rule("embed_tokens.weight"), emb, torch.ones(11, 8))


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_shards_gather_into_the_full_layout(tp):
    """Megatron's TP shards (whole query groups; fc1 as [gate_r; up_r]) join back exactly."""
    gate, up = torch.randn(8, 5), torch.randn(8, 5)
    shards = [torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))]
    full = mapping.gather_full("decoder.layers.0.mlp.linear_fc1.weight", shards, 0)
    assert torch.equal(full, torch.cat([gate, up]))
    qkv = torch.randn(16, 5)
    assert torch.equal(mapping.gather_full("x.linear_qkv.weight", list(qkv.chunk(tp)), 0), qkv)
    proj = torch.randn(5, 16)
    assert torch.equal(mapping.gather_full("x.linear_proj.weight", list(proj.chunk(tp, 1)), 1), proj)


def test_rules_cover_each_architecture():
    for arch, extra in (("llama", set()), ("qwen2", {"q_proj.bias"}), ("qwen3", {"q_norm.weight"})):
        cfg = dataclasses.replace(CFG, architecture=arch, add_qkv_bias=arch == "qwen2",
                                  qk_layernorm=arch == "qwen3", tie_embeddings=arch != "qwen2")
        names = {r.hf for r in mapping.rules(cfg)}
        assert ("lm_head.weight" in names) == (arch == "qwen2")
        for suffix in extra:
            assert f"model.layers.0.self_attn.{suffix}" in names
    te = "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert mapping.canonical_name(te) == "decoder.layers.3.input_layernorm.weight"


def _hf_dict(arch: str) -> dict:
    from transformers import AutoConfig

    spec = dict(ARCHS[arch])
    return AutoConfig.for_model(spec.pop("model_type"), **spec).to_dict()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_config_round_trip(arch):
    hf = _hf_dict(arch)
    cfg = hf_config.model_config_from_hf(hf)
    assert cfg.architecture == arch and cfg.vocab_size == hf["vocab_size"]
    assert cfg.tie_embeddings == hf["tie_word_embeddings"]
    assert (cfg.rope_scaling is not None) == (arch == "llama")
    assert cfg.add_qkv_bias == (arch == "qwen2") and cfg.qk_layernorm == (arch == "qwen3")
    assert cfg.kv_channels == (32 if arch == "qwen3" else None)
    back = hf_config.hf_config_from_model(cfg)
    assert hf_config.model_config_from_hf(back) == cfg
    # transformers 4.x layout (rope_theta / rope_scaling) reads the same
    legacy = {k: v for k, v in back.items() if k != "rope_parameters"}
    assert hf_config.model_config_from_hf(legacy) == cfg


def test_unsupported_configs_are_refused():
    hf = _hf_dict("llama")
    for change, reason in ((dict(hidden_act="gelu"), "hidden_act"),
                           (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "yarn"),
                           (dict(attention_bias=True), "attention_bias"),
                           (dict(model_type="mistral"), "unknown architecture")):
        with pytest.raises(UsageError, match=reason):
            hf_config.model_config_from_hf({**hf, **change})


def test_model_config_file(tmp_path):
    save_model_config(tmp_path, CFG)
    assert load_model_config(tmp_path) == CFG
    (tmp_path / "model_config.json").write_text('{"hidden_sizes": 3}')
    with pytest.raises(UsageError, match="unknown ModelConfig field"):
        load_model_config(tmp_path)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("100KB") == 100_000 and parse_size(123) == 123
    with pytest.raises(UsageError):
        parse_size("lots")
