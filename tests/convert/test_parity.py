"""HF -> Megatron -> HF: logit parity at TP 1/2 and PP 1/2, the weight push, exact round trips.

Tiny random models of every architecture (see fixtures.ARCHS) go through `rlpt convert`; the
Megatron model runs under the real torchrun over gloo on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.convert.fixtures import ARCHS, fixed_tokens, hf_logits, hf_state

pytestmark = pytest.mark.multirank
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(converted) -> dict:
    base = converted["base"]
    return {arch: {"logits": hf_logits(base / f"hf-{arch}", fixed_tokens(spec["vocab_size"])),
                   "state": hf_state(base / f"hf-{arch}")}
            for arch, spec in ARCHS.items()}


def test_reference_is_sensitive(converted, reference):
    """The models make mapping slips visible: logits of order one, and llama3 rope scaling
    changes them (so parity below also checks the scaled frequencies)."""
    from transformers import AutoModelForCausalLM

    for ref in reference.values():
        assert ref["logits"].std() > 0.5
    model = AutoModelForCausalLM.from_pretrained(converted["base"] / "hf-llama",
                                                 attn_implementation="eager",
                                                 rope_parameters={"rope_type": "default",
                                                                  "rope_theta": 500000.0})
    with torch.no_grad():
        unscaled = model(input_ids=fixed_tokens(ARCHS["llama"]["vocab_size"])).logits
    assert (unscaled - reference["llama"]["logits"]).abs().max() > 1e-2


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_megatron_logits_match_hf(launches, reference, layout, arch):
    ranks = launches[layout]
    with_logits = [r[arch]["logits"] for r in ranks if r[arch]["logits"] is not None]
    # TP ranks both hold the gathered logits; under PP only the last stage has them.
    assert len(with_logits) == (1 if layout == "pp2" else len(ranks))
    if layout == "pp2":
        assert ranks[0][arch]["logits"] is None
    expected = reference[arch]["logits"]
    for logits in with_logits:
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_weight_push_yields_the_hf_tensors(launches, reference, layout, arch):
    """hf_named_tensors on a live model gives back every original tensor exactly, on each rank."""
    expected = reference[arch]["state"]
    for rank in launches[layout]:
        pushed = rank[arch]["push"]
        assert sorted(pushed) == sorted(expected)
        for name, tensor in expected.items():
            assert pushed[name].dtype == tensor.dtype and torch.equal(pushed[name], tensor), name
    if layout == "pp2":  # without gathering, each stage yields its own layers only
        first, last = (set(r[arch]["push_local"]) for r in launches[layout])
        assert not first & last and first | last == set(expected)
        assert "model.embed_tokens.weight" in first and "model.norm.weight" in last
        assert all(".layers.0." in n for n in first if "layers" in n)


@pytest.mark.parametrize("tag", ["tp1", "tp2"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_is_identical(converted, reference, tag, arch):
    """HF -> Megatron -> HF gives back every tensor bit for bit; the output loads unchanged."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = converted["base"]
    src, out = base / f"hf-{arch}", base / f"rt-{tag}-{arch}"
    state = hf_state(out)
    expected = reference[arch]["state"]
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert sorted(index["weight_map"]) == sorted(expected)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((src / "generation_config.json").read_text())

    a, b = AutoConfig.from_pretrained(src), AutoConfig.from_pretrained(out)
    assert b.architectures == a.architectures
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "tie_word_embeddings", "rope_parameters", "max_position_embeddings",
                "bos_token_id", "eos_token_id", "dtype"):
        assert getattr(b, key, None) == getattr(a, key, None), key
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    text = "The quick brown fox"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(src)(text)["input_ids"]


def test_bf16_import_export_and_push(converted, reference):
    """bf16 parameters: the checkpoint, the export and the weight push hold the bf16 weights."""
    from transformers import AutoConfig

    base = converted["base"]
    expected = {k: v.to(torch.bfloat16) for k, v in reference["qwen3"]["state"].items()}
    config = json.loads((base / "mg-bf16-qwen3" / "model_config.json").read_text())
    assert config["params_dtype"] == "bf16"
    pushed = converted["tp1"]["bf16"]["push"]
    exported = hf_state(base / "rt-bf16-qwen3")
    for got in (pushed, exported):
        assert sorted(got) == sorted(expected)
        for name, tensor in expected.items():
            assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor), name
    assert AutoConfig.from_pretrained(base / "rt-bf16-qwen3").dtype == torch.bfloat16
