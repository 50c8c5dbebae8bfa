"""Real HTTP servers on 127.0.0.1 for the judge tests.

`ScriptedJudgeServer` speaks the three wire formats the HTTP judge uses (OpenAI chat and
completions, SGLang's `/generate`) and answers like a judge: it reads `Reference:` and
`Predicted:` from the prompt and says `Score: 1` when the prediction's words open the reference.
A prediction may carry fault directives, `[[fault:KIND*N]]`, which make the first N attempts of
that prompt fail in the named way (N omitted: every attempt):

    500, 503, 429, 400, 404   that HTTP status
    timeout                   no answer for `hang_s` seconds
    slow                      headers at once, then the body one byte per `trickle_s`
    garbage                   200 with a body that is not JSON
    badjson                   200 with JSON lacking the API's fields
    reset                     the connection is reset (RST) without an answer
    noscore                   a judge text without a score (not an HTTP fault)
    both                      a judge text with both `Score: 0` and `Score: 1`
    delay=S                   answer normally after S seconds (for routing tests)

The server runs in its own thread and event loop; `attempts` and `requests` count what arrived.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import struct
import threading
from collections import Counter

from aiohttp import web

_DIRECTIVE = re.compile(r"\[\[fault:([a-z0-9=.]+)(?:\*(\d+))?\]\]")
_REF = re.compile(r"Reference: (.*?)\n\nPredicted: (.*?)\n\n## Scoring Rules", re.DOTALL)


def _words(text: str) -> list[str]:
    return re.sub(r"[\W_]+", " ", _DIRECTIVE.sub(" ", text).lower()).split()


def judge_answer(prompt: str) -> str:
    """What the scripted judge says to a judge prompt."""
    match = _REF.search(prompt)
    if not match:
        return "I cannot find the texts."
    ref, pred = _words(match.group(1)), _words(match.group(2))
    return f"Score: {int(bool(pred) and ref[: len(pred)] == pred)}"


class ScriptedJudgeServer:
    """A judge server with scripted faults, on an ephemeral port of 127.0.0.1."""

    def __init__(self, hang_s: float = 5.0, trickle_s: float = 0.5, model: str = "scripted-judge",
                 base_delay_s: float = 0.0, answer=None):
        """`base_delay_s` delays every answer (a slower server, for routing tests); `answer`
        (prompt -> text) replaces the judge's answer (other scripted models)."""
        self.hang_s, self.trickle_s, self.model = hang_s, trickle_s, model
        self.answer = answer or judge_answer
        self.base_delay_s = base_delay_s
        self.attempts: Counter = Counter()
        self.requests: Counter = Counter()
        self.authorization: set[str | None] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ScriptedJudgeServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("scripted judge server did not start within 10 s")

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("scripted judge server did not stop within 10 s")

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        try:
            loop.run_forever()
        finally:
            # Handlers still sleeping (hangs, trickles) are cancelled rather than awaited.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # -- handlers ----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            self.requests["/v1/models"] += 1
        return web.json_response({"object": "list", "data": [{"id": self.model}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        return await self._answer(request, prompt, lambda text: {
            "id": "x", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._answer(request, body["prompt"], lambda text: {
            "id": "x", "object": "text_completion", "model": body.get("model"),
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._answer(request, body["text"], lambda text: {
            "text": text, "meta_info": {"finish_reason": {"type": "stop"}}})

    async def _answer(self, request: web.Request, prompt: str, wrap) -> web.StreamResponse:
        key = hashlib.sha1(prompt.encode()).hexdigest()
        with self._lock:
            self.requests[request.path] += 1
            self.attempts[key] += 1
            attempt = self.attempts[key]
            self.authorization.add(request.headers.get("Authorization"))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.base_delay_s:
                await asyncio.sleep(self.base_delay_s)
            return await self._respond(request, prompt, wrap, attempt)
        finally:
            with self._lock:
                self.in_flight -= 1

    def attempts_for(self, prompt: str) -> int:
        """How many requests carried exactly this prompt."""
        with self._lock:
            return self.attempts[hashlib.sha1(prompt.encode()).hexdigest()]

    async def _respond(self, request: web.Request, prompt: str, wrap,
                       attempt: int) -> web.StreamResponse:
        fault = None
        match = _DIRECTIVE.search(prompt)
        if match and (match.group(2) is None or attempt <= int(match.group(2))):
            fault = match.group(1)
        text = self.answer(prompt)
        if fault is None:
            return web.json_response(wrap(text))
        if fault.isdigit():
            return web.json_response({"error": fault}, status=int(fault))
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
            return web.json_response(wrap(text))
        if fault.startswith("delay="):
            await asyncio.sleep(float(fault.split("=", 1)[1]))
            return web.json_response(wrap(text))
        if fault == "slow":
            payload = json.dumps(wrap(text)).encode()
            resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": str(len(payload))})
            await resp.prepare(request)
            for i in range(len(payload)):
                await resp.write(payload[i : i + 1])
                await asyncio.sleep(self.trickle_s)
            await resp.write_eof()
            return resp
        if fault == "garbage":
            return web.Response(body=b"\x00<html>upstream exploded\xff", status=200,
                                content_type="application/json")
        if fault == "badjson":
            return web.json_response({"unexpected": True})
        if fault == "reset":
            sock = request.transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if fault == "noscore":
            return web.json_response(wrap("The prediction looks plausible."))
        if fault == "both":
            return web.json_response(wrap("- Score: 0\nor\n- Score: 1"))
        raise ValueError(f"unknown fault {fault!r}")
