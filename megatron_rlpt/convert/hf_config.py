"""Hugging Face `config.json` ⇄ `ModelConfig`, for Llama 3.x, Qwen2.5 and Qwen3.

Reads both the transformers 4.x layout (`rope_theta`, `rope_scaling`, `torch_dtype`) and the 5.x
layout (`rope_parameters`, `dtype`); writes both, so either generation of transformers and vLLM
reads the exported model the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig, RopeScaling

# model_type -> (ModelConfig.architecture, HF class)
MODEL_TYPES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}
HF_ARCHITECTURES = {arch: cls for arch, cls in MODEL_TYPES.values()}
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "bf16"}
_HF_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# Keys written from ModelConfig; a template's values for them are replaced.
_ARCH_KEYS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps",
    "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "hidden_act",
    "attention_bias", "mlp_bias", "torch_dtype", "dtype", "use_sliding_window", "layer_types",
)


def _model_type(hf: dict[str, Any]) -> str:
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        archs = hf.get("architectures") or []
        raise UsageError(
            f"unknown architecture model_type={model_type!r} {archs}; supported: "
            + ", ".join(f"{t} ({c})" for t, (_, c) in MODEL_TYPES.items())
        )
    return model_type


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_scaling") or {})
    if isinstance(hf.get("rope_parameters"), dict):
        params = {**hf["rope_parameters"], **params}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None
    if rope_type != "llama3":
        raise UsageError(f"rope scaling type {rope_type!r} is not supported (only llama3)")
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise UsageError(f"llama3 rope scaling lacks {err.args[0]!r}") from None
    return float(theta), scaling


def hf_dtype(hf: dict[str, Any]) -> str | None:
    """The checkpoint dtype named in config.json (`float32`, `bfloat16`, ...), if any."""
    return hf.get("dtype") or hf.get("torch_dtype")


def model_config_from_hf(hf: dict[str, Any], params_dtype: str | None = None) -> ModelConfig:
    """ModelConfig for a Hugging Face config dict; UsageError if it cannot be represented.

    `params_dtype` (`fp32`/`bf16`) defaults to the checkpoint's dtype (fp16 becomes bf16).
    """
    model_type = _model_type(hf)
    arch = MODEL_TYPES[model_type][0]
    if hf.get("hidden_act", "silu") != "silu":
        raise UsageError(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("mlp_bias"):
        raise UsageError("mlp_bias=true is not supported")
    if arch in ("llama", "qwen3") and hf.get("attention_bias"):
        raise UsageError(f"attention_bias=true is not supported for {model_type}")
    if hf.get("use_sliding_window"):
        raise UsageError("use_sliding_window=true is not supported")
    try:
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        layers, ffn = int(hf["num_hidden_layers"]), int(hf["intermediate_size"])
        vocab = int(hf["vocab_size"])
    except KeyError as err:
        raise UsageError(f"config.json lacks {err.args[0]!r}") from None
    groups = int(hf.get("num_key_value_heads") or heads)
    head_dim = hf.get("head_dim")
    kv_channels = int(head_dim) if head_dim and int(head_dim) != hidden // heads else None
    theta, scaling = _rope(hf)
    if params_dtype is None:
        params_dtype = _DTYPES.get(str(hf_dtype(hf) or "float32").replace("torch.", ""), "fp32")
    return ModelConfig(
        architecture=arch,
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=kv_channels,
        vocab_size=vocab,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        rotary_base=theta,
        rope_scaling=scaling,
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        add_qkv_bias=arch == "qwen2",
        qk_layernorm=arch == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
        params_dtype=params_dtype,
        transformer_impl="local",
    )


def hf_config_from_model(cfg: ModelConfig, template: dict[str, Any] | None = None,
                         dtype: str | None = None) -> dict[str, Any]:
    """config.json for `cfg`, keeping a template's other keys (token ids, context length ...).

    `dtype` is the dtype of the written weights (default: the model's). The vocabulary is the
    unpadded `cfg.vocab_size`.
    """
    cfg.validate()
    model_type = cfg.architecture
    out = {k: v for k, v in (template or {}).items() if k not in _ARCH_KEYS}
    if template and template.get("model_type") != model_type:
        out = {}  # a template of another architecture only contributes nothing
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    dtype = dtype or _HF_DTYPES[cfg.params_dtype]
    rope: dict[str, Any] = {"rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    out.update(
        architectures=[HF_ARCHITECTURES[cfg.architecture]],
        model_type=model_type,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups or cfg.num_attention_heads,
        vocab_size=cfg.vocab_size,
        rms_norm_eps=cfg.norm_epsilon,
        hidden_act="silu",
        tie_word_embeddings=cfg.tie_embeddings,
        # transformers 4.x reads these two ...
        rope_theta=cfg.rotary_base,
        rope_scaling=rope if cfg.rope_scaling is not None else None,
        # ... and 5.x this one.
        rope_parameters={**rope, "rope_theta": cfg.rotary_base},
        torch_dtype=dtype,
        dtype=dtype,
    )
    out.setdefault("max_position_embeddings", cfg.max_position_embeddings)
    out.setdefault("initializer_range", cfg.init_method_std)
    out.setdefault("use_cache", True)
    if model_type in ("llama", "qwen3"):
        out["head_dim"] = head_dim  # Qwen2 derives it from hidden_size / heads
        out["attention_bias"] = False
    if model_type == "llama":
        out["mlp_bias"] = False
    if model_type in ("qwen2", "qwen3"):
        out["use_sliding_window"] = False
    return out


def check_layout(cfg: ModelConfig, tensor_parallel: int, pipeline_parallel: int) -> None:
    """UsageError unless the model can be laid out at this TP/PP (heads, groups, FFN, layers)."""
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise UsageError("--tp and --pp must be >= 1")
    cfg.validate(tensor_parallel, pipeline_parallel)
