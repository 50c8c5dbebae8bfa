"""Training stages: what one optimizer step does for `pretrain`, `sft`, `rlpt` and `rlvr`."""
