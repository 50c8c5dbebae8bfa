"""The in-process transformers engine against transformers itself, on a tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_rlpt.rollout.base import RolloutEngine, SamplingParams
from megatron_rlpt.rollout.hf_engine import HFEngine, policy_logprobs

PROMPTS = [
    "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$",
    "What is 2 + 2?",
    "Let $x$ be a real number such that $x^2 = 4$. Find all values of $x$ and explain.",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HFEngine:
    return HFEngine(str(tiny_model_dir), batch_size=4, progress=False)


def _full_logprobs(engine: HFEngine, prompt: str, completion: list[int]) -> torch.Tensor:
    """Log-probs of `completion` after `prompt` from one plain forward pass, no cache."""
    ids = torch.tensor([engine._encode(prompt) + completion])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0].float()
    start = ids.shape[1] - len(completion)
    logp = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_is_a_rollout_engine(engine: HFEngine) -> None:
    assert isinstance(engine, RolloutEngine)


def test_greedy_matches_transformers_generate(engine: HFEngine) -> None:
    out = engine.generate(PROMPTS, 1, SamplingParams(max_tokens=12, temperature=0))
    for prompt, (completion,) in zip(PROMPTS, out):
        ids = torch.tensor([engine._encode(prompt)])
        ref = engine.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=engine.pad_id,
        )[0, ids.shape[1] :].tolist()
        n = len(completion.token_ids)
        assert completion.token_ids == ref[:n]
        assert completion.finish_reason == ("stop" if n < 12 else "length")
        assert completion.text == engine.tokenizer.decode(
            completion.token_ids, skip_special_tokens=True
        )


def test_logprobs_equal_a_plain_forward(engine: HFEngine) -> None:
    # temperature 1, no top-p / top-k: the sampling policy is the model itself.
    out = engine.generate(PROMPTS, 2, SamplingParams(max_tokens=10, temperature=1.0, seed=3))
    for prompt, row in zip(PROMPTS, out):
        for c in row:
            ref = _full_logprobs(engine, prompt, c.token_ids)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)


def test_seeded_sampling_is_reproducible_across_batch_sizes(tiny_model_dir: Path) -> None:
    params = SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=11)
    a = HFEngine(str(tiny_model_dir), batch_size=16, progress=False).generate(PROMPTS, 3, params)
    b = HFEngine(str(tiny_model_dir), batch_size=2, progress=False).generate(PROMPTS, 3, params)
    assert [[c.token_ids for c in row] for row in a] == [[c.token_ids for c in row] for row in b]
    for x, y in zip(a, b):
        for cx, cy in zip(x, y):
            assert cx.logprobs == pytest.approx(cy.logprobs, abs=1e-4)
    # n samples differ from each other, and another seed gives other samples.
    assert len({tuple(c.token_ids) for c in a[0]}) > 1
    params.seed = 12
    c = HFEngine(str(tiny_model_dir), batch_size=16, progress=False).generate(PROMPTS, 3, params)
    assert [[x.token_ids for x in row] for row in c] != [[x.token_ids for x in row] for row in a]


def test_top_k_and_top_p_restrict_the_choice(engine: HFEngine) -> None:
    prompt = PROMPTS[1]
    ids = torch.tensor([engine._encode(prompt)])
    with torch.no_grad():
        first = engine.model(input_ids=ids).logits[0, -1].float()
    top2 = set(torch.topk(first, 2).indices.tolist())
    out = engine.generate(
        [prompt], 24, SamplingParams(max_tokens=1, temperature=1.5, top_k=2, seed=0)
    )
    assert {c.token_ids[0] for c in out[0]} <= top2
    # top-p: the policy keeps the smallest set of likeliest tokens reaching the mass.
    probs = torch.softmax(first, -1)
    kept = policy_logprobs(first[None], SamplingParams(temperature=1.0, top_p=0.5))[0].isfinite()
    order = torch.argsort(probs, descending=True)
    size = int(kept.sum())
    assert set(order[:size].tolist()) == set(kept.nonzero().flatten().tolist())
    assert probs[order[: size - 1]].sum() < 0.5 <= probs[order[:size]].sum() + 1e-6
    assert policy_logprobs(first[None], SamplingParams(temperature=1.0, top_p=0.5))[0][
        kept
    ].exp().sum() == pytest.approx(1.0)


def test_stop_strings(engine: HFEngine) -> None:
    free = engine.generate(PROMPTS[:1], 1, SamplingParams(max_tokens=24, temperature=0))[0][0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    cut = engine.generate(
        PROMPTS[:1], 1, SamplingParams(max_tokens=24, temperature=0, stop=[stop])
    )[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text.endswith(stop) and free.text.startswith(cut.text)
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_update_weights(tiny_model_dir: Path) -> None:
    engine = HFEngine(str(tiny_model_dir), batch_size=4, progress=False)
    params = SamplingParams(max_tokens=8, temperature=0)
    before = engine.generate(PROMPTS, 1, params)
    state = {
        k: torch.randn_like(v) for k, v in engine.model.state_dict().items() if "layers.0." in k
    }
    engine.update_weights(state)
    assert torch.equal(
        engine.model.state_dict()["model.layers.0.mlp.up_proj.weight"],
        state["model.layers.0.mlp.up_proj.weight"],
    )
    after = engine.generate(PROMPTS, 1, params)
    assert [r[0].token_ids for r in after] != [r[0].token_ids for r in before]
    engine.update_weights(str(tiny_model_dir))  # back to the saved weights
    assert [r[0].token_ids for r in engine.generate(PROMPTS, 1, params)] == [
        r[0].token_ids for r in before
    ]
    with pytest.raises(ValueError, match="unknown weight names"):
        engine.update_weights({"not.a.weight": torch.zeros(1)})


def test_context_limit(engine: HFEngine) -> None:
    long_prompt = "x " * 9000
    with pytest.raises(ValueError, match="leaves no room"):
        engine.generate([long_prompt], 1, SamplingParams(max_tokens=4, temperature=0))
