"""Tests of the RLPT objective: tasks, judges, GRPO, log-probs and the loss."""
