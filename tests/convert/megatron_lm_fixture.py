"""A checkpoint as Megatron-LM's training loop writes it (`--ckpt-format torch_dist`), built with
megatron-core itself: a GPTModel of the Llama kind (RMSNorm, SwiGLU, RoPE θ 5e5, GQA, untied, no
bias), its `sharded_state_dict()` saved under `model` with `dist_checkpointing.save` beside the
common state Megatron-LM adds (`args` as an argparse.Namespace of Megatron-LM's argument names,
`checkpoint_version` 3.0, `iteration`), the tracker file naming the iteration, no COMPLETE marker
and no model_config.json. Also records the model's own forward logits.

Run as `python -m tests.convert.megatron_lm_fixture OUT_ROOT TOKENIZER_DIR LOGITS_FILE`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ITERATION = 7
VOCAB_PADDED = 384  # Megatron-LM pads the tokenizer's vocabulary to a multiple of 128 (x TP=1)
SEQ = 12


def megatron_lm_args(tokenizer_dir: str) -> argparse.Namespace:
    """The arguments Megatron-LM would save for this model (its names and value types)."""
    from megatron.core.enums import ModelType
    from megatron.core.transformer.enums import AttnBackend

    return argparse.Namespace(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        group_query_attention=True, num_query_groups=2, kv_channels=16,
        max_position_embeddings=128, seq_length=64, position_embedding_type="rope",
        rotary_base=500000, rotary_percent=1.0, rotary_interleaved=False, use_rope_scaling=False,
        rope_scaling_factor=8.0, normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True,
        squared_relu=False, add_bias_linear=False, add_qkv_bias=False, qk_layernorm=False,
        untie_embeddings_and_output_weights=True, num_experts=None, multi_latent_attention=False,
        mtp_num_layers=None, apply_layernorm_1p=False, window_size=None,
        make_vocab_size_divisible_by=128, padded_vocab_size=VOCAB_PADDED,
        tokenizer_type="HuggingFaceTokenizer", tokenizer_model=tokenizer_dir,
        bf16=False, fp16=False, params_dtype=torch.float32, init_method_std=0.1,
        hidden_dropout=0.1, attention_dropout=0.1, attention_backend=AttnBackend.auto,
        model_type=ModelType.encoder_or_decoder, transformer_impl="local",
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, ckpt_format="torch_dist",
        iteration=ITERATION, consumed_train_samples=56, train_iters=100, lr=3e-4,
    )


def build_gpt(args: argparse.Namespace):
    """megatron-core's GPTModel for `args`, as Megatron-LM's pretrain_gpt builds it (local spec)."""
    import torch.nn.functional as F
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size, num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups, kv_channels=args.kv_channels,
        normalization=args.normalization, layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        init_method_std=args.init_method_std, hidden_dropout=0.0, attention_dropout=0.0,
        use_cpu_initialization=True, params_dtype=torch.float32,
    )
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=args.padded_vocab_size, max_sequence_length=args.max_position_embeddings,
        share_embeddings_and_output_weights=False, position_embedding_type="rope",
        rotary_base=args.rotary_base,
    )


def main(out_root: str, tokenizer_dir: str, logits_file: str) -> None:
    from megatron.core import dist_checkpointing, tensor_parallel

    from megatron_rlpt.convert.dist_io import single_process

    root = Path(out_root)
    args = megatron_lm_args(tokenizer_dir)
    with single_process(seed=3):
        tensor_parallel.model_parallel_cuda_manual_seed(3)
        model = build_gpt(args).eval()
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, 250, (2, SEQ), generator=gen)
        with torch.no_grad():
            logits = model(input_ids=tokens, position_ids=torch.arange(SEQ).expand(2, -1),
                           attention_mask=None)
        ckpt = root / f"iter_{ITERATION:07d}"
        ckpt.mkdir(parents=True)
        state = {"args": args, "checkpoint_version": 3.0, "iteration": ITERATION,
                 "num_floating_point_operations_so_far": 1.5e9,
                 "opt_param_scheduler": {"max_lr": 3e-4, "num_steps": 56},
                 "model": model.sharded_state_dict()}
        dist_checkpointing.save(state, str(ckpt))
    (root / "latest_checkpointed_iteration.txt").write_text(str(ITERATION))
    torch.save({"tokens": tokens, "logits": logits.detach()}, logits_file)


if __name__ == "__main__":
    main(*sys.argv[1:4])
