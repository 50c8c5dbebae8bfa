"""SFT batches: chat-templated prompts, loss on the response tokens only, no padding waste."""

from __future__ import annotations

import json

import torch

from megatron_rlpt.data.tokenizer import default_tokenizer_path, load_tokenizer
from megatron_rlpt.stages.lm import SFTData


def _data(tmp_path, records, seq_length=256):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return SFTData(str(path), load_tokenizer(default_tokenizer_path()), seq_length, seed=0,
                   prompt_key="prompt", response_key="response")


def test_loss_mask_covers_exactly_the_response_and_eos(tmp_path):
    data = _data(tmp_path, [{"prompt": "What is two plus two?", "response": "Four."}])
    rows = data.rows([0])
    ids, n_prompt = data.encode("What is two plus two?", "Four.")
    tok = data.tokenizer
    # The prompt went through the chat template and ends with the assistant header.
    assert tok.decode(ids[:n_prompt]).rstrip().endswith("assistant")
    assert ids[-1] == tok.eos_token_id
    labels, mask = rows["labels"][0], rows["loss_mask"][0]
    trained = labels[mask.bool()].tolist()
    assert trained == ids[n_prompt:]  # response tokens and the closing eos, nothing else
    assert tok.decode(trained[:-1]) == "Four."


def test_batch_is_padded_to_its_longest_conversation_and_cut_at_seq_length(tmp_path):
    records = [{"prompt": "short", "response": "a"},
               {"prompt": "a longer prompt " * 5, "response": "a longer answer " * 5}]
    data = _data(tmp_path, records)
    longest = max(len(data.encode(r["prompt"], r["response"])[0]) for r in records)
    rows = data.rows([0, 1])
    assert rows["tokens"].shape == (2, longest - 1)
    assert rows["labels"].shape == rows["loss_mask"].shape == rows["position_ids"].shape
    assert torch.equal(rows["position_ids"][1], torch.arange(longest - 1))
    # The loss flattens these with view(): they must be contiguous, not slices of wider tensors.
    assert all(rows[k].is_contiguous() for k in ("tokens", "labels", "loss_mask"))

    cut = _data(tmp_path, records, seq_length=16).rows([0, 1])
    assert cut["tokens"].shape[1] <= 16


def test_over_long_examples_are_counted(tmp_path):
    records = [{"prompt": "short", "response": "a"},
               {"prompt": "a longer prompt " * 5, "response": "a longer answer " * 5}]
    data = _data(tmp_path, records, seq_length=16)
    lengths = [len(data.encode(r["prompt"], r["response"])[0]) for r in records]
    assert lengths[0] <= 17 < lengths[1]  # the fixture: one fits, one does not
    data.rows([0, 1])
    assert data.truncated == 1
    data.rows([0])
    assert data.truncated == 0  # per call, not cumulative
