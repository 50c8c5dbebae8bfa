"""Sentence segmentation: NLTK Punkt with the model shipped in a package, never downloaded."""

from __future__ import annotations

import nltk
import pytest

from megatron_rlpt.data.config import SegmentConfig
from megatron_rlpt.data.segment import segment, sentence_tokenizer, write_punkt_tab


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nltk.download must never be called")

    monkeypatch.setattr(nltk, "download", refuse)


def test_punkt_handles_abbreviations():
    text = "Dr. Smith met Mr. Jones at 3 p.m. in Washington. They talked. It went well."
    spans = list(sentence_tokenizer().span_tokenize(text))
    assert [text[a:b] for a, b in spans] == [
        "Dr. Smith met Mr. Jones at 3 p.m. in Washington.", "They talked.", "It went well."]


def test_written_punkt_tab_makes_nltk_sent_tokenize_work_offline(tmp_path, monkeypatch):
    write_punkt_tab(tmp_path)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    text = "Dr. Smith measured 3.5 kg. The result, e.g. the mass, was small. Next one."
    expected = [text[a:b] for a, b in sentence_tokenizer().span_tokenize(text)]
    assert nltk.sent_tokenize(text) == expected
    assert expected[0] == "Dr. Smith measured 3.5 kg." and len(expected) >= 3


TEXT = ("Heading\n\nThe first sentence is long enough to count. Short one. "
        "The third sentence is also long enough to count.\n\nTail.")


def test_short_segments_merge_into_the_next():
    spans, stats = segment(TEXT, SegmentConfig(min_chars=20, min_words=5, short="merge"))
    pieces = [TEXT[a:b] for a, b in spans]
    assert pieces == [
        "Heading\n\nThe first sentence is long enough to count.",
        "Short one. The third sentence is also long enough to count.\n\nTail.",
    ]
    assert stats.sentences == 5 and stats.merged == 3


def test_short_segments_can_be_dropped():
    spans, stats = segment(TEXT, SegmentConfig(min_chars=20, min_words=5, short="drop"))
    assert [TEXT[a:b] for a, b in spans] == [
        "The first sentence is long enough to count.",
        "The third sentence is also long enough to count."]
    assert stats.dropped == 3


def test_line_breaks_are_boundaries():
    text = "A title without a period\nThe body starts here and goes on."
    spans, _ = segment(text, SegmentConfig(min_chars=1, min_words=1))
    assert [text[a:b] for a, b in spans] == ["A title without a period",
                                             "The body starts here and goes on."]
