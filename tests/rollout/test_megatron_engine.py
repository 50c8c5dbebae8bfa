"""The in-process Megatron rollout engine, at TP=1 and TP=2, on one set of weights.

A TP=1 run initialises a tiny model, saves it and runs the suite in `workers.engine_suite`; a
TP=2 run loads that checkpoint and runs the same suite. The tests below assert on what they
returned. Everything runs the real megatron-core under torchrun over gloo on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from tests.multirank import run_multirank

pytestmark = pytest.mark.multirank
TOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from tests.rollout.workers import make_tokenizer

    return make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def tp1(ckpt, tokenizer_dir) -> dict:
    return run_multirank("tests.rollout.workers:engine_suite", nproc=1, ckpt=ckpt,
                         tokenizer_dir=tokenizer_dir, tp=1, save=True)[0]


@pytest.fixture(scope="module")
def tp2_ranks(tp1, ckpt, tokenizer_dir) -> list[dict]:
    return run_multirank("tests.rollout.workers:engine_suite", nproc=2, ckpt=ckpt,
                         tokenizer_dir=tokenizer_dir, tp=2, save=False)


@pytest.fixture(scope="module", params=["tp1", "tp2"])
def run(request, tp1, tp2_ranks) -> dict:
    return tp1 if request.param == "tp1" else tp2_ranks[0]


def _tokens(result: list[list[dict]]) -> list[list[list[int]]]:
    return [[c["token_ids"] for c in group] for group in result]


def _all(result: list[list[dict]]):
    for i, group in enumerate(result):
        for j, c in enumerate(group):
            yield i, j, c


def test_padded_vocabulary_exists(run):
    # Otherwise the padded-row tests below would test nothing.
    assert run["padded"] > run["vocab"] >= run["tokenizer_size"]


def test_shapes_and_finish_reasons(run):
    for key, n, max_tokens in (("greedy", 2, 16), ("sampled", 3, 12), ("tempered", 2, 10)):
        result = run[key]
        assert len(result) == len(run["prompt_ids"])
        for _, _, c in _all(result):
            assert len(c["token_ids"]) == len(c["logprobs"]) == max_tokens
            assert c["finish_reason"] == "length"
        assert all(len(group) == n for group in result)


def test_kv_cache_equals_full_recompute(run):
    assert _tokens(run["greedy"]) == _tokens(run["greedy_nocache"])
    assert _tokens(run["sampled"]) == _tokens(run["sampled_nocache"])
    for (_, _, a), (_, _, b) in zip(_all(run["sampled"]), _all(run["sampled_nocache"])):
        assert torch.allclose(torch.tensor(a["logprobs"]), torch.tensor(b["logprobs"]), atol=TOL)


def test_greedy_samples_of_a_prompt_agree_and_prompts_differ(run):
    tokens = _tokens(run["greedy"])
    assert all(group[0] == group[1] for group in tokens)
    assert len({tuple(group[0]) for group in tokens}) == len(tokens)


def test_logprobs_equal_fresh_forward_at_temperature_one(run):
    for (i, j, c), ref in zip(_all(run["sampled"]), (r for g in run["sampled_ref"] for r in g)):
        got = torch.tensor(c["logprobs"])
        assert (got - ref).abs().max().item() <= TOL, (i, j)
        assert (got < 0).all()


def test_raw_logprobs_include_the_padded_rows(run):
    # Same draws as the sampling mode; log-probs of the whole output layer.
    assert _tokens(run["sampled_raw"]) == _tokens(run["sampled"])
    for (_, _, c), ref in zip(_all(run["sampled_raw"]), (r for g in run["raw_ref"] for r in g)):
        assert (torch.tensor(c["logprobs"]) - ref).abs().max().item() <= TOL
    # The padded rows hold mass at random init, so the two modes differ.
    raw = torch.tensor(run["sampled_raw"][0][0]["logprobs"])
    policy = torch.tensor(run["sampled"][0][0]["logprobs"])
    assert (raw < policy).all()


def test_logprobs_of_tempered_filtered_distribution(run):
    for (_, _, c), ref in zip(_all(run["tempered"]),
                              (r for g in run["tempered_ref"] for r in g)):
        got = torch.tensor(c["logprobs"])
        assert torch.isfinite(ref).all()  # every drawn token survived the filters
        assert (got - ref).abs().max().item() <= TOL


def test_top_k_one_and_tiny_top_p_are_greedy(run):
    greedy = [[g[0][:8]] * 2 for g in _tokens(run["greedy"])]
    for key in ("top_k1", "top_p_tiny"):
        assert _tokens(run[key]) == greedy
        assert all(lp == 0.0 for _, _, c in _all(run[key]) for lp in c["logprobs"])


def test_seeded_sampling_is_reproducible_and_batch_independent(run):
    # One row per batch instead of twelve: the same draws.
    assert _tokens(run["sampled_batch1"]) == _tokens(run["sampled"])[:2]
    for (_, _, a), (_, _, b) in zip(_all(run["sampled"]), _all(run["sampled_batch1"])):
        assert torch.allclose(torch.tensor(a["logprobs"]), torch.tensor(b["logprobs"]), atol=TOL)
    # Samples of one prompt differ from each other and from another seed's.
    tokens = _tokens(run["sampled"])
    assert all(len({tuple(s) for s in group}) == 3 for group in tokens)
    assert _tokens(run["sampled_seed12"]) != tokens
    assert run["rng_unchanged"]


def test_max_tokens_and_context_length(run):
    for _, _, c in _all(run["short"]):
        assert c["finish_reason"] == "length" and len(c["token_ids"]) == 5
    (c,), = run["context_end"]
    assert c["finish_reason"] == "length" and len(c["token_ids"]) == 3


def test_stop_string_is_kept_and_ends_the_text(run):
    stop = run["stop_string"]
    full = run["sampled"][0][0]
    first = run["stopped"][0][0]
    assert first["finish_reason"] == "stop"
    cut = full["text"].find(stop) + len(stop)
    assert first["text"] == full["text"][:cut]
    assert first["token_ids"] == full["token_ids"][: len(first["token_ids"])]
    assert len(first["token_ids"]) < len(full["token_ids"])
    for c in run["stopped"][0]:
        if c["finish_reason"] == "stop":
            assert c["text"].endswith(stop)
        else:
            assert stop not in c["text"] and len(c["token_ids"]) == 12


def test_stop_token_ends_the_completion_and_is_not_in_the_text(run, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    token = run["stop_token"]
    full = run["sampled"][0][0]["token_ids"]
    first = run["stopped_token"][0][0]
    k = full.index(token)
    assert first["finish_reason"] == "stop"
    assert first["token_ids"] == full[: k + 1]
    assert first["text"] == tok.decode(full[:k], skip_special_tokens=False)


def test_eos_stops_by_default(run):
    for _, _, c in _all(run["eos"]):
        assert c["finish_reason"] == "stop"
        assert len(c["token_ids"]) == 1 and c["text"] == ""


def test_padded_rows_are_never_produced(run):
    vocab = run["vocab"]
    for key in ("padded_greedy", "padded_sampled", "padded_nocache"):
        assert all(t < vocab for _, _, c in _all(run[key]) for t in c["token_ids"])
    # Masked rows change nothing for the real ones.
    assert _tokens(run["padded_greedy"]) == _tokens(run["greedy"])
    assert _tokens(run["padded_nocache"]) == _tokens(run["greedy"])
    assert _tokens(run["padded_sampled"]) == _tokens(run["sampled"])


def test_text_api_matches_token_api(run):
    assert _tokens(run["text_api"]) == _tokens(run["greedy"])
    for _, _, c in _all(run["text_api"]):
        assert c["text"]


def test_engine_uses_the_live_weights_and_restores_train_mode(run):
    assert run["train_mode_after"]
    assert _tokens(run["greedy_after_step"]) == _tokens(run["fresh_after_step"])
    before = [[g[0]] for g in _tokens(run["greedy"])]
    assert _tokens(run["greedy_after_step"]) != before
    assert run["train_metrics_2"]["lm_loss"] < run["train_metrics"]["lm_loss"]


def test_tp2_ranks_agree_and_match_tp1(tp1, tp2_ranks):
    r0, r1 = tp2_ranks
    for key in ("greedy", "sampled", "tempered", "stopped", "padded_sampled", "text_api"):
        assert r0[key] == r1[key], key
    assert _tokens(tp1["greedy"]) == _tokens(r0["greedy"])
    assert _tokens(tp1["sampled"]) == _tokens(r0["sampled"])
    for (_, _, a), (_, _, b) in zip(_all(tp1["sampled"]), _all(r0["sampled"])):
        assert torch.allclose(torch.tensor(a["logprobs"]), torch.tensor(b["logprobs"]), atol=TOL)


def test_pipeline_parallel_is_refused(tp2_ranks):
    for r in tp2_ranks:
        assert r["pp2_error"] is not None and "pipeline_parallel=1" in r["pp2_error"]
        assert "vllm" in r["pp2_error"]


@pytest.fixture(scope="module")
def archs(tokenizer_dir) -> dict:
    return run_multirank("tests.rollout.workers:arch_suite", nproc=1,
                         tokenizer_dir=tokenizer_dir, archs=["qwen2", "qwen3"],
                         speed_prompts=8, speed_n=4, speed_tokens=32)[0]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_other_architectures(archs, arch):
    # QKV bias (Qwen2.5), QK-norm with its own head size (Qwen3), tied embeddings.
    result = archs[arch]
    assert _tokens(result["greedy"]) == _tokens(result["greedy_nocache"])
    for (_, _, c), ref in zip(_all(result["sampled"]),
                              (r for g in result["sampled_ref"] for r in g)):
        assert (torch.tensor(c["logprobs"]) - ref).abs().max().item() <= TOL


def test_bf16_model_generates(archs):
    for _, _, c in _all(archs["bf16"]):
        assert len(c["token_ids"]) == 12 and c["finish_reason"] == "length"
        assert all(0 <= t < archs["bf16_vocab"] for t in c["token_ids"])
        assert all(lp < 0 for lp in c["logprobs"])


def test_kv_cache_speedup(archs):
    speed = archs["speed"]
    assert speed["kv_tokens"] == speed["nocache_tokens"]
    ratio = speed["nocache_seconds"] / speed["kv_seconds"]
    print(f"32 rows x 32 tokens: KV cache {speed['kv_seconds']:.2f}s, "
          f"full recompute {speed['nocache_seconds']:.2f}s, speedup {ratio:.1f}x")
