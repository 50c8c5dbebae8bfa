"""The example configs: they load, carry the paper's settings and real model shapes, and their
documented TP/PP layouts are valid and fit a node of 8 × 80 GiB GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.plan import ClusterSpec, make_plan, total_params
from megatron_rlpt.utils.config import load_config
from tests.multirank import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
ALL = sorted(EXAMPLES.glob("*.yaml"))
MODELS = ("llama3.2_3b", "qwen3_4b", "qwen3_8b")

# From each model's published Hugging Face config.json.
PUBLISHED = {
    "llama3.2_3b": dict(architecture="llama", num_layers=28, hidden_size=3072, ffn_hidden_size=8192,
                        num_attention_heads=24, num_query_groups=8, head_dim=128,
                        vocab_size=128256, rotary_base=500000.0, norm_epsilon=1e-5,
                        qk_layernorm=False, tie_embeddings=True,
                        rope_scaling=(32.0, 1.0, 4.0, 8192), billions=3.21),
    "qwen3_4b": dict(architecture="qwen3", num_layers=36, hidden_size=2560, ffn_hidden_size=9728,
                     num_attention_heads=32, num_query_groups=8, head_dim=128, vocab_size=151936,
                     rotary_base=1e6, norm_epsilon=1e-6, qk_layernorm=True, tie_embeddings=True,
                     rope_scaling=None, billions=4.02),
    "qwen3_8b": dict(architecture="qwen3", num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                     num_attention_heads=32, num_query_groups=8, head_dim=128, vocab_size=151936,
                     rotary_base=1e6, norm_epsilon=1e-6, qk_layernorm=True, tie_embeddings=False,
                     rope_scaling=None, billions=8.19),
}


def load(path: Path) -> TrainConfig:
    return load_config(TrainConfig, path)


def test_every_model_has_both_stages_and_the_quickstart_exists():
    names = {p.stem for p in ALL}
    assert "quickstart_cpu" in names
    for model in MODELS:
        assert {f"rlpt_{model}", f"sft_{model}", f"rlvr_{model}"} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_loads_and_is_documented(path: Path):
    cfg = load(path)  # unknown keys would raise
    cfg.validate()  # fp8 is off in every example, so this needs no GPU
    readme = (EXAMPLES / "README.md").read_text()
    assert path.name in readme


@pytest.mark.parametrize("model", MODELS)
def test_model_shapes_are_the_published_ones(model: str):
    want = PUBLISHED[model]
    for stage in ("rlpt", "sft", "rlvr"):
        m = load(EXAMPLES / f"{stage}_{model}.yaml").model
        for key in ("architecture", "num_layers", "hidden_size", "ffn_hidden_size",
                    "num_attention_heads", "num_query_groups", "vocab_size", "rotary_base",
                    "norm_epsilon", "qk_layernorm", "tie_embeddings"):
            assert getattr(m, key) == want[key], (stage, key)
        assert (m.kv_channels or m.hidden_size // m.num_attention_heads) == want["head_dim"]
        assert not m.add_qkv_bias and m.params_dtype == "bf16"
        scaling = m.rope_scaling
        got = None if scaling is None else (scaling.factor, scaling.low_freq_factor,
                                            scaling.high_freq_factor,
                                            scaling.original_max_position_embeddings)
        assert got == want["rope_scaling"]
        assert total_params(m) / 1e9 == pytest.approx(want["billions"], abs=0.01)


@pytest.mark.parametrize("model", MODELS)
def test_rlpt_configs_have_the_papers_settings(model: str):
    cfg = load(EXAMPLES / f"rlpt_{model}.yaml")
    assert cfg.run.stage == "rlpt"
    assert cfg.batch.prompts_per_step == 512 and cfg.grpo.group_size == 8
    assert cfg.rollout.temperature == 1.0 and cfg.loss.temperature == 1.0
    assert cfg.optim.lr == 1e-6 and cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
    assert cfg.loss.kl_coef == 0.0
    assert cfg.rollout.max_new_tokens == 8192
    assert cfg.run.init_from == load(EXAMPLES / f"sft_{model}.yaml").run.output_dir


@pytest.mark.parametrize("model", MODELS)
def test_rlvr_configs_have_the_rlpt_hyper_parameters(model: str):
    """The paper's RLVR uses "the same hyperparameters as the next-segment reasoning task"."""
    rlvr, rlpt = load(EXAMPLES / f"rlvr_{model}.yaml"), load(EXAMPLES / f"rlpt_{model}.yaml")
    assert rlvr.run.stage == "rlvr"
    assert rlvr.run.init_from == rlpt.run.output_dir
    for section in ("model", "parallel", "optim", "batch", "grpo", "loss"):
        assert getattr(rlvr, section) == getattr(rlpt, section), section
    for key in ("engine", "temperature", "top_p", "max_new_tokens", "max_prompt_tokens"):
        assert getattr(rlvr.rollout, key) == getattr(rlpt.rollout, key), key
    assert rlvr.task.chat_template == rlpt.task.chat_template
    # A JSONL file has no manifest naming its tokenizer: the config must name the model's.
    assert rlvr.data.path.endswith(".jsonl") and rlvr.data.tokenizer


@pytest.mark.parametrize("model", MODELS)
def test_sft_configs_have_the_papers_settings(model: str):
    cfg = load(EXAMPLES / f"sft_{model}.yaml")
    assert cfg.run.stage == "sft"
    assert cfg.batch.sequences_per_step == 1024
    assert cfg.optim.lr == 2e-5 and cfg.optim.schedule == "cosine"


@pytest.mark.parametrize("path", [p for p in ALL if p.stem != "quickstart_cpu"], ids=lambda p: p.stem)
def test_layout_is_valid_and_fits_one_node(path: Path):
    cfg = load(path)
    cfg.model.validate(cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel)
    assert cfg.parallel.tensor_parallel <= 8, "TP should stay within a node"
    plan = make_plan(cfg, ClusterSpec(nodes=1, gpus_per_node=8))
    assert plan.feasible, plan.errors
    # The layout documented at the top of the file is the one configured.
    header = path.read_text().split("\n")
    layout = next(line for line in header if line.startswith("# Layout:"))
    assert f"TP={cfg.parallel.tensor_parallel}" in layout
