"""RLPT prompts fit `rollout.max_prompt_tokens`: a context too long is left-truncated (whole
sentences first, then tokens of a single over-long sentence), never refused, so data prepared
once serves any prompt budget."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from megatron_rlpt.errors import UsageError
from megatron_rlpt.stages.common import order_index
from megatron_rlpt.stages.prompts import RLPTSource
from megatron_rlpt.tasks import Task, TaskConfig, render_prompt

LONG = ("This single sentence keeps going " + " ".join(
    f"with clause number {i} adding detail about the lamp and its wiring" for i in range(25))
    + " until it finally ends.")


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    """A few chemistry sections and one document with a 300-token sentence, prepared with the
    default tokenizer and a large context budget."""
    from megatron_rlpt.data.config import PrepareConfig
    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.data.pipeline import prepare

    root = tmp_path_factory.mktemp("fit")
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][1:5]
    docs.append({"id": "long", "text": "The workshop opened early that morning. "
                 "Its owner checked every tool on the bench first. " + LONG
                 + " The lamp then shone all night. Nobody touched it until dawn came."})
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs))
    cfg = PrepareConfig()
    cfg.triples.max_triples_per_document = 8
    prepare([str(corpus)], root / "data", cfg=cfg, progress=False)
    return TripleDataset(root / "data")


def _source(data, limit: int, lam: float = 1.0) -> RLPTSource:
    from transformers import AutoTokenizer

    from megatron_rlpt.data.tokenizer import default_tokenizer_path

    cfg = SimpleNamespace(
        data=SimpleNamespace(path=str(data.path)), run=SimpleNamespace(seed=3),
        rollout=SimpleNamespace(max_prompt_tokens=limit), task=TaskConfig(lam=lam),
        judge=SimpleNamespace(reward_mode="prefix"))
    return RLPTSource(cfg, AutoTokenizer.from_pretrained(default_tokenizer_path()))


def _prompts(source: RLPTSource, n: int) -> list:
    return [source.prompt(p, random.Random(f"3:{p}")) for p in range(n)]


def _context_of(source: RLPTSource, index: int, task: Task, ids: list[int]) -> str:
    """The context text that renders to exactly `ids` (the prompt's template stripped)."""
    text = source.tokenizer.decode(ids)
    _, _, nxt = source.dataset.texts(index)
    template = render_prompt(task, "\0", nxt, source.cfg.task)
    head, tail = template.split("\0")
    assert text.startswith(head) and text.endswith(tail)
    return text[len(head): len(text) - len(tail)]


def test_pieces_join_to_the_context(prepared):
    for i in range(len(prepared)):
        pieces = prepared.context_pieces(i)
        assert "".join(pieces) == prepared.texts(i)[0]
        assert all(p for p in pieces)


def test_large_budget_changes_nothing(prepared):
    source = _source(prepared, 100_000)
    for p in _prompts(source, len(prepared)):
        assert not p.truncated


def test_sentences_are_dropped_from_the_left(prepared):
    """Every prompt fits; a cut context is the longest run of whole trailing sentences that
    fits (one more sentence would not), unless a single sentence is too long."""
    limit = 240
    source = _source(prepared, limit)
    full = _source(prepared, 100_000)
    n = len(prepared)
    truncated = sentence_cuts = 0
    for pos, (p, q) in enumerate(zip(_prompts(source, n), _prompts(full, n))):
        assert p.task == q.task and p.reference == q.reference
        assert len(p.prompt_ids) <= limit
        assert p.truncated == (len(q.prompt_ids) > limit)
        if not p.truncated:
            assert p.prompt_ids == q.prompt_ids
            continue
        truncated += 1
        index = order_index(pos, n, 3)
        task = Task(p.task)
        context = _context_of(source, index, task, p.prompt_ids)
        pieces = prepared.context_pieces(index)
        assert prepared.texts(index)[0].endswith(context)
        tails = ["".join(pieces[j:]) for j in range(len(pieces))]
        if context in tails:
            sentence_cuts += 1
            j = tails.index(context)
            assert j >= 1
            longer = render_prompt(task, tails[j - 1], prepared.texts(index)[2],
                                   source.cfg.task)
            assert len(source._tokens(longer)) > limit
        else:  # cut inside the last sentence: that sentence alone did not fit
            assert pieces[-1].endswith(context) and len(context) < len(pieces[-1])
    assert truncated >= 5 and sentence_cuts >= 3


def test_a_single_long_sentence_is_cut_by_tokens(prepared):
    index = next(i for i in range(len(prepared)) if prepared.context_pieces(i)[-1].startswith(
        "This single sentence"))
    source = _source(prepared, 120, lam=0.0)
    position = next(p for p in range(10 * len(prepared))
                    if order_index(p, len(prepared), 3) == index)
    prompt = source.prompt(position, random.Random(0))
    assert prompt.truncated and 110 <= len(prompt.prompt_ids) <= 120
    context = _context_of(source, index, Task.ASR, prompt.prompt_ids)
    assert LONG.endswith(context.strip()) and len(context) > 50


def test_an_msr_next_segment_too_long_for_the_budget_is_cut_from_the_right(prepared):
    """MSR shows s_i+1 after the mask; when it alone overflows the budget its leading tokens
    (what directly follows the mask) are kept and the context is left empty."""
    index = next(i for i in range(len(prepared))
                 if prepared.texts(i)[2].startswith("This single sentence"))
    source = _source(prepared, 160, lam=1.0)
    position = next(p for p in range(10 * len(prepared))
                    if order_index(p, len(prepared), 3) == index)
    prompt = next(q for q in (source.prompt(position, random.Random(k)) for k in range(64))
                  if q.task == "msr")
    text = source.tokenizer.decode(prompt.prompt_ids)
    assert prompt.truncated and len(prompt.prompt_ids) <= 160
    assert "This single sentence keeps going" in text and "until it finally ends" not in text
    assert len(source._tokens(render_prompt(Task.MSR, "", LONG, source.cfg.task))) > 160


def test_budget_below_the_template_is_an_error(prepared):
    source = _source(prepared, 20)
    with pytest.raises(UsageError, match="max_prompt_tokens=20"):
        _prompts(source, len(prepared))


def test_format_sft_fits_the_same_budget(prepared):
    """`rlpt format-sft` cuts prompts as RLPT does, MSR's over-long s_i+1 included."""
    from transformers import AutoTokenizer

    from megatron_rlpt.data.tokenizer import default_tokenizer_path
    from megatron_rlpt.format_sft import format_examples

    tokenizer = AutoTokenizer.from_pretrained(default_tokenizer_path())
    records = list(format_examples(prepared, TaskConfig(lam=1.0), seed=0, tokenizer=tokenizer,
                                   max_prompt_tokens=160))
    assert len(records) == len(prepared)
    lengths = [len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
               for r in records]
    assert max(lengths) <= 160
    assert any("This single sentence keeps going" in r["prompt"] and "<MASK>" in r["prompt"]
               for r in records)
