"""The RL algorithm: GRPO advantages and dynamic sampling, chunked vocab-parallel log-probs and
the policy-gradient loss in Megatron's `loss_func` contract."""

from megatron_rlpt.algo.grpo import GroupAdvantages, GRPOConfig, group_advantages
from megatron_rlpt.algo.logprobs import (
    fused_output_logprobs,
    output_layer_bypass,
    vocab_parallel_logprobs,
)
from megatron_rlpt.algo.loss import (
    LossConfig,
    attach_global_denominators,
    make_loss_func,
    policy_loss,
)

__all__ = [
    "GRPOConfig",
    "GroupAdvantages",
    "LossConfig",
    "attach_global_denominators",
    "fused_output_logprobs",
    "group_advantages",
    "make_loss_func",
    "output_layer_bypass",
    "policy_loss",
    "vocab_parallel_logprobs",
]
