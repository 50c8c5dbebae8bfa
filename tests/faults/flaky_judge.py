"""A judge server that fails a seeded fraction of its requests; run as its own process.

    python -m tests.faults.flaky_judge --port P --log LOG [--seed S] [--rate 0.2] [--hang-s 4]

It speaks OpenAI chat (`/v1/chat/completions`, `/v1/models`) and judges like the scripted test
judge (`Score: 1` when the prediction's words open the reference). Whether an attempt fails, and
how, is a pure function of (seed, prompt, attempt number of that prompt), so a restarted server
(it reloads the attempt counts from LOG) goes on with the same plan. Fault kinds, equally likely:

    timeout   no answer for `hang_s` seconds (past the client's timeout), then the connection closes
    http500   HTTP 500
    http503   HTTP 503
    garbage   HTTP 200 whose body is not JSON
    noscore   HTTP 200, valid JSON, but the judge text holds no readable verdict

Every arrival is appended to LOG as one JSON line *before* any byte of the answer is sent:
`{"key", "attempt", "fault", "verdict"}`; a correct answer that was fully written is followed by
`{"key", "attempt", "delivered": true}`. The test kills this process with SIGKILL, so the log is
written with unbuffered appends.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
from collections import Counter

from aiohttp import web

from tests.objective.servers import judge_answer

FAULTS = ("timeout", "http500", "http503", "garbage", "noscore")


def prompt_key(prompt: str) -> str:
    return hashlib.sha1(prompt.encode()).hexdigest()


def planned_fault(seed: int, rate: float, key: str, attempt: int) -> str | None:
    """The fault injected into `attempt` (1-based) of the prompt with `key`, or None."""
    rng = random.Random(f"{seed}:{key}:{attempt}")
    return rng.choice(FAULTS) if rng.random() < rate else None


def read_log(path: str) -> list[dict]:
    """The log's complete lines (a line cut by SIGKILL is ignored)."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):
                    rows.append(json.loads(line))
    return rows


class FlakyJudge:
    def __init__(self, log: str, seed: int, rate: float, hang_s: float) -> None:
        self.seed, self.rate, self.hang_s = seed, rate, hang_s
        self.attempts: Counter = Counter(r["key"] for r in read_log(log) if "fault" in r)
        # O_APPEND + one os.write per line: each line reaches the kernel whole, SIGKILL or not.
        self.fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _log(self, row: dict) -> None:
        os.write(self.fd, (json.dumps(row) + "\n").encode())

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "flaky-judge"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        key = prompt_key(prompt)
        self.attempts[key] += 1
        attempt = self.attempts[key]
        fault = planned_fault(self.seed, self.rate, key, attempt)
        verdict = judge_answer(prompt)
        self._log({"key": key, "attempt": attempt, "fault": fault, "verdict": verdict})
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
            raise web.HTTPServiceUnavailable()  # the client has given up long before
        if fault in ("http500", "http503"):
            return web.json_response({"error": fault}, status=int(fault[4:]))
        if fault == "garbage":
            return web.Response(body=b"\x00<html>upstream \xff exploded", status=200,
                                content_type="text/html")
        text = "I weighed both texts carefully." if fault == "noscore" else verdict
        resp = web.json_response({
            "id": "x", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}]})
        await resp.prepare(request)
        await resp.write_eof()
        if fault is None:
            self._log({"key": key, "attempt": attempt, "delivered": True})
        return resp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--hang-s", type=float, default=4.0)
    args = ap.parse_args()
    judge = FlakyJudge(args.log, args.seed, args.rate, args.hang_s)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", judge.chat)
    app.router.add_get("/v1/models", judge.models)
    print(f"flaky judge on 127.0.0.1:{args.port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                reuse_address=True, shutdown_timeout=0.5, handle_signals=True)


if __name__ == "__main__":
    main()
