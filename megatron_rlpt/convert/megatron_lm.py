"""Checkpoints written by Megatron-LM's training loop (`--ckpt-format torch_dist`).

Layout, as Megatron-LM writes it under its `--save` directory:

    latest_checkpointed_iteration.txt    the newest iteration, or `release`
    iter_0000100/ (or release/)          a dist-checkpoint: metadata.json, .metadata, *.distcp
        common.pt                        non-sharded state: `args` (argparse.Namespace),
                                         `checkpoint_version`, `iteration`, scheduler, ...

There is no COMPLETE marker and no model_config.json: the architecture is read from the saved
`args`, mapped to our ModelConfig, and anything we cannot express (MoE, MLA, LayerNorm, GeLU,
learned absolute positions, ...) is refused naming the argument. The model tensors sit under the
same dist-checkpoint keys as ours (`model` or `model0..N` only name the chunks in the saved dict),
so export and `run.init_from` read them like our own.

`common.pt` is a pickle. It is only ever loaded with `torch.load(weights_only=True)` and an
explicit allow-list: `argparse.Namespace` and the enum classes of megatron-core that Megatron-LM
stores in its arguments, imported from the installed megatron-core. Anything else is refused;
no code from a checkpoint runs.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import importlib
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig, RopeScaling

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RELEASE_DIR = "release"
COMMON_FILE = "common.pt"
LEGACY_FILE = "model_optim_rng.pt"

# Modules whose enum classes Megatron-LM puts into its saved arguments (attention_backend,
# model_type, cuda graph scopes, fp8/fp4 recipes). Only enum classes are taken from them.
_ENUM_MODULES = ("megatron.core.enums", "megatron.core.transformer.enums")

LEGACY_ADVICE = (
    "convert it to torch_dist with Megatron-LM first: launch its training script with the model's "
    "arguments and `--load DIR --ckpt-format torch --ckpt-convert-format torch_dist "
    "--ckpt-convert-save OUT`, then pass OUT/torch_dist")


def is_dist_checkpoint(path: Path) -> bool:
    """Whether `path` is one dist-checkpoint directory (metadata.json of megatron-core)."""
    meta = path / "metadata.json"
    if not meta.is_file():
        return False
    try:
        return "sharded_backend" in json.loads(meta.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False


def is_legacy_checkpoint(path: Path) -> bool:
    """Whether `path` is an iteration directory of Megatron-LM's legacy `torch` format."""
    return path.is_dir() and any(path.glob(f"mp_rank_*/{LEGACY_FILE}"))


def refuse_legacy(path: Path) -> None:
    raise UsageError(f"{path} is a Megatron-LM checkpoint in the legacy `torch` format "
                     f"(mp_rank_*/{LEGACY_FILE}), which cannot be read here; {LEGACY_ADVICE}")


def tracked_iteration(root: Path) -> Path | None:
    """The iteration directory Megatron-LM's tracker file names under `root`, or None.

    UsageError when the tracker is unreadable or names a directory that is not a dist-checkpoint.
    """
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text(encoding="utf-8", errors="replace").strip()
    if text == "release":
        path = root / RELEASE_DIR
    elif re.fullmatch(r"\d+", text):
        path = root / f"iter_{int(text):07d}"
    else:
        raise UsageError(f"{tracker} holds {text[:40]!r}, neither an iteration nor `release`")
    if is_legacy_checkpoint(path):
        refuse_legacy(path)
    if not is_dist_checkpoint(path) or not (path / COMMON_FILE).is_file():
        return None
    return path


def _allowed_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace]
    for name in _ENUM_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        allowed += [obj for obj in vars(module).values()
                    if isinstance(obj, type) and issubclass(obj, enum.Enum)
                    and obj.__module__ == name]
    return allowed


@contextlib.contextmanager
def allowed_globals() -> Iterator[None]:
    """torch.load's weights-only allow-list for Megatron-LM's common.pt (megatron-core's own
    dist-checkpoint loads it again, with torch's default weights_only=True)."""
    with torch.serialization.safe_globals(_allowed_globals()):
        yield


def load_common(ckpt_dir: Path) -> dict[str, Any]:
    """common.pt of a dist-checkpoint, weights-only with the allow-list; refused otherwise."""
    path = ckpt_dir / COMMON_FILE
    try:
        with allowed_globals():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} not found (not a Megatron-LM torch_dist checkpoint)") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"the class {found.group(1)}" if found else "content"
        raise UsageError(
            f"{path} holds {what}, which is not on the allow-list for checkpoint metadata "
            "(argparse.Namespace and megatron-core's enums); refusing to unpickle it. If it is "
            "an enum of a newer megatron-core, install the megatron-core the checkpoint was "
            "written with") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UsageError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a state dict")
    return data


def checkpoint_args(ckpt_dir: Path) -> argparse.Namespace:
    """The `args` Megatron-LM saved with a checkpoint."""
    args = load_common(ckpt_dir).get("args")
    if not isinstance(args, argparse.Namespace):
        raise UsageError(f"{ckpt_dir / COMMON_FILE} has no saved Megatron-LM arguments (`args`); "
                         "cannot tell the model's architecture")
    return args


def _get(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


# (argument, test that it is unsupported, what it means) — each refused naming the argument.
_REFUSED: list[tuple[str, Any, str]] = [
    ("num_experts", lambda v: bool(v), "mixture of experts"),
    ("multi_latent_attention", bool, "multi-latent attention"),
    ("mtp_num_layers", lambda v: bool(v), "multi-token prediction layers"),
    ("normalization", lambda v: v not in (None, "RMSNorm"), "only RMSNorm is supported"),
    ("swiglu", lambda v: not v, "only the SwiGLU MLP is supported (GeLU and others are not)"),
    ("squared_relu", bool, "squared-ReLU MLP"),
    ("add_bias_linear", bool, "biases on linear layers; models trained with --disable-bias-linear are"),
    ("apply_layernorm_1p", bool, "zero-centred norm weights"),
    ("layernorm_zero_centered_gamma", bool, "zero-centred norm weights"),
    ("apply_residual_connection_post_layernorm", bool, "post-norm residuals"),
    ("rotary_percent", lambda v: v not in (None, 1.0), "partial rotary embeddings"),
    ("rotary_interleaved", bool, "interleaved rotary embeddings"),
    ("window_size", lambda v: v is not None, "sliding-window attention"),
    ("softmax_type", lambda v: v not in (None, "vanilla"), "non-standard attention softmax"),
    ("qk_l2_norm", bool, "L2-normalised queries and keys"),
    ("attention_output_gate", bool, "gated attention output"),
    ("experimental_attention_variant", lambda v: v is not None, "experimental attention"),
    ("hybrid_override_pattern", lambda v: bool(v), "hybrid (Mamba) layers"),
    ("heterogeneous_layers_config_path", lambda v: bool(v), "heterogeneous layers"),
    ("heterogeneous_layers_config_encoded_json", lambda v: bool(v), "heterogeneous layers"),
]


def model_config_from_args(args: argparse.Namespace, vocab_size: int | None,
                           source: str) -> ModelConfig:
    """Our ModelConfig for Megatron-LM's saved arguments; UsageError naming the first argument
    that describes something we cannot express. `vocab_size` is the tokenizer's (None: the
    saved `vocab_size`, else the padded size)."""
    def refuse(name: str, value: Any, why: str) -> UsageError:
        return UsageError(f"{source}: Megatron-LM argument {name}={value!r} is not supported "
                          f"({why}); megatron-rlpt trains Llama/Qwen-style dense decoders")

    for name, unsupported, why in _REFUSED:
        if hasattr(args, name) and unsupported(getattr(args, name)):
            raise refuse(name, getattr(args, name), why)
    position = _get(args, "position_embedding_type")
    if position is None and _get(args, "use_rotary_position_embeddings"):
        position = "rope"
    if position != "rope":
        raise refuse("position_embedding_type", position,
                     "only rotary position embeddings are supported")
    model_type = _get(args, "model_type")
    if model_type is not None and getattr(model_type, "name", "encoder_or_decoder") \
            != "encoder_or_decoder":
        raise refuse("model_type", model_type, "only decoder-only GPT models")
    for name in ("num_layers", "hidden_size", "num_attention_heads"):
        if not isinstance(_get(args, name), int):
            raise UsageError(f"{source}: saved arguments lack {name}")

    qk_norm, qkv_bias = bool(_get(args, "qk_layernorm")), bool(_get(args, "add_qkv_bias"))
    if qk_norm and qkv_bias:
        raise refuse("add_qkv_bias", True, "QKV bias together with QK-norm")
    heads, hidden = args.num_attention_heads, args.hidden_size
    groups = _get(args, "num_query_groups") if _get(args, "group_query_attention") else None
    kv_channels = _get(args, "kv_channels")
    if kv_channels == hidden // heads and hidden % heads == 0:
        kv_channels = None
    padded = _get(args, "padded_vocab_size")
    vocab = vocab_size or _get(args, "vocab_size") or padded
    if not isinstance(vocab, int):
        raise UsageError(f"{source}: saved arguments give no vocabulary size; pass a tokenizer")
    if isinstance(padded, int) and vocab > padded:
        raise UsageError(f"{source}: the tokenizer has {vocab} tokens but the checkpoint's "
                         f"embedding only {padded} rows (padded_vocab_size)")
    rope_scaling = None
    if _get(args, "use_rope_scaling"):
        rope_scaling = RopeScaling(factor=float(_get(args, "rope_scaling_factor", 8.0)))
    ffn = _get(args, "ffn_hidden_size") or 4 * hidden
    dtype = "bf16" if _get(args, "bf16") or _get(args, "fp16") else "fp32"
    cfg = ModelConfig(
        architecture="qwen3" if qk_norm else "qwen2" if qkv_bias else "llama",
        num_layers=args.num_layers, hidden_size=hidden, ffn_hidden_size=int(ffn),
        num_attention_heads=heads, num_query_groups=groups, kv_channels=kv_channels,
        vocab_size=int(vocab),
        make_vocab_size_divisible_by=int(_get(args, "make_vocab_size_divisible_by", 128)),
        max_position_embeddings=int(_get(args, "max_position_embeddings")
                                    or _get(args, "seq_length") or 2048),
        rotary_base=float(_get(args, "rotary_base", 10000)), rope_scaling=rope_scaling,
        norm_epsilon=float(_get(args, "norm_epsilon", 1e-5)), add_qkv_bias=qkv_bias,
        qk_layernorm=qk_norm, tie_embeddings=not _get(args, "untie_embeddings_and_output_weights"),
        params_dtype=dtype, transformer_impl="local",
    )
    try:
        cfg.validate()
    except UsageError as err:
        raise UsageError(f"{source}: {err}") from None
    return cfg


def tokenizer_dir(args: argparse.Namespace) -> Path | None:
    """args.tokenizer_model when it is a Hugging Face tokenizer directory on this machine."""
    from megatron_rlpt.convert import hf_files

    model = _get(args, "tokenizer_model")
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model)
    return path if path.is_dir() and hf_files.tokenizer_files(path) else None
