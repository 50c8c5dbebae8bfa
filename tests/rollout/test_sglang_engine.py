"""The SGLang rollout engine's client against a real HTTP server on 127.0.0.1 that answers like
SGLang's native API and records what it was sent (SGLang itself needs a GPU)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from aiohttp import web

from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.rollout.sglang_engine import SGLangClient, SGLangConfig, SGLangError


class FakeSGLang:
    """`/generate`, `/update_weights_from_disk`, `/flush_cache`; `fail_first` 500s first."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.fail_first, self.always_fail = fail_first, always_fail
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append((request.path, body))
        if self.always_fail or self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500, text="busy")
        if request.path != "/generate":
            return web.json_response({"success": True, "message": "ok"})
        n = body["sampling_params"]["n"]
        first = body["input_ids"][-1]
        out = []
        for k in range(n):
            ids = [first + k + 1, first + k + 2]
            length = k % 2 == 0
            out.append({"text": f"t{k}", "meta_info": {
                "output_token_logprobs": [[-0.5 - k, t, None] for t in ids],
                "finish_reason": {"type": "length", "length": 2} if length
                else {"type": "stop", "matched": "</s>"}}})
        return web.json_response(out if n > 1 else out[0])

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        loop.run_forever()


def _client(*servers: FakeSGLang, **kw) -> SGLangClient:
    cfg = SGLangConfig(endpoints=[s.url for s in servers], timeout_s=10, backoff_initial_s=0.01,
                       **kw)
    return SGLangClient(cfg)


def test_request_format_and_parsed_completions():
    server = FakeSGLang()
    sampling = SamplingParams(max_tokens=7, temperature=0.7, top_p=0.9, top_k=0,
                              stop=["<|endofprediction|>"], seed=5)
    groups = _client(server).generate_ids([[1, 2, 3], [9]], 3, sampling)
    paths = [p for p, _ in server.requests]
    assert paths == ["/generate", "/generate"]
    body = server.requests[0][1]
    assert body["input_ids"] == [1, 2, 3] and body["return_logprob"] is True
    assert body["sampling_params"] == {"n": 3, "temperature": 0.7, "top_p": 0.9, "top_k": -1,
                                       "max_new_tokens": 7, "stop": ["<|endofprediction|>"],
                                       "no_stop_trim": True, "sampling_seed": 5}
    assert server.requests[1][1]["sampling_params"]["sampling_seed"] == 6  # per-prompt stream
    assert [len(g) for g in groups] == [3, 3]
    c = groups[0][1]
    assert c.token_ids == [5, 6] and c.logprobs == [-1.5, -1.5] and c.text == "t1"
    assert [x.finish_reason for x in groups[1]] == ["length", "stop", "length"]


def test_greedy_and_single_sample():
    server = FakeSGLang()
    groups = _client(server).generate_ids([[4]], 1, SamplingParams(temperature=0.0, top_k=3))
    params = server.requests[0][1]["sampling_params"]
    assert params["temperature"] == 0.0 and params["top_k"] == 3 and "sampling_seed" not in params
    assert groups[0][0].token_ids == [5, 6]


def test_retries_a_failing_server_then_succeeds():
    server = FakeSGLang(fail_first=2)
    groups = _client(server, max_retries=3).generate_ids([[1]], 2, SamplingParams())
    assert len(server.requests) == 3 and len(groups[0]) == 2


def test_a_server_that_keeps_failing_stops_with_its_address():
    server = FakeSGLang(always_fail=True)
    with pytest.raises(SGLangError, match=f"{server.url}/generate failed: HTTP 500"):
        _client(server, max_retries=1).generate_ids([[1]], 1, SamplingParams())
    assert len(server.requests) == 2  # the first try and one retry


def test_prompts_are_spread_over_servers():
    a, b = FakeSGLang(), FakeSGLang()
    _client(a, b).generate_ids([[1], [2], [3], [4]], 1, SamplingParams())
    assert [r[1]["input_ids"] for r in a.requests] == [[1], [3]]
    assert [r[1]["input_ids"] for r in b.requests] == [[2], [4]]


def test_weight_update_from_disk_then_cache_flush_on_every_server():
    a, b = FakeSGLang(), FakeSGLang()
    _client(a, b).update_weights_from_disk("/shared/push-000001")
    for server in (a, b):
        assert server.requests == [("/update_weights_from_disk",
                                    {"model_path": "/shared/push-000001"}), ("/flush_cache", {})]


def test_no_endpoints_is_a_usage_error():
    with pytest.raises(UsageError):
        SGLangClient(SGLangConfig())


class RefusingSGLang(FakeSGLang):
    """Answers weight loads with SGLang's `success: false` (a path it cannot read)."""

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/update_weights_from_disk":
            body = await request.json()
            self.requests.append((request.path, body))
            return web.json_response({"success": False, "message": "no such directory"})
        return await super()._handle(request)


def test_a_refused_weight_load_is_an_error_and_nothing_is_flushed():
    good, bad = FakeSGLang(), RefusingSGLang()
    with pytest.raises(SGLangError, match=f"{bad.url} did not load /w/push-000002: no such"):
        _client(good, bad).update_weights_from_disk("/w/push-000002")
    assert [p for p, _ in bad.requests] == ["/update_weights_from_disk"]


def test_push_dirs_lists_finished_pushes_only(tmp_path):
    from megatron_rlpt.rollout.sglang_engine import push_dirs

    for name in ("push-000001", "push-000012", ".push-000013.abc.tmp", "push-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "push-000014").write_text("a file, not a push")
    assert push_dirs(tmp_path) == {1: tmp_path / "push-000001", 12: tmp_path / "push-000012"}
    assert push_dirs(tmp_path / "missing") == {}
