"""The HTTP judge against real servers on 127.0.0.1 that misbehave on purpose."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time

import pytest

from megatron_rlpt.reward import JudgeConfig, JudgeItem, JudgeStatus, build_judge
from megatron_rlpt.reward.http_judge import EndpointPool, HTTPJudge, backoff_delay
from megatron_rlpt.reward.prompts import PREFIX_JUDGE_TEMPLATE, render_judge_prompt
from megatron_rlpt.reward.scoring import score_completions
from megatron_rlpt.tasks import END_TAG, START_TAG

from .servers import ScriptedJudgeServer

REF = "The cat sat on the mat. It purred loudly."


@pytest.fixture()
def server():
    with ScriptedJudgeServer(hang_s=3.0, trickle_s=0.3) as srv:
        yield srv


def _judge(urls, **kwargs) -> HTTPJudge:
    defaults = dict(timeout_s=0.6, connect_timeout_s=0.5, max_retries=2, backoff_initial_s=0.01,
                    backoff_max_s=0.05, max_concurrency=16, seed=0)
    defaults.update(kwargs)
    return HTTPJudge(urls, PREFIX_JUDGE_TEMPLATE, **defaults)


def _prompt(item: JudgeItem) -> str:
    return render_judge_prompt(PREFIX_JUDGE_TEMPLATE, item.predicted, item.reference)


@pytest.mark.parametrize("api", ["chat", "completions", "sglang"])
def test_wire_formats(server: ScriptedJudgeServer, api: str) -> None:
    judge = _judge([server.url + "/v1/"], api=api)
    items = [JudgeItem("the cat sat", REF), JudgeItem("a dog barked", REF),
             JudgeItem("The cat sat on the mat. It purred", REF)]
    results = judge.score(items)
    assert [(r.status, r.reward) for r in results] == [
        (JudgeStatus.OK, 1.0), (JudgeStatus.OK, 0.0), (JudgeStatus.OK, 1.0)]
    path = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
            "sglang": "/generate"}[api]
    assert server.requests[path] == 3
    # The model name is asked once per endpoint (OpenAI APIs), never for SGLang's native API.
    assert server.requests["/v1/models"] == (0 if api == "sglang" else 1)
    assert judge.stats.requests == 3 and judge.stats.retries == 0


# (directive, expected status, server attempts) with max_retries=2 (3 attempts at most).
FAULTS = [
    ("", JudgeStatus.OK, 1),
    ("[[fault:503*2]]", JudgeStatus.OK, 3),
    ("[[fault:500]]", JudgeStatus.HTTP_ERROR, 3),
    ("[[fault:400]]", JudgeStatus.HTTP_ERROR, 1),  # a client error is not retried
    ("[[fault:404]]", JudgeStatus.HTTP_ERROR, 1),
    ("[[fault:429*1]]", JudgeStatus.OK, 2),  # rate limiting is
    ("[[fault:timeout*1]]", JudgeStatus.OK, 2),
    ("[[fault:timeout]]", JudgeStatus.TIMEOUT, 3),
    ("[[fault:slow]]", JudgeStatus.TIMEOUT, 3),  # headers at once, body too slow
    ("[[fault:garbage*2]]", JudgeStatus.OK, 3),
    ("[[fault:garbage]]", JudgeStatus.BAD_RESPONSE, 3),
    ("[[fault:badjson]]", JudgeStatus.BAD_RESPONSE, 3),
    ("[[fault:reset*1]]", JudgeStatus.OK, 2),
    ("[[fault:reset]]", JudgeStatus.CONNECTION_ERROR, 3),
    ("[[fault:noscore]]", JudgeStatus.PARSE_ERROR, 1),  # an answer, just not a score
    ("[[fault:both]]", JudgeStatus.PARSE_ERROR, 1),
]


@pytest.mark.parametrize("api", ["chat", "sglang"])
def test_faults_are_retried_or_reported_never_rewarded(server: ScriptedJudgeServer, api: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    judge = _judge([server.url], api=api)
    items = [JudgeItem(f"the cat sat {d}", REF) for d, _, _ in FAULTS]
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        results = judge.score(items)
    elapsed = time.monotonic() - start
    for (directive, status, attempts), item, result in zip(FAULTS, items, results):
        assert result.status is status, directive
        assert server.attempts_for(_prompt(item)) == attempts, directive
        if status is JudgeStatus.OK:
            assert result.reward == 1.0
        else:
            assert not result.valid and math.isnan(result.reward), directive
    total = sum(a for _, _, a in FAULTS)
    assert judge.stats.requests == total
    assert judge.stats.retries == total - len(FAULTS)
    expected = {}
    for _, status, _ in FAULTS:
        expected[status.value] = expected.get(status.value, 0) + 1
    assert dict(judge.stats.statuses) == expected
    # Bounded: at most 3 attempts × 0.6 s per item, concurrently, plus tiny backoffs.
    assert elapsed < 10
    assert "warning" in caplog.text.lower() or any(r.levelno == logging.WARNING for r in caplog.records)


def test_unreachable_endpoint_and_failover(server: ScriptedJudgeServer) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    alone = _judge([dead], api="sglang")
    [result] = alone.score([JudgeItem("the cat", REF)])
    assert result.status is JudgeStatus.CONNECTION_ERROR and alone.stats.requests == 3
    # With a live endpoint beside it, a retry goes elsewhere and the item is judged.
    both = _judge([dead, server.url], api="sglang", routing="round_robin")
    results = both.score([JudgeItem(f"the cat {i}", REF) for i in range(6)])
    assert all(r.status is JudgeStatus.OK for r in results)
    assert both.pool.sent[1] == 6 and both.pool.sent[0] == 3


def test_routing_and_concurrency_bound() -> None:
    with ScriptedJudgeServer() as a, ScriptedJudgeServer() as b:
        rr = _judge([a.url, b.url], api="sglang", routing="round_robin", max_concurrency=3)
        rr.score([JudgeItem(f"the cat {i}", REF) for i in range(10)])
        assert a.requests["/generate"] == 5 and b.requests["/generate"] == 5
        assert max(a.max_in_flight, b.max_in_flight) <= 3
    with ScriptedJudgeServer(base_delay_s=0.3) as slow, ScriptedJudgeServer() as fast:
        ll = _judge([slow.url, fast.url], api="sglang", routing="least_loaded",
                    max_concurrency=4, timeout_s=5.0)
        ll.score([JudgeItem(f"the cat {i}", REF) for i in range(24)])
        assert slow.requests["/generate"] + fast.requests["/generate"] == 24
        assert slow.requests["/generate"] < fast.requests["/generate"]


def test_endpoint_pool_rules() -> None:
    pool = EndpointPool(["http://a:1/v1", "http://b:2/"], routing="least_loaded")
    assert pool.endpoints == ["http://a:1", "http://b:2"]
    first = pool.acquire()
    second = pool.acquire()
    assert {first, second} == {0, 1}
    pool.release(first)
    assert pool.acquire() == first  # fewest in flight
    assert pool.acquire(avoid=0) == 1
    with pytest.raises(ValueError):
        EndpointPool([])
    with pytest.raises(ValueError):
        EndpointPool(["ftp://x"])
    import random
    rng = random.Random(0)
    delays = [backoff_delay(k, 0.5, 4.0, rng) for k in range(6)]
    assert all(0.25 <= d <= 0.5 for d in delays[:1]) and all(2.0 <= d <= 4.0 for d in delays[3:])


def test_rejudge_after_retries_and_secret_hygiene(server: ScriptedJudgeServer,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RLPT_TEST_JUDGE_KEY", "sk-very-secret-value")
    cfg = JudgeConfig(kind="http", endpoints=[server.url], api="chat", api_key_env="RLPT_TEST_JUDGE_KEY",
                      timeout_s=0.6, max_retries=1, backoff_initial_s=0.01, rejudge_attempts=1)
    judge = build_judge(cfg)
    completions = [f"{START_TAG}the cat sat [[fault:503*3]]{END_TAG}",
                   f"{START_TAG}the cat sat [[fault:503]]{END_TAG}",
                   "no prediction tags"]
    with caplog.at_level(logging.DEBUG):
        results = score_completions(judge, completions, [REF] * 3,
                                    rejudge_attempts=cfg.rejudge_attempts)
    # 2 attempts fail, the re-judge's first attempt fails too, its retry succeeds.
    assert results[0].status is JudgeStatus.OK and results[0].reward == 1.0
    assert results[1].status is JudgeStatus.HTTP_ERROR and math.isnan(results[1].reward)
    assert results[2].status is JudgeStatus.NO_PREDICTION and results[2].reward == 0.0
    assert judge.stats.rejudged == 2
    assert server.authorization == {"Bearer sk-very-secret-value"}
    assert "sk-very-secret-value" not in caplog.text


def test_async_use_and_sync_guard(server: ScriptedJudgeServer) -> None:
    judge = _judge([server.url], api="completions")

    async def main():
        groups = [[JudgeItem(f"the cat {g}{i}", REF) for i in range(4)] for g in range(3)]
        try:
            results = await asyncio.gather(*(judge.ascore(g) for g in groups))
            with pytest.raises(RuntimeError, match="ascore"):
                judge.score(groups[0])
        finally:
            await judge.aclose()
        return results

    results = asyncio.run(main())
    assert [len(r) for r in results] == [4, 4, 4]
    assert all(r.status is JudgeStatus.OK for group in results for r in group)
