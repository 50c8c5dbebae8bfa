"""Pretraining through Megatron-Core's GPT datasets: Megatron-LM's blend syntax, blends honoured,
validation loss in metrics, exact resume from a blend; RLPT from weighted prepared directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from megatron_rlpt.data.gpt_dataset import build_gpt_datasets, parse_blend
from megatron_rlpt.errors import UsageError
from tests.multirank import REPO_ROOT


def write_indexed(prefix: Path, lo: int, hi: int, documents: int, seed: int) -> str:
    """An IndexedDataset of `documents` random documents with token ids in [lo, hi)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(documents):
        n = int(rng.integers(20, 60))
        builder.add_document(rng.integers(lo, hi, n), [n])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_parse_blend_takes_megatron_lm_syntax():
    assert parse_blend("/d/a") == (["/d/a"], None)
    assert parse_blend(["/d/a", "/d/b"]) == (["/d/a", "/d/b"], None)
    assert parse_blend([0.3, "/d/a", 7, "/d/b"]) == (["/d/a", "/d/b"], [0.3, 7.0])
    for bad in ([0.3, "/d/a", 0.7], ["/d/a", 0.7], [-1, "/d/a"], [0, "/d/a"], []):
        with pytest.raises(UsageError):
            parse_blend(bad)


@pytest.fixture
def process_group(tmp_path: Path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0,
                                         world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _cfg(tmp: Path, path, **data) -> SimpleNamespace:
    d = {"path": path, "valid_path": None, "split": None, "seq_length": 16,
         "cache_dir": str(tmp / "cache"), **data}
    return SimpleNamespace(data=SimpleNamespace(**d),
                           run=SimpleNamespace(seed=5, output_dir=str(tmp / "run")))


def test_blend_weights_are_honoured_over_10k_samples(tmp_path: Path, process_group):
    a = write_indexed(tmp_path / "a_text_document", 10, 100, 80, seed=1)
    b = write_indexed(tmp_path / "b_text_document", 100, 200, 80, seed=2)
    tok = type("Tok", (), {"eos_token_id": 0, "__len__": lambda self: 256})()
    n = 10_000
    train, valid = build_gpt_datasets(_cfg(tmp_path, [0.3, a, 0.7, b]), tok, n, 0)
    assert valid is None and len(train) >= n
    # Which corpus a sample came from, read from its tokens (a: ids < 100, b: ids >= 100).
    from_a = sum(int(train[i]["tokens"].max() < 100) for i in range(n))
    assert abs(from_a / n - 0.3) <= 0.02, from_a
    # Cached indices: a second build reads them back and yields the same samples.
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert cached
    again, _ = build_gpt_datasets(_cfg(tmp_path, [0.3, a, 0.7, b]), tok, n, 0)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.npy")) == cached
    for i in (0, 17, n - 1):
        assert torch.equal(again[i]["tokens"], train[i]["tokens"])
    # A split carves a validation set out of the same documents.
    _, valid = build_gpt_datasets(_cfg(tmp_path, a, split="90,10,0"), tok, 100, 8)
    assert valid is not None and len(valid) >= 8


def _rlpt(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


MODEL = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
         "num_query_groups": 2, "vocab_size": 8192, "max_position_embeddings": 256}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_from_a_blend_logs_valid_loss_and_resumes_exactly(tmp_path: Path):
    a = write_indexed(tmp_path / "a_text_document", 10, 4000, 60, seed=1)
    b = write_indexed(tmp_path / "b_text_document", 4000, 8000, 60, seed=2)
    v = write_indexed(tmp_path / "v_text_document", 10, 8000, 20, seed=3)
    run = tmp_path / "run"
    cfg = {"run": {"stage": "pretrain", "output_dir": str(run), "steps": 4, "save_every": 2,
                   "eval_every": 2, "progress": False, "wandb": {"mode": "disabled"}},
           "model": MODEL, "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 0},
           "data": {"path": [0.4, a, 0.6, b], "valid_path": v, "valid_sequences": 8,
                    "seq_length": 32},
           "batch": {"sequences_per_step": 8, "micro_batch_size": 4}}
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = _rlpt(["train", "--config", str(config)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = _metrics(run)
    assert [m["step"] for m in first] == [1, 2, 3, 4]
    valid = [m.get("valid/loss") for m in first]
    assert valid[0] is None and valid[2] is None
    assert all(isinstance(x, float) and 0 < x < 20 for x in (valid[1], valid[3]))
    assert valid[3] < valid[1]  # the blend teaches what the validation set holds
    assert list((run / "data_cache").rglob("*.npy"))

    # Lose the last checkpoint: the rerun resumes at step 2 and must retrace steps 3-4 exactly.
    shutil.rmtree(run / "checkpoints" / "iter_0000004")
    done = _rlpt(["train", "--config", str(config)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout
    again = _metrics(run)
    keys = ("step", "loss", "grad_norm", "valid/loss")
    assert [[m.get(k) for k in keys] for m in again] == [[m.get(k) for k in keys] for m in first]


@pytest.fixture(scope="module")
def two_prepared(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    from megatron_rlpt.data.config import PrepareConfig
    from megatron_rlpt.data.pipeline import prepare

    root = tmp_path_factory.mktemp("weighted")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][1:5]
    out = []
    for name, part in (("A", docs[:2]), ("B", docs[2:])):
        corpus = root / f"{name}.jsonl"
        corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n"
                                  for d in part))
        cfg = PrepareConfig()
        cfg.triples.max_triples_per_document = 6
        prepare([str(corpus)], root / name, cfg=cfg, progress=False)
        out.append(root / name)
    return out[0], out[1]


def test_weighted_prepared_directories_are_sampled_by_weight(two_prepared):
    from megatron_rlpt.data.dataset import TripleDataset, WeightedTriples

    a, b = (TripleDataset(p) for p in two_prepared)
    blend = WeightedTriples([a, b], [0.25, 0.75], seed=9)
    picks = [blend.locate(p) for p in range(10_000)]
    share_a = sum(ds is a for ds, _ in picks) / len(picks)
    assert abs(share_a - 0.25) <= 0.02
    # Every triple of each directory is visited once before any repeats.
    first_a = [i for ds, i in picks if ds is a][: len(a)]
    assert sorted(first_a) == list(range(len(a)))
    # Deterministic from the seed; another seed gives another order.
    again = WeightedTriples([a, b], [0.25, 0.75], seed=9)
    assert [(ds.path, i) for ds, i in (again.locate(p) for p in range(0, 10_000, 7))] == \
        [(ds.path, i) for ds, i in picks[::7]]
    other = WeightedTriples([a, b], [0.25, 0.75], seed=10)
    assert [other.locate(p)[1] for p in range(50)] != [i for _, i in picks[:50]]


def test_rlpt_trains_from_two_weighted_prepared_directories(two_prepared, tmp_path: Path):
    a, b = two_prepared
    run = tmp_path / "rlpt"
    cfg = {"run": {"stage": "rlpt", "output_dir": str(run), "steps": 1, "progress": False,
                   "wandb": {"mode": "disabled"}},
           "model": MODEL, "optim": {"lr": 1e-2, "schedule": "constant", "warmup_steps": 0},
           "data": {"path": [0.5, str(a), 0.5, str(b)]},
           "batch": {"prompts_per_step": 4, "micro_batch_size": 4},
           "rollout": {"max_new_tokens": 8, "max_prompt_tokens": 96},
           "task": {"lam": 0.0}, "judge": {"kind": "rule"},
           "grpo": {"group_size": 2, "drop_zero_variance_groups": False},
           "loss": {"entropy_coef": 0.05}}
    config = tmp_path / "rlpt.yaml"
    config.write_text(yaml.safe_dump(cfg))
    done = _rlpt(["train", "--config", str(config)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (m,) = _metrics(run)
    assert m["step"] == 1 and m["grpo/kept_groups"] == 4
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == [0.5, str(a), 0.5, str(b)]


def test_pretrain_reads_a_prepared_directory_through_a_cached_indexed_dataset(
        two_prepared, tmp_path: Path, process_group):
    from transformers import AutoTokenizer

    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.data.tokenizer import default_tokenizer_path

    tok = AutoTokenizer.from_pretrained(default_tokenizer_path())
    prepared = two_prepared[0]
    train, _ = build_gpt_datasets(_cfg(tmp_path, str(prepared)), tok, 20, 0)
    (bin_file,) = (tmp_path / "cache").glob("text_*.bin")
    # The cached dataset is the prepared documents' text, each ended by end-of-text.
    ds = TripleDataset(prepared)
    expected = sum(len(tok(ds.document_text(d), add_special_tokens=False)["input_ids"]) + 1
                   for d in range(len(ds.documents)))
    assert bin_file.stat().st_size == expected * 2  # uint16 ids
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    cached = IndexedDataset(str(bin_file.with_suffix("")))
    first = tok(ds.document_text(0), add_special_tokens=False)["input_ids"]
    assert cached[0].tolist() == first + [tok.eos_token_id]
    # Every training sample is a window of that stream.
    stream = np.concatenate([cached[d] for d in range(len(cached))]).tolist()
    text = "," + ",".join(map(str, stream)) + ","
    for i in range(20):
        assert "," + ",".join(map(str, train[i]["tokens"].tolist())) + "," in text
    with pytest.raises(UsageError, match="not an rlpt prepare output"):
        build_gpt_datasets(_cfg(tmp_path, str(tmp_path)), tok, 20, 0)


@pytest.mark.multirank
def test_pretrain_on_two_ranks_from_a_mixed_blend_with_a_split(tmp_path: Path):
    """Rank 0 builds the caches (a JSONL tokenized, Megatron's indices), rank 1 waits and reads
    them; both train on their halves and score the validation part of the split."""
    a = write_indexed(tmp_path / "a_text_document", 10, 4000, 60, seed=1)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i} is about {i * 7}. " * 5}) + "\n"
                              for i in range(50)))
    run = tmp_path / "run"
    cfg = {"run": {"stage": "pretrain", "output_dir": str(run), "steps": 2, "eval_every": 1,
                   "progress": False, "wandb": {"mode": "disabled"}},
           "model": MODEL, "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 0},
           "data": {"path": [0.6, a, 0.4, str(corpus)], "split": "90,10,0",
                    "valid_sequences": 8, "seq_length": 32},
           "batch": {"sequences_per_step": 8, "micro_batch_size": 2}}
    config = tmp_path / "dp2.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "megatron_rlpt.cli", "train", "--config",
                           str(config)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = _metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(isinstance(m["valid/loss"], float) for m in metrics)
    assert len(list((run / "data_cache").glob("text_c.jsonl_*.bin"))) == 1
