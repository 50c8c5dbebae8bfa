"""The only part of megatron-rlpt that touches Megatron's parallel state.

- `cpu_compat`: run Megatron-Core on machines without CUDA (tests, laptops).
- `distributed`: process groups from torchrun / Slurm env; TP × PP × DP layout.
- `model`: `ModelConfig` and the GPTModel builder (Llama 3.x, Qwen2.5, Qwen3).
- `optim`: DDP wrapping, the Megatron (distributed) optimizer, LR schedules.
- `step`: one training step through `forward_backward_func`; the next-token loss.
- `checkpoint`: atomic dist-checkpoint save/load with trainer state and RNG.
"""
