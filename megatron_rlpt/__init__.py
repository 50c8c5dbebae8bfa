"""megatron-rlpt: reinforcement learning on pre-training data (RLPT) on Megatron-Core."""

__version__ = "0.1.0"
