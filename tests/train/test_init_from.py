"""`rlpt train` with run.init_from takes the model architecture and tokenizer from the checkpoint:
a converted root seeds a run with no `model:` section, that run's directory seeds the next one,
runtime knobs may be set over the checkpoint's config and architectural conflicts are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.convert.model_config_file import merge_model_config
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.model import ModelConfig
from megatron_rlpt.synthetic import cycling_corpus
from megatron_rlpt.utils.config import given_keys, load_config
from tests.convert.fixtures import build_hf_model, write_tokenizer
from tests.train.test_resume import _rlpt


def _run(args: list[str]) -> tuple[int, str]:
    proc = _rlpt(args)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _config(tmp: Path, out: Path, init_from: Path, **model: object) -> Path:
    """A one-step pretraining run from `init_from`; `model` is the only model section given."""
    corpus = tmp / "corpus.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps(r) + "\n" for r in cycling_corpus(20, 3)))
    cfg = {
        "run": {"stage": "pretrain", "output_dir": str(out), "steps": 1, "init_from": str(init_from),
                "progress": False, "wandb": {"mode": "disabled"}},
        "optim": {"lr": 1e-3},
        "data": {"path": str(corpus), "seq_length": 32},
        "batch": {"sequences_per_step": 2, "micro_batch_size": 2},
    }
    if model:
        cfg["model"] = model
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_init_from_takes_model_and_tokenizer_from_checkpoint(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tok")
    build_hf_model("qwen2", tmp_path / "hf", tokenizer)  # vocab 320, untied, QKV bias
    root = tmp_path / "converted"
    rc, out = _run(["convert", "hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(root)])
    assert rc == 0, out[-3000:]
    converted = json.loads((root / "model_config.json").read_text())

    # No model section: the shipped 8192-token tokenizer and default architecture would not fit.
    rc, out = _run(["train", "--config", str(_config(tmp_path, tmp_path / "first", root))])
    assert rc == 0, out[-3000:]
    first = tmp_path / "first"
    saved = yaml.safe_load((first / "config.yaml").read_text())["model"]
    assert saved == converted
    assert json.loads((first / "checkpoints" / "model_config.json").read_text()) == converted
    assert (first / "checkpoints" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (root / "tokenizer" / "tokenizer.json").read_bytes()

    # The run directory seeds the next run; a runtime knob and an agreeing field may be set.
    second_cfg = _config(tmp_path, tmp_path / "second", first, max_position_embeddings=64,
                         hidden_size=converted["hidden_size"])
    rc, out = _run(["train", "--config", str(second_cfg)])
    assert rc == 0, out[-3000:]
    saved = yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())["model"]
    assert saved == {**converted, "max_position_embeddings": 64}

    # A conflicting architectural field names both values, from the YAML or an override.
    rc, out = _run(["train", "--config", str(second_cfg), "model.num_layers=4",
                    "run.output_dir=" + str(tmp_path / "third")])
    assert rc == 2, out[-3000:]
    assert "model.num_layers is 4 in the config but 2 in" in out
    assert not (tmp_path / "third").exists()


def test_resume_does_not_need_the_init_checkpoint(tmp_path):
    """The init checkpoint is read on the first start only: once the run has a checkpoint, it
    resumes with the architecture and tokenizer saved in its own checkpoint root."""
    import shutil

    tokenizer = write_tokenizer(tmp_path / "tok")
    build_hf_model("qwen2", tmp_path / "hf", tokenizer)
    root = tmp_path / "converted"
    rc, out = _run(["convert", "hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(root)])
    assert rc == 0, out[-3000:]
    converted = json.loads((root / "model_config.json").read_text())
    config = _config(tmp_path, tmp_path / "run", root)
    rc, out = _run(["train", "--config", str(config)])
    assert rc == 0, out[-3000:]
    for gone in (root, tmp_path / "hf", tmp_path / "tok"):
        shutil.rmtree(gone)

    rc, out = _run(["train", "--config", str(config), "run.steps=2"])
    assert rc == 0, out[-3000:]
    assert "resumed from" in out and "at step 1 of 2" in out
    assert (tmp_path / "run" / "checkpoints" / "iter_0000002").is_dir()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == converted
    # Without a checkpoint to resume, the missing init checkpoint is still an error.
    rc, out = _run(["train", "--config", str(config), "run.output_dir=" + str(tmp_path / "new")])
    assert rc != 0 and "checkpoint not found" in out, out[-3000:]


def test_plan_takes_the_model_from_init_from(tmp_path, capsys):
    """`rlpt plan` plans the architecture `rlpt train` would build from run.init_from, and the
    `model:` section (with a note) while that checkpoint does not exist yet."""
    from megatron_rlpt.cli import main as rlpt
    from megatron_rlpt.plan import padded_vocab, total_params

    tokenizer = write_tokenizer(tmp_path / "tok")
    build_hf_model("qwen2", tmp_path / "hf", tokenizer)
    root = tmp_path / "converted"
    rc, out = _run(["convert", "hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(root)])
    assert rc == 0, out[-3000:]
    converted = ModelConfig(**json.loads((root / "model_config.json").read_text()))
    config = _config(tmp_path, tmp_path / "run", root)
    plan_args = ["plan", "--config", str(config), "--nodes", "1", "--gpus-per-node", "1", "--json"]

    rlpt(plan_args)
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["total_params"] == total_params(converted, 1)
    assert plan["padded_vocab"] == padded_vocab(converted, 1)
    assert total_params(converted, 1) != total_params(ModelConfig(), 1)
    # An architectural field that disagrees with the checkpoint is refused, as by `rlpt train`.
    assert rlpt([*plan_args, "model.num_layers=4"]) == 2
    assert "model.num_layers is 4 in the config but 2 in" in capsys.readouterr().err

    rlpt([*plan_args, "run.init_from=" + str(tmp_path / "not-yet")])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["plan"]["total_params"] == total_params(ModelConfig(), 1)
    assert "planning the model: section; run.init_from is not readable" in captured.err


def test_merge_model_config_rules():
    saved = ModelConfig(num_layers=30, hidden_size=576, ffn_hidden_size=1536,
                        num_attention_heads=9, num_query_groups=3, vocab_size=49152,
                        tie_embeddings=True, rotary_base=100000.0)
    given = ModelConfig(params_dtype="bf16", vocab_size=8192, num_layers=30,
                        recompute_granularity="selective")
    merged = merge_model_config(saved, given, {"params_dtype", "num_layers",
                                               "recompute_granularity"}, "ckpt")
    assert merged.params_dtype == "bf16" and merged.recompute_granularity == "selective"
    assert merged.vocab_size == 49152 and merged.tie_embeddings
    with pytest.raises(UsageError, match=r"model.vocab_size is 8192 in the config but 49152 in ckpt"):
        merge_model_config(saved, given, {"vocab_size"}, "ckpt")
    # Implicit defaults compare by meaning: one query group per head, head size hidden/heads.
    mha = ModelConfig(num_attention_heads=4, hidden_size=64)
    explicit = ModelConfig(num_attention_heads=4, hidden_size=64, num_query_groups=4, kv_channels=16)
    assert merge_model_config(mha, explicit, {"num_query_groups", "kv_channels"}, "x") == mha


def test_given_keys_sees_only_what_the_user_wrote(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  params_dtype: bf16\nrun:\n  steps: 3\n")
    keys = given_keys(path, ["model.recompute_granularity=full", "optim.lr=1e-5"])
    assert set(keys["model"]) == {"params_dtype", "recompute_granularity"}
    assert load_config(TrainConfig, path).model.num_layers == ModelConfig().num_layers
