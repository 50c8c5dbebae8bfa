"""The `rlpt train` config tree: documented, loadable from YAML, strict about bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.errors import UsageError
from megatron_rlpt.utils.config import load_config, to_dict
from tests.multirank import REPO_ROOT


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen", REPO_ROOT / "tools" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_field_is_documented_and_docs_are_current():
    gen = _gen_docs()
    undocumented = [name for name, _, _, doc in gen.rows(TrainConfig) if not doc]
    assert not undocumented
    assert (REPO_ROOT / "docs" / "config.md").read_text() == gen.render(), \
        "docs/config.md is stale: run python tools/gen_config_docs.py"


def test_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {stage: sft, steps: 5}\noptim: {lr: 1e-5}\n"
                    "model: {rope_scaling: {factor: 32.0}}\n")
    cfg = load_config(TrainConfig, path, ["optim.lr=2e-6",
                                          "judge.endpoints=[http://a:1, http://b:2]"])
    assert cfg.run.stage == "sft" and cfg.run.steps == 5
    assert cfg.optim.lr == 2e-6
    assert cfg.judge.endpoints == ["http://a:1", "http://b:2"]
    assert cfg.model.rope_scaling.factor == 32.0
    assert to_dict(load_config(TrainConfig, None, [])) == to_dict(TrainConfig())


@pytest.mark.parametrize("override,message", [
    (["optim.lrr=1"], "unknown config key"),
    (["run.steps=many"], "expected int"),
    (["run.stage"], "key=value"),
    (["judge.kind=oracle"], "not one of"),
])
def test_bad_input_is_one_clear_error(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(TrainConfig, None, override)


def test_validate_rejects_unusable_settings():
    cfg = load_config(TrainConfig, None, ["data.path=x", "run.stage=distill"])
    with pytest.raises(UsageError, match="run.stage"):
        cfg.validate()
    cfg = load_config(TrainConfig, None, ["data.path=x", "parallel.pipeline_parallel=2",
                                          "model.num_layers=4"])
    with pytest.raises(UsageError, match="pipeline_parallel=1"):
        cfg.validate()
