"""Bad inputs fail before anything is written, with a one-line reason (exit status 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_rlpt.cli import main


def _fails(capsys, argv: list[str], reason: str, out: Path) -> None:
    assert main(["convert", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlpt convert: error: "), err
    assert reason in err[0], err[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.fixture
def hf_copy(converted, tmp_path) -> Path:
    dst = tmp_path / "hf"
    shutil.copytree(converted["base"] / "hf-qwen3", dst)
    return dst


@pytest.fixture
def ckpt_copy(converted, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(converted["base"] / "mg-tp1-qwen3", dst)
    return dst


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unknown_architecture(capsys, hf_copy, tmp_path):
    _edit_json(hf_copy / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "unknown architecture", tmp_path / "o")


def test_mismatched_shapes(capsys, hf_copy, tmp_path):
    _edit_json(hf_copy / "config.json", intermediate_size=128)
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "has shape", tmp_path / "o")


def test_missing_tensor_and_missing_shard(capsys, hf_copy, tmp_path):
    index = json.loads((hf_copy / "model.safetensors.index.json").read_text())
    shard = hf_copy / index["weight_map"]["model.norm.weight"]
    shard.unlink()
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "missing", tmp_path / "o")
    del index["weight_map"]["model.norm.weight"]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "lacks tensor", tmp_path / "o")


def test_missing_config_and_tokenizer(capsys, hf_copy, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_copy / name).unlink()
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "no tokenizer", tmp_path / "o")
    (hf_copy / "config.json").unlink()
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "config.json not found", tmp_path / "o")
    _fails(capsys, ["hf-to-megatron", "--hf", str(tmp_path / "nowhere")], "not found", tmp_path / "o")


def test_corrupt_weights(capsys, hf_copy, tmp_path):
    shard = sorted(hf_copy.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy)], "cannot read", tmp_path / "o")


def test_infeasible_layout(capsys, hf_copy, tmp_path):
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy), "--tp", "3"], "not divisible by TP 3",
           tmp_path / "o")
    _fails(capsys, ["hf-to-megatron", "--hf", str(hf_copy), "--pp", "4"], "not divisible by PP 4",
           tmp_path / "o")


def test_non_empty_output_is_left_alone(capsys, hf_copy, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "hf-to-megatron", "--hf", str(hf_copy), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_without_model_config_or_checkpoint(capsys, ckpt_copy, tmp_path):
    (ckpt_copy / "model_config.json").unlink()
    _fails(capsys, ["megatron-to-hf", "--ckpt", str(ckpt_copy)], "model_config.json", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, ["megatron-to-hf", "--ckpt", str(empty)], "no complete checkpoint", tmp_path / "o")


def test_export_without_tokenizer(capsys, ckpt_copy, tmp_path):
    shutil.rmtree(ckpt_copy / "tokenizer")
    _fails(capsys, ["megatron-to-hf", "--ckpt", str(ckpt_copy)], "no tokenizer", tmp_path / "o")


def test_export_with_template_of_another_model(capsys, converted, ckpt_copy, tmp_path):
    _fails(capsys, ["megatron-to-hf", "--ckpt", str(ckpt_copy), "--hf-template",
                    str(converted["base"] / "hf-llama")], "template config.json", tmp_path / "o")


def test_export_with_config_that_disagrees_with_the_checkpoint(capsys, ckpt_copy, tmp_path):
    _edit_json(ckpt_copy / "model_config.json", ffn_hidden_size=128)
    shutil.rmtree(ckpt_copy / "hf")  # else the template check catches it first
    _fails(capsys, ["megatron-to-hf", "--ckpt", str(ckpt_copy)], "model_config.json implies",
           tmp_path / "o")
