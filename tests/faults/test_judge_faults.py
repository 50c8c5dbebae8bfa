"""The HTTP judge against a server that fails 20% of its requests and is killed mid-run.

The server (tests/faults/flaky_judge.py, its own process) times out, answers 5xx, sends
garbage bodies and verdict-less texts on a seeded plan, and logs every arrival before it
answers. The run must finish within a bound; every item is either valid with the correct
reward or marked failed; exactly the items that never got a correct answer through are failed;
and the counts the judge reports agree with the results.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import torch

from megatron_rlpt.algo.grpo import GRPOConfig, group_advantages
from megatron_rlpt.reward.base import JudgeStatus
from megatron_rlpt.reward.config import JudgeConfig, build_judge
from megatron_rlpt.reward.scoring import rewards_tensor, score_completions
from megatron_rlpt.tasks import END_TAG, START_TAG
from tests.faults.flaky_judge import FAULTS, read_log
from tests.multirank import REPO_ROOT

N_ITEMS, GROUP = 400, 4
CLIENT_TIMEOUT_S, HANG_S = 2.5, 6.0
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega").split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.flaky_judge", "--port", str(port), "--log", str(log),
         "--seed", "7", "--rate", "0.2", "--hang-s", str(HANG_S)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("flaky judge did not start within 30 s")


def _items(rng: random.Random) -> tuple[list[str], list[str], list[float | None]]:
    """Completions, references and the correct reward (None: no prediction tags)."""
    completions, references, expected = [], [], []
    for i in range(N_ITEMS):
        ref = " ".join(rng.choice(WORDS) for _ in range(8)) + f" item{i}"
        if i % 25 == 0:  # no prediction: reward 0, never sent to the judge
            completions.append("I am not sure what comes next.")
            expected.append(None)
        elif i % 2:  # a correct prefix of the reference
            completions.append(f"{START_TAG}{' '.join(ref.split()[:4])}{END_TAG}")
            expected.append(1.0)
        else:  # a wrong first word
            completions.append(f"{START_TAG}wrong{i} {' '.join(ref.split()[1:4])}{END_TAG}")
            expected.append(0.0)
        references.append(ref)
    return completions, references, expected


def test_judge_survives_faults_and_a_killed_server(tmp_path: Path):
    port, log = _free_port(), tmp_path / "judge.log"
    server = _start_server(port, log)
    judge = build_judge(JudgeConfig(
        kind="http", endpoints=[f"http://127.0.0.1:{port}/v1"], timeout_s=CLIENT_TIMEOUT_S,
        connect_timeout_s=1.0, max_retries=3, backoff_initial_s=0.5, backoff_max_s=2.0,
        max_concurrency=32, rejudge_attempts=0))
    completions, references, expected = _items(random.Random(3))

    box: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["results"] = score_completions(judge, completions, references,
                                               rejudge_attempts=0)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            box["error"] = err
        box["seconds"] = time.monotonic() - t0

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    restarted = None
    try:
        # Kill the server with SIGKILL once a third of the items have arrived, and bring it
        # back on the same port a moment later: requests in flight and sent meanwhile fail.
        deadline = time.monotonic() + 60
        while sum("fault" in r for r in read_log(str(log))) < N_ITEMS // 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.is_alive(), "the run ended before the server could be killed"
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        arrivals_at_kill = sum("fault" in r for r in read_log(str(log)))
        time.sleep(0.4)
        restarted = _start_server(port, log)
        worker.join(timeout=180)  # no hang: timeouts are bounded, retries are bounded
        assert not worker.is_alive(), "the judge run hung"
    finally:
        for proc in (server, restarted):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert "error" not in box, repr(box.get("error"))
    results = box["results"]
    assert len(results) == N_ITEMS

    rows = read_log(str(log))
    arrivals = [r for r in rows if "fault" in r]
    assert len(arrivals) > arrivals_at_kill  # the restarted server answered too
    injected = Counter(r["fault"] for r in arrivals if r["fault"])
    assert set(injected) == set(FAULTS), injected
    assert 0.12 < sum(injected.values()) / len(arrivals) < 0.28, injected

    # Per item (keyed by its prompt): were correct answers served, and fully written?
    from megatron_rlpt.reward.prompts import judge_template, render_judge_prompt
    from megatron_rlpt.tasks import extract_prediction
    from tests.faults.flaky_judge import prompt_key

    template = judge_template("prefix")
    served: Counter = Counter(r["key"] for r in arrivals if r["fault"] is None)
    delivered = {r["key"] for r in rows if r.get("delivered")}
    in_flight_at_kill = {r["key"] for r in arrivals[:arrivals_at_kill] if r["fault"] is None} - delivered

    failed = []
    for i, (res, want) in enumerate(zip(results, expected)):
        if want is None:
            assert res.status is JudgeStatus.NO_PREDICTION and res.reward == 0.0 and res.valid
            continue
        pred = extract_prediction(completions[i]).prediction
        key = prompt_key(render_judge_prompt(template, pred, references[i]))
        if res.valid:
            assert res.status is JudgeStatus.OK
            assert res.reward == want, (i, res)  # a valid reward is the correct one
            assert served[key] >= 1  # ...and came from a correct answer the server sent
        else:
            failed.append(i)
            assert math.isnan(res.reward), (i, res)  # never a 0 or 1
            assert res.status in (JudgeStatus.TIMEOUT, JudgeStatus.HTTP_ERROR,
                                  JudgeStatus.BAD_RESPONSE, JudgeStatus.PARSE_ERROR,
                                  JudgeStatus.CONNECTION_ERROR), res
            # failed exactly when no correct answer got through (the answers cut by the
            # kill were served but never delivered)
            assert key not in delivered or key in in_flight_at_kill, (i, res)
    undelivered = [i for i, w in enumerate(expected) if w is not None and
                   prompt_key(render_judge_prompt(template, extract_prediction(completions[i]).prediction,
                                                  references[i])) not in delivered]
    assert set(failed) <= set(undelivered)
    assert len(set(undelivered) - set(failed)) <= len(in_flight_at_kill)
    # With 20% faults and three retries most items succeed; a verdict-less text is not retried
    # (the server did answer), so about 4% fail.
    assert 0 < len(failed) < N_ITEMS // 4, len(failed)

    # The reported counts: the final status of every item is counted, failures included.
    metrics = judge.stats.as_metrics()
    final = Counter(r.status.value for r in results)
    for status, n in final.items():
        assert metrics[f"judge/{status}"] == n, (status, metrics)
    assert metrics["judge/requests"] >= len(arrivals)  # sent ≥ arrived (the kill lost some)
    assert metrics["judge/retries"] > 0
    assert sum(metrics.get(f"judge/{s.value}", 0) for s in JudgeStatus if not s.valid) == len(failed)

    # GRPO drops every group holding a failure: no failed judgement reaches the loss.
    rewards, valid = rewards_tensor(results, GROUP)
    adv = group_advantages(rewards, valid, GRPOConfig(group_size=GROUP))
    bad_groups = torch.tensor([any(not r.valid for r in results[g:g + GROUP])
                               for g in range(0, N_ITEMS, GROUP)])
    assert torch.equal(adv.failed, bad_groups) and not (adv.keep & bad_groups).any()
    assert torch.isfinite(adv.advantages).all() and (adv.advantages[bad_groups] == 0).all()
    grpo = adv.metrics(rewards, valid)
    assert grpo["grpo/failed_items"] == len(failed)
    assert grpo["grpo/failed_groups"] == int(bad_groups.sum())
    assert bool(bad_groups.any())
    assert box["seconds"] < 120
    print(f"judge faults: {len(arrivals)} arrivals, injected {dict(injected)}, "
          f"final {dict(final)}, {box['seconds']:.1f} s")
