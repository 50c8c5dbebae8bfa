#!/usr/bin/env python
"""Judge client throughput against the server's own, at 64 concurrent requests.

    python benchmarks/judge_throughput.py [--requests 2000] [--latency-ms 0,50] [--repeat 3]
        [--json benchmarks/results/judge_throughput.json]

The server is an OpenAI-compatible chat endpoint on 127.0.0.1, in a process of its own, that
answers every judge prompt with `Score: 1` after a fixed service time (0 ms: the client's own
ceiling; 50 ms: a judge model's time per request, served 64 at a time). For each service time,
side by side on the same server:

- **server's own**: a bare aiohttp load generator posting the same rendered judge prompts with
  64 requests in flight (what the server can deliver);
- **HTTPJudge**: megatron-rlpt's judge client scoring the same items, `max_concurrency=64`
  (prompt rendering, routing, retries bookkeeping and verdict parsing included).

The ratio HTTPJudge / server's own is the share of the server's throughput the client keeps.
A real judge model (vLLM or SGLang on a GPU) serves at most a few hundred requests per second,
far below the 0 ms ceiling measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONCURRENCY = 64


def serve(port: int, latency_s: float) -> None:
    """The stand-in judge server (run in a subprocess)."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        await request.json()
        if latency_s:
            await asyncio.sleep(latency_s)
        return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant",
                                                           "content": "Score: 1"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                backlog=1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(latency_s: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(latency_s)])
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the benchmark judge server did not start in 30 s")


def _items(n: int) -> list:
    from megatron_rlpt.reward.base import JudgeItem

    return [JudgeItem(f"At {i % 12 + 1} o'clock the lamp shows red.",
                      f"At {i % 12 + 1} o'clock the lamp shows red. At {(i + 1) % 12 + 1} "
                      "o'clock the lamp shows green.") for i in range(n)]


async def _bare(url: str, items: list, template: str) -> float:
    """Requests per second of a plain aiohttp client with 64 requests in flight."""
    import aiohttp

    from megatron_rlpt.reward.prompts import render_judge_prompt

    bodies = [{"model": "bench", "max_tokens": 32, "temperature": 0.0,
               "messages": [{"role": "user",
                             "content": render_judge_prompt(template, it.predicted,
                                                            it.reference)}]}
              for it in items]
    sem = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as s:
        async def one(body: dict) -> None:
            async with sem, s.post(f"{url}/v1/chat/completions", json=body) as r:
                await r.json()

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return len(bodies) / (time.perf_counter() - start)


def _judge(url: str, items: list, template: str) -> tuple[float, int]:
    """Requests per second through HTTPJudge, and how many items it judged OK."""
    from megatron_rlpt.reward.http_judge import HTTPJudge

    judge = HTTPJudge([url], template, model="bench", max_concurrency=CONCURRENCY,
                      timeout_s=60, max_retries=0)
    start = time.perf_counter()
    results = judge.score(items)
    rate = len(items) / (time.perf_counter() - start)
    judge.close()
    return rate, sum(1 for r in results if r.valid and r.reward == 1.0)


def measure(requests: int, latency_s: float, repeat: int) -> dict[str, float]:
    from megatron_rlpt.reward.prompts import PREFIX_JUDGE_TEMPLATE

    items = _items(requests)
    proc, url = _start_server(latency_s)
    try:
        asyncio.run(_bare(url, items[:CONCURRENCY], PREFIX_JUDGE_TEMPLATE))  # warm the server
        load = os.getloadavg()[0]
        bare_runs, client_runs = [], []
        for _ in range(repeat):  # alternate the two, keep each one's best run
            bare_runs.append(asyncio.run(_bare(url, items, PREFIX_JUDGE_TEMPLATE)))
            rate, ok = _judge(url, items, PREFIX_JUDGE_TEMPLATE)
            client_runs.append(rate)
        bare, client = max(bare_runs), max(client_runs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if ok != requests:
        raise RuntimeError(f"HTTPJudge judged {ok} of {requests} items OK")
    return {"latency_ms": latency_s * 1000, "requests": requests, "server_rps": bare,
            "judge_rps": client, "ratio": client / bare,
            "client_overhead_ms": 1000 * (1 / client - 1 / bare) * CONCURRENCY,
            # Every run, so that the report can show the run-to-run spread beside the ratio.
            "server_rps_runs": bare_runs, "judge_rps_runs": client_runs,
            "load_avg_start": load, "load_avg_end": os.getloadavg()[0]}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", default="0,50",
                        help="comma-separated server service times (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = [measure(args.requests, float(ms) / 1000, args.repeat)
            for ms in args.latency_ms.split(",")]
    for r in rows:
        print(f"service {r['latency_ms']:4.0f} ms: server's own {r['server_rps']:7.1f} req/s, "
              f"HTTPJudge {r['judge_rps']:7.1f} req/s, ratio {r['ratio']:.2f}, client overhead "
              f"{r['client_overhead_ms']:.1f} ms per request (load {r['load_avg_start']:.1f})")
    if args.json:
        from megatron_rlpt.utils.io import atomic_write_json

        atomic_write_json(args.json, {"concurrency": CONCURRENCY, "rows": rows})


if __name__ == "__main__":
    main()
