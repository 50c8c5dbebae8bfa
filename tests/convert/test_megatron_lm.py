"""Megatron-LM torch_dist checkpoints: export to Hugging Face with the logits of Megatron's own
forward, seed an SFT run through run.init_from (whose checkpoint carries what Megatron-LM's
`--load` reads), and refusals for what we cannot express or must not unpickle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.convert import megatron_lm
from megatron_rlpt.convert.megatron_to_hf import plan_export
from megatron_rlpt.errors import UsageError
from megatron_rlpt.runtime.checkpoint import resolve_checkpoint
from megatron_rlpt.train import resolve_init_model
from tests.convert.fixtures import write_tokenizer
from tests.convert.megatron_lm_fixture import ITERATION
from tests.multirank import REPO_ROOT

VOCAB = 258  # the fixture tokenizer's size; the checkpoint pads it to 384 rows


def _python(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mlm(tmp_path_factory) -> dict:
    """The Megatron-LM checkpoint root, its tokenizer and Megatron's own logits."""
    base = tmp_path_factory.mktemp("megatron_lm")
    tokenizer = write_tokenizer(base / "tokenizer")
    proc = _python(["-m", "tests.convert.megatron_lm_fixture", str(base / "root"), str(tokenizer),
                    str(base / "logits.pt")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = torch.load(base / "logits.pt", weights_only=True)
    return {"base": base, "root": base / "root", "tokenizer": tokenizer, **ref}


def _hf_logits(hf_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def _variant(mlm: dict, name: str, **changes) -> Path:
    """A copy of the checkpoint root whose saved args differ by `changes`."""
    root = mlm["base"] / name
    shutil.copytree(mlm["root"], root)
    ckpt = root / f"iter_{ITERATION:07d}"
    common = megatron_lm.load_common(ckpt)
    for key, value in changes.items():
        setattr(common["args"], key, value)
    torch.save(common, ckpt / megatron_lm.COMMON_FILE)
    return root


def test_export_matches_megatron_forward(mlm, tmp_path):
    assert not (mlm["root"] / "model_config.json").exists()
    assert not list(mlm["root"].rglob("COMPLETE"))
    out = tmp_path / "hf"
    proc = _python(["-m", "megatron_rlpt.cli", "convert", "megatron-to-hf", "--ckpt",
                    str(mlm["root"]), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == VOCAB
    assert config["rope_theta"] == 500000.0 and config["num_key_value_heads"] == 2
    assert config["tie_word_embeddings"] is False
    megatron = mlm["logits"][..., :VOCAB]
    exported = _hf_logits(out, mlm["tokens"])
    assert (exported - megatron).abs().max().item() <= 1e-4
    assert megatron.abs().max().item() > 1.0  # not a vacuous match of near-zero logits


def test_resolver_takes_iter_and_release_dirs(mlm):
    ckpt = mlm["root"] / f"iter_{ITERATION:07d}"
    for given in (mlm["root"], ckpt):
        ref = resolve_checkpoint(given)
        assert (ref.root, ref.iter_dir, ref.megatron_lm) == (mlm["root"], ckpt, True)
    release = mlm["base"] / "released"
    shutil.copytree(ckpt, release / "release")
    (release / "latest_checkpointed_iteration.txt").write_text("release\n")
    ref = resolve_checkpoint(release)
    assert ref.iter_dir == release / "release" and ref.megatron_lm
    plan = plan_export(release)
    assert (plan.cfg.num_layers, plan.cfg.num_query_groups, plan.cfg.vocab_size) == (2, 2, VOCAB)
    assert plan.cfg.rotary_base == 500000.0 and not plan.cfg.tie_embeddings


def test_init_from_megatron_lm_seeds_sft_and_writes_megatron_lm_layout(mlm, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"number {i}"}) + "\n"
                            for i in range(8)))
    run = tmp_path / "sft"
    cfg = {
        # No model section and no data.tokenizer: both come from the checkpoint.
        "run": {"stage": "sft", "output_dir": str(run), "steps": 1, "init_from": str(mlm["root"]),
                "progress": False, "wandb": {"mode": "disabled"}},
        # A learning rate that leaves the weights as loaded (to 1e-4 in the logits).
        "optim": {"lr": 1e-9, "min_lr": 0.0},
        "data": {"path": str(data), "seq_length": 32},
        "batch": {"sequences_per_step": 2, "micro_batch_size": 2},
    }
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = _python(["-m", "megatron_rlpt.cli", "train", "--config", str(config)])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["num_layers"], model["hidden_size"], model["ffn_hidden_size"]) == (2, 64, 128)
    assert (model["num_query_groups"], model["vocab_size"], model["tie_embeddings"]) == (2, VOCAB, False)
    assert model["hidden_dropout"] == 0.0  # Megatron-LM's dropout is a runtime knob, not taken

    # What Megatron-LM's --load reads: the tracker, iter_%07d, common state with version/iteration.
    root = run / "checkpoints"
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    ckpt = root / "iter_0000001"
    assert json.loads((ckpt / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    common = torch.load(ckpt / "common.pt", weights_only=True)
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 1

    # The run directory exports with the weights it was seeded with.
    out = tmp_path / "hf"
    proc = _python(["-m", "megatron_rlpt.cli", "convert", "megatron-to-hf", "--ckpt", str(run),
                    "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported = _hf_logits(out, mlm["tokens"])
    assert (exported - mlm["logits"][..., :VOCAB]).abs().max().item() <= 1e-4


def test_refuses_what_it_cannot_express(mlm):
    cases = {
        "moe": ({"num_experts": 8}, "num_experts=8"),
        "mla": ({"multi_latent_attention": True}, "multi_latent_attention=True"),
        "layernorm": ({"normalization": "LayerNorm"}, "normalization='LayerNorm'"),
        "gelu": ({"swiglu": False}, "swiglu=False"),
        "learned": ({"position_embedding_type": "learned_absolute"},
                    "position_embedding_type='learned_absolute'"),
    }
    for name, (changes, named) in cases.items():
        with pytest.raises(UsageError, match="Megatron-LM argument " + named.replace("(", r"\(")):
            plan_export(_variant(mlm, name, **changes))


def test_tokenizer_is_never_guessed(mlm, tmp_path):
    root = _variant(mlm, "sentencepiece", tokenizer_type="GPTSentencePieceTokenizer",
                    tokenizer_model="/nonexistent/tokenizer.model")
    with pytest.raises(UsageError, match="not a Hugging Face directory.*--hf-template"):
        plan_export(root)
    assert plan_export(root, hf_template=mlm["tokenizer"]).cfg.vocab_size == VOCAB
    cfg = TrainConfig()
    cfg.run.init_from, cfg.data.path = str(root), str(tmp_path / "data.jsonl")
    with pytest.raises(UsageError, match="data.tokenizer"):
        resolve_init_model(cfg, set())
    cfg.data.tokenizer = str(mlm["tokenizer"])
    resolved, _ = resolve_init_model(cfg, set())
    assert resolved.model.vocab_size == VOCAB


class _RunsCode:
    """Pickles as a call of os.mkdir: unpickling it without an allow-list would run it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_refuses_pickle_outside_allow_list(mlm, tmp_path):
    root = mlm["base"] / "hostile"
    shutil.copytree(mlm["root"], root)
    ckpt = root / f"iter_{ITERATION:07d}"
    marker = tmp_path / "code-ran"
    common = megatron_lm.load_common(mlm["root"] / f"iter_{ITERATION:07d}")
    common["args"].tokenizer_model = _RunsCode(str(marker))
    torch.save(common, ckpt / megatron_lm.COMMON_FILE)
    with pytest.raises(UsageError, match=r"mkdir.*not on the allow-list"):
        plan_export(root)
    cfg = TrainConfig()
    cfg.run.init_from, cfg.data.tokenizer = str(root), str(mlm["tokenizer"])
    with pytest.raises(UsageError, match="not on the allow-list"):
        resolve_init_model(cfg, set())
    assert not marker.exists()


def test_refuses_legacy_torch_format(tmp_path):
    root = tmp_path / "legacy"
    shard = root / "iter_0000003" / "mp_rank_00"
    shard.mkdir(parents=True)
    torch.save({"iteration": 3}, shard / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("3")
    for given in (root, root / "iter_0000003"):
        with pytest.raises(UsageError, match="legacy `torch` format.*--ckpt-convert-format "
                                             "torch_dist"):
            resolve_checkpoint(given)
