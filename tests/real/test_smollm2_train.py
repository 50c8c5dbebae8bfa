"""A real checkpoint end to end (issue 13's acceptance): `rlpt prepare --tokenizer <SmolLM2>` at
default settings on a small corpus, then `rlpt train` with `run.init_from=<converted SmolLM2
root>` and no `model:` section runs RLPT steps (in-process rollouts, rule judge). The prompt
budget is below the prepared contexts, so prompts are left-truncated and counted."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.train.test_resume import _rlpt

pytestmark = pytest.mark.slow
STEPS = 2


def _run(args: list[str], timeout: float = 1500) -> tuple[int, str]:
    proc = _rlpt(args)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"rlpt {args[0]} did not finish:\n{out[-4000:]}") from None
    return proc.returncode, out


@pytest.fixture(scope="module")
def data(smollm2_converted, shared_data, tmp_path_factory):
    """Three chemistry sections prepared with SmolLM2's tokenizer at default settings."""
    tmp = tmp_path_factory.mktemp("smollm2-data")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][1:4]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    data = tmp / "data"
    rc, out = _run(["prepare", "--input", str(corpus), "--output", str(data),
                    "--tokenizer", str(smollm2_converted["hf"]), "--no-progress"])
    assert rc == 0, out[-3000:]
    assert json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"] == 49152
    return data


def test_rlpt_from_a_converted_real_model(smollm2_converted, data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = {
        "run": {"stage": "rlpt", "output_dir": str(run_dir), "steps": STEPS, "seed": 7,
                "init_from": str(smollm2_converted["megatron"]), "progress": False,
                "wandb": {"mode": "disabled"}},
        "optim": {"lr": 1e-6, "schedule": "constant", "distributed_optimizer": False},
        "data": {"path": str(data)},
        "batch": {"prompts_per_step": 2, "micro_batch_size": 4},
        "rollout": {"max_new_tokens": 8, "max_prompt_tokens": 256, "judge_chunk_prompts": 0},
        "task": {"chat_template": True},
        "judge": {"kind": "rule"},
        "grpo": {"group_size": 2, "max_sampling_rounds": 1},
    }
    path = tmp_path / "rlpt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, out = _run(["train", "--config", str(path)])
    assert rc == 0, out[-5000:]

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == list(range(1, STEPS + 1))
    assert all(0.0 <= m["reward"] <= 1.0 for m in steps)
    assert all(m["response_length"] >= 1 for m in steps)
    # Contexts of up to 2,048 tokens (prepare's default) met a 256-token prompt budget.
    assert sum(m["data/prompts_truncated"] for m in steps) >= 1

    saved = json.loads((run_dir / "checkpoints" / "model_config.json").read_text())
    converted = json.loads((smollm2_converted["megatron"] / "model_config.json").read_text())
    assert saved == converted and saved["num_layers"] == 30 and saved["vocab_size"] == 49152


def test_format_warmup_sft_from_the_converted_model(smollm2_converted, data, tmp_path):
    """`rlpt format-sft` on the real tokenizer's data, then one SFT step on it from the converted
    root (the warm-up docs/experiments.md describes)."""
    sft_data = tmp_path / "format_sft.jsonl"
    rc, out = _run(["format-sft", "--data", str(data), "--output", str(sft_data),
                    "--max-prompt-tokens", "192", "--limit", "16"])
    assert rc == 0, out[-3000:]
    assert len(sft_data.read_text().splitlines()) == 16
    cfg = {
        "run": {"stage": "sft", "output_dir": str(tmp_path / "warmup"), "steps": 1,
                "init_from": str(smollm2_converted["megatron"]), "progress": False,
                "wandb": {"mode": "disabled"}},
        "optim": {"lr": 1e-5, "schedule": "constant", "distributed_optimizer": False},
        "data": {"path": str(sft_data), "seq_length": 320},
        "batch": {"sequences_per_step": 2, "micro_batch_size": 2},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, out = _run(["train", "--config", str(path)])
    assert rc == 0, out[-5000:]
    metrics = [json.loads(line) for line in
               (tmp_path / "warmup" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    # A real model on text it can read: far below the uniform 10.8 nats over 49,152 tokens.
    assert len(losses) == 1 and 0.0 < losses[0] < 6.0
    assert metrics[-1].get("sft/truncated_examples", 0) == 0
