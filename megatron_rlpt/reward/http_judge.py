"""The generative judge over HTTP: vLLM, SGLang or any OpenAI-compatible server.

Three wire formats: OpenAI `/v1/chat/completions` (the prompt as one user message, the server
applies the judge model's chat template), OpenAI `/v1/completions` and SGLang's native
`/generate` (the prompt sent as is). Several endpoints share the load, round-robin or
least-loaded. Every request has a timeout; timeouts, connection errors, 5xx (and 408/429) are
retried with exponential backoff and jitter, other 4xx are not. What still fails is returned as
a failure status, never as a reward.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import aiohttp

from megatron_rlpt.reward.base import Judge, JudgeItem, JudgeResult, JudgeStatus
from megatron_rlpt.reward.prompts import parse_score, render_judge_prompt

logger = logging.getLogger(__name__)

APIS = ("chat", "completions", "sglang")


class _Failed(Exception):
    """One attempt failed."""

    def __init__(self, status: JudgeStatus, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.status, self.detail, self.retryable = status, detail, retryable


class EndpointPool:
    """Chooses the server for each request: round-robin, or the one with fewest in flight."""

    def __init__(self, endpoints: Sequence[str], routing: str = "least_loaded") -> None:
        if not endpoints:
            raise ValueError("the HTTP judge needs at least one endpoint")
        if routing not in ("round_robin", "least_loaded"):
            raise ValueError(f"unknown routing {routing!r}; use 'round_robin' or 'least_loaded'")
        self.endpoints = [normalize_endpoint(e) for e in endpoints]
        self.routing = routing
        self.in_flight = [0] * len(self.endpoints)
        self.sent = [0] * len(self.endpoints)
        self._next = 0

    def acquire(self, avoid: int | None = None) -> int:
        """Index of the endpoint for the next request (not `avoid`, if there is a choice)."""
        n = len(self.endpoints)
        order = [(self._next + k) % n for k in range(n)]
        if avoid is not None and n > 1:
            order.remove(avoid)
        if self.routing == "least_loaded":
            choice = min(order, key=lambda i: self.in_flight[i])  # ties: round-robin order
        else:
            choice = order[0]
        self._next = (choice + 1) % n
        self.in_flight[choice] += 1
        self.sent[choice] += 1
        return choice

    def release(self, index: int) -> None:
        self.in_flight[index] -= 1


def normalize_endpoint(url: str) -> str:
    """`http://host:port` from a base URL that may end in `/` or `/v1`."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"judge endpoint {url!r} must start with http:// or https://")
    return url


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter': half the delay fixed, half random."""
    delay = min(maximum, initial * (2.0 ** attempt))
    return delay * (0.5 + 0.5 * rng.random())


def extract_text(api: str, data: Any) -> str:
    """The generated text from a server's JSON answer; raises ValueError if it is not there."""
    if api == "sglang":
        if isinstance(data, list):  # a batched request answers with a list
            data = data[0]
        text = data["text"]
    elif api == "chat":
        message = data["choices"][0]["message"]
        text = message.get("content")
        if text is None:  # reasoning parsers may leave content empty and put text aside
            text = message.get("reasoning_content") or message.get("reasoning") or ""
    else:
        text = data["choices"][0]["text"]
    if not isinstance(text, str):
        raise ValueError("generated text is not a string")
    return text


class HTTPJudge(Judge):
    """The generative judge, talking to one or more inference servers."""

    def __init__(
        self,
        endpoints: Sequence[str],
        template: str,
        *,
        api: str = "chat",
        model: str | None = None,
        api_key_env: str | None = None,
        max_tokens: int = 32,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        routing: str = "least_loaded",
        max_concurrency: int = 64,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        retry_statuses: Sequence[int] = (408, 429),
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if api not in APIS:
            raise ValueError(f"unknown judge api {api!r}; use one of {', '.join(APIS)}")
        if max_concurrency < 1 or timeout_s <= 0 or max_retries < 0:
            raise ValueError("max_concurrency >= 1, timeout_s > 0 and max_retries >= 0 required")
        self.pool = EndpointPool(endpoints, routing)
        self.template = template
        self.api = api
        self.model = model
        self.max_tokens, self.temperature = max_tokens, temperature
        self.extra_body = dict(extra_body or {})
        self.max_concurrency = max_concurrency
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_retries = max_retries
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.retry_statuses = frozenset(retry_statuses)
        self._rng = random.Random(seed)
        self._headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"environment variable {api_key_env} (judge API key) is empty")
            self._headers["Authorization"] = f"Bearer {key}"
        self._models: dict[str, str] = {}
        self._discovery: dict[tuple[int, str], asyncio.Future] = {}
        # One semaphore and one session per event loop: asyncio objects are bound to their loop.
        self._loop_state: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore,
                                          aiohttp.ClientSession]] = {}

    # -- public ----------------------------------------------------------------------------

    def score(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Judge `items` from synchronous code (runs its own event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("HTTPJudge.score() called inside a running event loop; "
                               "await HTTPJudge.ascore() instead")

        async def run() -> list[JudgeResult]:
            try:
                return await self.ascore(items)
            finally:
                await self.aclose()

        return asyncio.run(run())

    async def ascore(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Judge `items` concurrently (at most `max_concurrency` requests in flight)."""
        results = await asyncio.gather(*(self._judge_one(item) for item in items))
        self.stats.record(results)
        return list(results)

    async def aclose(self) -> None:
        """Close this event loop's HTTP session."""
        loop = asyncio.get_running_loop()
        state = self._loop_state.pop(id(loop), None)
        for key in [k for k in self._discovery if k[0] == id(loop)]:
            self._discovery.pop(key).cancel()
        if state is not None:
            await state[2].close()

    # -- internals -------------------------------------------------------------------------

    def _state(self) -> tuple[asyncio.Semaphore, aiohttp.ClientSession]:
        loop = asyncio.get_running_loop()
        state = self._loop_state.get(id(loop))
        if state is None or state[0] is not loop or state[2].closed:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s,
                                            sock_connect=self.connect_timeout_s)
            connector = aiohttp.TCPConnector(limit=self.max_concurrency)
            session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                            headers=self._headers)
            state = (loop, asyncio.Semaphore(self.max_concurrency), session)
            self._loop_state[id(loop)] = state
        return state[1], state[2]

    async def _judge_one(self, item: JudgeItem) -> JudgeResult:
        prompt = render_judge_prompt(self.template, item.predicted, item.reference)
        last: _Failed | None = None
        avoid: int | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(backoff_delay(attempt - 1, self.backoff_initial_s,
                                                  self.backoff_max_s, self._rng))
            sem, session = self._state()
            async with sem:
                index = self.pool.acquire(avoid)
                try:
                    text = await self._attempt(session, self.pool.endpoints[index], prompt)
                except _Failed as failure:
                    last, avoid = failure, index
                    logger.debug("judge request to %s failed (%s): %s",
                                 self.pool.endpoints[index], failure.status.value, failure.detail)
                    if not failure.retryable:
                        break
                    continue
                finally:
                    self.pool.release(index)
            score = parse_score(text)
            if score is None:
                return JudgeResult.failure(JudgeStatus.PARSE_ERROR, "no single Score: 0|1",
                                           raw=text)
            return JudgeResult(float(score), JudgeStatus.OK, raw=text)
        assert last is not None
        logger.warning("judge request failed after %d attempt(s): %s (%s)",
                       attempt + 1, last.status.value, last.detail)
        return JudgeResult.failure(last.status, last.detail)

    async def _attempt(self, session: aiohttp.ClientSession, endpoint: str, prompt: str) -> str:
        """One request; raises `_Failed` with its classification."""
        self.stats.requests += 1
        try:
            # wait_for on top of aiohttp's own timeout: a server that trickles bytes or a
            # stalled DNS lookup cannot hold a request past the deadline.
            return await asyncio.wait_for(self._post(session, endpoint, prompt),
                                          timeout=self.timeout_s)
        except _Failed:
            raise
        except (asyncio.TimeoutError, TimeoutError) as err:
            raise _Failed(JudgeStatus.TIMEOUT, f"no answer within {self.timeout_s}s", True) from err
        except (aiohttp.ClientError, OSError) as err:
            raise _Failed(JudgeStatus.CONNECTION_ERROR, type(err).__name__, True) from err

    async def _model_name(self, session: aiohttp.ClientSession, endpoint: str) -> str:
        if self.model:
            return self.model
        if endpoint in self._models:
            return self._models[endpoint]
        # One discovery per endpoint, shared by the requests that wait for it; shielded so that
        # one waiter's timeout does not cancel it for the others. A failed one is dropped and
        # the next attempt asks again.
        key = (id(asyncio.get_running_loop()), endpoint)
        task = self._discovery.get(key)
        if task is None:
            task = asyncio.ensure_future(self._discover(session, endpoint))
            self._discovery[key] = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            if task.done() and self._discovery.get(key) is task:
                del self._discovery[key]
            raise

    async def _discover(self, session: aiohttp.ClientSession, endpoint: str) -> str:
        async with session.get(f"{endpoint}/v1/models") as resp:
            if resp.status >= 400:
                raise _Failed(JudgeStatus.HTTP_ERROR, f"HTTP {resp.status} from /v1/models",
                              resp.status >= 500 or resp.status in self.retry_statuses)
            try:
                name = (await resp.json(content_type=None))["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise _Failed(JudgeStatus.BAD_RESPONSE, "bad /v1/models answer", True) from err
        self._models[endpoint] = name
        return name

    async def _post(self, session: aiohttp.ClientSession, endpoint: str, prompt: str) -> str:
        if self.api == "sglang":
            url = f"{endpoint}/generate"
            payload: dict[str, Any] = {
                "text": prompt,
                "sampling_params": {"max_new_tokens": self.max_tokens,
                                    "temperature": self.temperature},
            }
        else:
            model = await self._model_name(session, endpoint)
            payload = {"model": model, "max_tokens": self.max_tokens,
                       "temperature": self.temperature}
            if self.api == "chat":
                url = f"{endpoint}/v1/chat/completions"
                payload["messages"] = [{"role": "user", "content": prompt}]
            else:
                url = f"{endpoint}/v1/completions"
                payload["prompt"] = prompt
        payload.update(self.extra_body)
        async with session.post(url, data=json.dumps(payload)) as resp:
            body = await resp.read()
            if resp.status >= 400:
                retryable = resp.status >= 500 or resp.status in self.retry_statuses
                raise _Failed(JudgeStatus.HTTP_ERROR, f"HTTP {resp.status}", retryable)
        try:
            return extract_text(self.api, json.loads(body))
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Failed(JudgeStatus.BAD_RESPONSE, "unexpected response body", True) from err
