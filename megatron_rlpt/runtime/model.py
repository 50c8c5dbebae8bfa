"""Model config and builder: Megatron-Core `GPTModel` for the Llama 3.x / Qwen2.5 / Qwen3 family.

All three are decoder-only transformers with RMSNorm, SwiGLU MLPs, rotary embeddings and grouped
query attention; they differ in QKV bias (Qwen2.5), QK-norm (Qwen3), head size (Qwen3 sets it
apart from hidden/heads), llama3 rope scaling and tied embeddings. One `ModelConfig` covers them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from megatron_rlpt.errors import UsageError

ARCHITECTURES = ("llama", "qwen2", "qwen3")


@dataclass
class RopeScaling:
    """Llama 3.x frequency-dependent rope scaling."""

    factor: float = 8.0
    """Divisor of the low frequencies."""
    low_freq_factor: float = 1.0
    """Wavelengths above original_max_position_embeddings / low_freq_factor are fully scaled."""
    high_freq_factor: float = 4.0
    """Wavelengths below original_max_position_embeddings / high_freq_factor are unchanged."""
    original_max_position_embeddings: int = 8192
    """Context length the rotary frequencies were trained for before scaling."""


@dataclass
class ModelConfig:
    """Architecture of the policy model (field names follow Megatron's TransformerConfig)."""

    architecture: str = "llama"
    """`llama` (Llama 3.x), `qwen2` (Qwen2.5: QKV bias) or `qwen3` (Qwen3: QK-norm)."""
    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 128
    """Inner width of the SwiGLU MLP (per branch)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention; None means one per query head."""
    kv_channels: int | None = None
    """Head dimension; None means hidden_size / num_attention_heads."""
    vocab_size: int = 8192
    """Tokenizer vocabulary size (before padding)."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding rows to a multiple of this times the TP size (padding is trimmed on export)."""
    max_position_embeddings: int = 2048
    """Longest sequence (prompt + response) the model is run on."""
    rotary_base: float = 10000.0
    """Rotary embedding base (rope theta)."""
    rope_scaling: RopeScaling | None = None
    """Llama 3.x rope scaling; None disables it."""
    norm_epsilon: float = 1e-5
    """RMSNorm epsilon."""
    add_qkv_bias: bool = False
    """Bias on the query/key/value projection (Qwen2.5)."""
    qk_layernorm: bool = False
    """RMSNorm on each query and key head (Qwen3)."""
    tie_embeddings: bool = False
    """Share the input embedding with the output layer."""
    init_method_std: float = 0.02
    """Standard deviation of the random initialisation."""
    hidden_dropout: float = 0.0
    """Dropout after attention and MLP. RL keeps it 0 so recomputed log-probs match rollouts."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    params_dtype: str = "fp32"
    """`fp32` or `bf16` parameters and compute (bf16 keeps fp32 main weights in the optimizer)."""
    fp8: str | None = None
    """`e4m3` or `hybrid` FP8 through Transformer Engine (GPU with TE only); None disables FP8."""
    transformer_impl: str = "auto"
    """`local` (pure Megatron-Core layers), `transformer_engine`, or `auto` (TE when importable)."""
    recompute_granularity: str | None = None
    """Activation recompute: `full` (recompute every layer in backward), `selective` (only the
    attention core) or None (keep activations)."""
    bias_activation_fusion: bool = True
    """Fused SwiGLU (Megatron's compiled kernel) on CUDA; always off on the CPU."""
    masked_softmax_fusion: bool = True
    """Fused scaled, masked softmax in attention on CUDA, where its kernel
    (`scaled_masked_softmax_cuda`) is installed and the shapes allow it (local spec; TE's
    attention has its own); always off on the CPU."""
    bias_dropout_fusion: bool = True
    """Fused bias-dropout-add after attention and MLP on CUDA; always off on the CPU."""
    apply_rope_fusion: bool = True
    """Fused rotary embedding on CUDA when Transformer Engine provides the kernel; always off on
    the CPU."""
    gradient_accumulation_fusion: bool = True
    """Accumulate weight gradients straight into the fp32 main grads in the weight-gradient GEMM,
    on CUDA when `fused_weight_gradient_mlp_cuda` (APEX) is installed; always off on the CPU."""

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    def validate(self, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> None:
        """Raise UsageError if the architecture cannot be laid out at this TP/PP."""
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"unknown architecture {self.architecture!r}; use one of {ARCHITECTURES}")
        groups = self.num_query_groups or self.num_attention_heads
        checks = [
            (self.num_attention_heads % groups == 0,
             f"num_attention_heads {self.num_attention_heads} not divisible by num_query_groups {groups}"),
            (self.num_attention_heads % tensor_parallel == 0,
             f"num_attention_heads {self.num_attention_heads} not divisible by TP {tensor_parallel}"),
            (groups % tensor_parallel == 0,
             f"num_query_groups {groups} not divisible by TP {tensor_parallel}"),
            (self.ffn_hidden_size % tensor_parallel == 0,
             f"ffn_hidden_size {self.ffn_hidden_size} not divisible by TP {tensor_parallel}"),
            (self.num_layers % pipeline_parallel == 0,
             f"num_layers {self.num_layers} not divisible by PP {pipeline_parallel}"),
        ]
        for ok, reason in checks:
            if not ok:
                raise UsageError(reason)
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise UsageError("hidden_size must be divisible by num_attention_heads (or set kv_channels)")
        self.validate_runtime()

    def validate_runtime(self) -> None:
        """Raise UsageError for runtime settings (dtype, FP8, layer implementation, recompute)
        that cannot work here. They do not depend on the architecture, so a training config's
        own choices are checked before any checkpoint is read."""
        checks = [
            (self.params_dtype in ("fp32", "bf16"), f"params_dtype must be fp32 or bf16, got {self.params_dtype!r}"),
            (self.fp8 in (None, "e4m3", "hybrid"), f"fp8 must be e4m3, hybrid or null, got {self.fp8!r}"),
            (self.fp8 is None or self.transformer_impl != "local",
             "fp8 needs transformer_impl auto or transformer_engine (the local spec has no FP8)"),
            (self.recompute_granularity in (None, "full", "selective"),
             f"recompute_granularity must be full, selective or null, got {self.recompute_granularity!r}"),
            (self.transformer_impl in ("auto", "local", "transformer_engine"),
             f"transformer_impl must be auto, local or transformer_engine, got {self.transformer_impl!r}"),
        ]
        for ok, reason in checks:
            if not ok:
                raise UsageError(reason)
        if self.fp8 is not None and not has_transformer_engine():
            raise UsageError(
                f"fp8={self.fp8!r} needs Transformer Engine; install megatron-rlpt[gpu] on a GPU "
                "machine or set fp8: null"
            )

    def padded_vocab_size(self, tensor_parallel: int = 1) -> int:
        """Vocabulary rounded up so that every TP shard has the same number of rows."""
        multiple = self.make_vocab_size_divisible_by * tensor_parallel
        return -(-self.vocab_size // multiple) * multiple

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.params_dtype == "bf16" else torch.float32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def has_transformer_engine() -> bool:
    """Whether Transformer Engine's PyTorch extension imports (it needs CUDA)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # an ImportError, or a failed CUDA extension load
        return False
    return True


FUSIONS = ("bias_activation_fusion", "masked_softmax_fusion", "bias_dropout_fusion",
           "apply_rope_fusion", "gradient_accumulation_fusion")


def fusion_kernels_available() -> dict[str, bool]:
    """Which of Megatron's fusions can run here: each needs CUDA, some an extra kernel module.

    Asked the way Megatron-Core itself decides, so that switching one on never fails its config
    validation or a layer's constructor.
    """
    import importlib.util

    if not torch.cuda.is_available():
        return dict.fromkeys(FUSIONS, False)
    from megatron.core.models.common.embeddings import rope_utils

    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return {
        "bias_activation_fusion": True,  # Megatron's own compiled kernels
        "bias_dropout_fusion": True,
        "masked_softmax_fusion": has("scaled_masked_softmax_cuda"),
        # TransformerConfig refuses rope fusion when neither fused function imported (TE).
        "apply_rope_fusion": (rope_utils.fused_apply_rotary_pos_emb is not None
                              or rope_utils.fused_apply_rotary_pos_emb_thd is not None),
        # The output layer is Megatron's ColumnParallelLinear, which needs APEX's kernel
        # (with TE or not).
        "gradient_accumulation_fusion": has("fused_weight_gradient_mlp_cuda"),
    }


def active_fusions(cfg: ModelConfig) -> dict[str, bool]:
    """The fusions a model built from `cfg` uses here: switched on and available."""
    available = fusion_kernels_available()
    return {name: bool(getattr(cfg, name)) and available[name] for name in FUSIONS}


def transformer_config(cfg: ModelConfig, parallel: Any = None) -> Any:
    """Megatron `TransformerConfig` for `cfg` under the given ParallelConfig."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    tp = getattr(parallel, "tensor_parallel", 1)
    pp = getattr(parallel, "pipeline_parallel", 1)
    kwargs: dict[str, Any] = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.add_qkv_bias,
        qk_layernorm=cfg.qk_layernorm,
        init_method_std=cfg.init_method_std,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        attention_softmax_in_fp32=True,
        params_dtype=cfg.torch_dtype,
        pipeline_dtype=cfg.torch_dtype,
        bf16=cfg.params_dtype == "bf16",
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=getattr(parallel, "virtual_pipeline", None),
        context_parallel_size=getattr(parallel, "context_parallel", 1),
        sequence_parallel=getattr(parallel, "sequence_parallel", False),
        # Megatron-LM's fusions on CUDA where their kernels exist (each has a switch); the
        # unfused paths on the CPU. The persistent kernel is LayerNorm's, and these are RMSNorm.
        **active_fusions(cfg),
        persist_layer_norm=False,
        # Losses are token sums; Megatron divides by the global token count.
        calculate_per_token_loss=True,
        # RL micro-batches have varying lengths.
        variable_seq_lengths=True,
        moe_token_dispatcher_type="alltoall",  # the default one refuses variable lengths
        # Initialise the full matrix and split it, so the weights do not depend on TP.
        use_cpu_initialization=True,
    )
    if cfg.fp8 is not None:
        kwargs.update(fp8=cfg.fp8, fp8_recipe="delayed")
    if cfg.recompute_granularity == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform",
                      recompute_num_layers=1)
    elif cfg.recompute_granularity == "selective":
        kwargs.update(recompute_granularity="selective")
    return TransformerConfig(**kwargs)


def _use_te(cfg: ModelConfig) -> bool:
    if cfg.transformer_impl == "local":
        return False
    if cfg.transformer_impl == "transformer_engine" or cfg.fp8 is not None:
        if not has_transformer_engine():
            raise UsageError("transformer_impl=transformer_engine needs Transformer Engine (GPU)")
        return True
    return torch.cuda.is_available() and has_transformer_engine()


def layer_spec(cfg: ModelConfig) -> Any:
    """The layer spec: Transformer Engine's when used, else Megatron-Core's local modules."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if _use_te(cfg):
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=cfg.qk_layernorm)
    return specs.get_gpt_layer_local_spec(qk_layernorm=cfg.qk_layernorm, normalization="RMSNorm")


@dataclass
class BuiltModel:
    """The model chunks of this rank plus what was used to build them."""

    chunks: list[Any]
    """GPTModel chunks (one unless virtual pipelining); wrapped in Float16Module for bf16."""
    config: Any
    """The Megatron TransformerConfig."""
    padded_vocab_size: int = 0
    """Embedding rows after padding."""


def build_model(cfg: ModelConfig, parallel: Any = None) -> BuiltModel:
    """Build this rank's GPTModel chunk(s) for the current parallel state."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    tp = getattr(parallel, "tensor_parallel", 1)
    pp = getattr(parallel, "pipeline_parallel", 1)
    cfg.validate(tp, pp)
    tconfig = transformer_config(cfg, parallel)
    spec = layer_spec(cfg)
    vocab = cfg.padded_vocab_size(tp)
    vpp = getattr(parallel, "virtual_pipeline", None)
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        model = GPTModel(
            config=tconfig,
            transformer_layer_spec=spec,
            vocab_size=vocab,
            max_sequence_length=cfg.max_position_embeddings,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=cfg.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(cfg.rotary_base),
            rope_scaling=cfg.rope_scaling is not None,
            rope_scaling_factor=cfg.rope_scaling.factor if cfg.rope_scaling else 8.0,
            vp_stage=stage,
        )
        if cfg.rope_scaling is not None:
            rope = model.rotary_pos_emb
            dim = rope.inv_freq.numel() * 2
            steps = torch.arange(0, dim, 2, dtype=torch.float32, device=rope.inv_freq.device)
            base_inv_freq = 1.0 / (cfg.rotary_base ** (steps / dim))
            s = cfg.rope_scaling
            rope.inv_freq = rope._apply_scaling(
                base_inv_freq, factor=s.factor, low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
        if torch.cuda.is_available():
            # Initialised on the CPU (so the weights do not depend on TP), run on this GPU. The
            # rotary frequencies are a plain attribute, which Module.cuda() does not move.
            model.cuda(torch.cuda.current_device())
            rope = getattr(model, "rotary_pos_emb", None)
            if rope is not None:
                rope.inv_freq = rope.inv_freq.cuda(torch.cuda.current_device())
        if cfg.params_dtype == "bf16":
            # Casts inputs to bf16 and the last stage's outputs back to fp32.
            model = Float16Module(tconfig, model)
        chunks.append(model)
    return BuiltModel(chunks=chunks, config=tconfig, padded_vocab_size=vocab)
