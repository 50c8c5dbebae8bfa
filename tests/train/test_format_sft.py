"""`rlpt format-sft`: prepared triples -> format-teaching SFT JSONL that the sft stage reads."""

from __future__ import annotations

import json

import pytest

from megatron_rlpt.cli import main
from megatron_rlpt.tasks import ASR_TEMPLATE, END_TAG, MSR_TEMPLATE, START_TAG, extract_prediction


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.data.pipeline import prepare
    from megatron_rlpt.quickstart import CORPUS

    out = tmp_path_factory.mktemp("fsft") / "data"
    prepare([str(CORPUS)], out, progress=False)
    return TripleDataset(out)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_teach_the_format_with_the_true_segment(data, tmp_path):
    out = tmp_path / "sft.jsonl"
    assert main(["format-sft", "--data", str(data.path), "--output", str(out), "--lam", "1"]) == 0
    records = _read(out)
    assert len(records) == len(data)
    asr_head, msr_head = ASR_TEMPLATE.split("{context}")[0], MSR_TEMPLATE.split("{prompt}")[0]
    msr = 0
    for i, r in enumerate(records):
        context, target, nxt = data.texts(i)
        if r["prompt"].startswith(msr_head):
            msr += 1
            assert context in r["prompt"] and nxt in r["prompt"]
        else:
            assert r["prompt"] == asr_head + context
        stub, _, answer = r["response"].partition(START_TAG)
        assert stub.strip() and answer.endswith(END_TAG)
        assert extract_prediction(r["response"]).prediction == target.strip()
    assert 0.35 < msr / len(records) < 0.65  # λ = 1: MSR with probability 1/2


def test_options_and_the_sft_stage_reads_it(data, tmp_path):
    from transformers import AutoTokenizer

    from megatron_rlpt.data.tokenizer import default_tokenizer_path
    from megatron_rlpt.stages.lm import SFTData

    out = tmp_path / "sft.jsonl"
    assert main(["format-sft", "--data", str(data.path), "--output", str(out), "--lam", "0",
                 "--no-reasoning", "--limit", "40", "--max-prompt-tokens", "90"]) == 0
    records = _read(out)
    tok = AutoTokenizer.from_pretrained(default_tokenizer_path())
    assert len(records) == 40
    assert all(r["response"].startswith(START_TAG) for r in records)
    lengths = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records]
    assert max(lengths) <= 90
    # Some contexts were cut, from the left: each prompt still ends with its triple's last words.
    full = [ASR_TEMPLATE.replace("{context}", data.texts(i)[0]) for i in range(40)]
    assert any(len(r["prompt"]) < len(f) for r, f in zip(records, full))
    assert all(f.endswith(r["prompt"].split("### Context\n", 1)[1]) for r, f in zip(records, full))

    sft = SFTData(str(out), tok, seq_length=256, seed=0, prompt_key="prompt",
                  response_key="response")
    rows = sft.rows([0, 1, 2])
    assert rows["loss_mask"].sum() > 0 and sft.truncated == 0


def test_bad_arguments(data, tmp_path, capsys):
    assert main(["format-sft", "--data", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert main(["format-sft", "--data", str(data.path), "--output", str(tmp_path / "x"),
                 "--lam", "-1"]) == 2
    assert "rlpt format-sft: error" in capsys.readouterr().err
