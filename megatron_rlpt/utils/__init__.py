"""Small helpers shared by every part of megatron-rlpt."""
