"""A small generated corpus whose next sentence follows from the context, and warm-up data.

Used by the quickstart and by the learning tests: a tiny model learns it in minutes on a CPU,
and a prediction can be checked exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

COLOURS = ("red", "green", "blue", "amber")
"""The cycle every lamp follows, in this order."""
THINGS = ("lamp", "light")
ABSTAIN = "I cannot tell what comes next."
"""The warm-up's stand-in for a wrong answer."""


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


def warmup_examples(dataset: Any, task_cfg: Any, seed: int,
                    correct_fraction: float = 0.5) -> Iterator[dict[str, str]]:
    """SFT records that teach the prediction format: ASR and MSR prompts (mixed as `task_cfg`
    says) of `dataset`'s triples, answered with the true sentence `correct_fraction` of the time
    and else with an abstention (`ABSTAIN`), which the judge never rewards.

    RL then has a choice a tiny policy can learn within a few steps: attempt the prediction
    (rewarded when it is right) rather than abstain; the abstention is one fixed sentence, so
    the choice is made at its first token.
    """
    from megatron_rlpt.tasks import Task, msr_probability, render_prompt

    rng = random.Random(seed)
    for i in range(len(dataset)):
        context, target, next_segment = dataset.texts(i)
        answer = target if rng.random() < correct_fraction else ABSTAIN
        task = Task.MSR if rng.random() < msr_probability(task_cfg) else Task.ASR
        prompt = render_prompt(task, context, next_segment, task_cfg)
        yield {"prompt": prompt,
               "response": f"<|startofprediction|>{answer}<|endofprediction|>"}
