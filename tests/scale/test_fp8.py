"""`model.fp8: e4m3 | hybrid`: Megatron's FP8 recipe and Transformer Engine's layer spec on GPUs
with TE; a one-line error at config time everywhere else."""

from __future__ import annotations

import pytest

from megatron_rlpt.cli import main as rlpt
from megatron_rlpt.errors import UsageError
from megatron_rlpt.plan import ClusterSpec, make_plan
from megatron_rlpt.runtime.model import ModelConfig, has_transformer_engine, layer_spec
from tests.multirank import REPO_ROOT

QWEN3_8B = str(REPO_ROOT / "examples" / "rlpt_qwen3_8b.yaml")
no_te = pytest.mark.skipif(has_transformer_engine(), reason="Transformer Engine is installed")


@pytest.mark.parametrize("fp8", ["e4m3", "hybrid"])
def test_fp8_reaches_megatron_with_the_delayed_recipe(fp8: str):
    from megatron_rlpt.runtime.model import transformer_config

    tconfig = transformer_config(ModelConfig(fp8=fp8, params_dtype="bf16"))
    assert tconfig.fp8 == fp8 and tconfig.fp8_recipe == "delayed"
    assert transformer_config(ModelConfig()).fp8 is None


@no_te
@pytest.mark.parametrize("fp8", ["e4m3", "hybrid"])
def test_fp8_without_transformer_engine_fails_at_config_time(fp8: str):
    cfg = ModelConfig(fp8=fp8, params_dtype="bf16")
    with pytest.raises(UsageError, match="needs Transformer Engine"):
        cfg.validate()
    with pytest.raises(UsageError, match="Transformer Engine"):
        layer_spec(cfg)


def test_unknown_fp8_format_is_refused():
    with pytest.raises(UsageError, match="fp8 must be e4m3, hybrid or null"):
        ModelConfig(fp8="e5m2").validate()


@no_te
def test_rlpt_train_with_fp8_exits_with_one_line(capsys):
    # Refused while the config is validated: before any process group or model exists.
    assert rlpt(["train", "--config", QWEN3_8B, "model.fp8=e4m3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("rlpt train: error:") and "Transformer Engine" in err


def test_plan_accepts_fp8_configs_on_a_cpu_machine():
    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.utils.config import load_config

    cfg = load_config(TrainConfig, QWEN3_8B, ["model.fp8=hybrid"])
    plan = make_plan(cfg, ClusterSpec(nodes=16, gpus_per_node=8))
    assert plan.feasible and any("fp8" in n for n in plan.notes)
    local = load_config(TrainConfig, QWEN3_8B, ["model.fp8=e4m3", "model.transformer_impl=local"])
    assert any("transformer_impl" in e for e in make_plan(local, ClusterSpec(1, 8)).errors)


def test_fp8_with_the_local_layer_spec_is_refused():
    # The local spec would silently train without FP8.
    with pytest.raises(UsageError, match="transformer_impl"):
        ModelConfig(fp8="e4m3", params_dtype="bf16", transformer_impl="local").validate()
