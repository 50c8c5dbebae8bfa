"""A small generated corpus whose next sentence follows from the context.

Used by the quickstart and by the learning tests: a tiny model learns it in minutes on a CPU,
and a prediction can be checked exactly.
"""

from __future__ import annotations

import random

COLOURS = ("red", "green", "blue", "amber")
"""The cycle every lamp follows, in this order."""
THINGS = ("lamp", "light")


def cycling_document(rng: random.Random, sentences: int) -> str:
    """`The lamp changes colour every hour. At 3 o'clock the lamp shows blue. At 4 o'clock ...`

    Hours count up (12 is followed by 1) and colours follow COLOURS, so each sentence follows
    from the one before it by a fixed rule; seven words each, so segmentation keeps them apart.
    """
    thing = rng.choice(THINGS)
    hour, colour = rng.randint(1, 12), rng.randrange(len(COLOURS))
    lines = [f"The {thing} changes its colour every hour, all night long."]
    for _ in range(sentences):
        lines.append(f"At {hour} o'clock the {thing} shows {COLOURS[colour]}.")
        hour, colour = hour % 12 + 1, (colour + 1) % len(COLOURS)
    return " ".join(lines)


def cycling_corpus(documents: int, seed: int) -> list[dict[str, str]]:
    """`documents` JSONL-ready records `{"id", "text"}` of 3 to 7 sentences each.

    Documents that start alike are near-duplicates, which `rlpt prepare` removes.
    """
    rng = random.Random(seed)
    return [{"id": f"cycle-{i:05d}", "text": cycling_document(rng, rng.randint(3, 7))}
            for i in range(documents)]
