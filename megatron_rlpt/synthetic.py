"""Small generated corpora whose next sentence follows from the context.

Used by the quickstart and by the learning tests: a tiny model can learn them in minutes on a
CPU, and a prediction can be checked exactly. Each document counts in a fixed step from a start
value, one sentence per number, so sentence i+1 is determined by sentences 1..i.
"""

from __future__ import annotations

import random

SUBJECTS = ("apples", "stones", "coins", "birds", "books", "steps", "cells", "atoms")


def counting_document(rng: random.Random, sentences: int = 8) -> str:
    """`We count coins in steps of 3, starting at 12. Now there are 12 coins. Now there are 15 ...`"""
    subject = rng.choice(SUBJECTS)
    start, step = rng.randint(1, 30), rng.randint(2, 9)
    lines = [f"We count {subject} in steps of {step}, starting at {start}."]
    lines += [f"Now there are {start + k * step} {subject}." for k in range(sentences)]
    return " ".join(lines)


def counting_corpus(documents: int, seed: int, sentences: int = 8) -> list[dict[str, str]]:
    """`documents` JSONL-ready records `{"id", "text"}`."""
    rng = random.Random(seed)
    return [{"id": f"count-{i:05d}", "text": counting_document(rng, sentences)}
            for i in range(documents)]


def wrong_sentence(sentence: str, rng: random.Random) -> str:
    """The same sentence with its number off by a small nonzero amount."""
    words = sentence.split()
    for i, w in enumerate(words):
        if w.isdigit():
            words[i] = str(int(w) + rng.choice([-3, -2, -1, 1, 2, 3]))
            break
    return " ".join(words)
