"""Rollouts from external SGLang servers, with the policy's weights pushed after each step.

SGLang needs a GPU, so the servers run on their own (one or more `sglang.launch_server`
processes); this module imports nothing from SGLang and speaks its native HTTP API:

- `POST /generate` with `input_ids`, `sampling_params` (`n` samples) and `return_logprob`;
  the sampled tokens and their log-probs come back in `meta_info.output_token_logprobs`
  (`[logprob, token_id, text]` triples) and the end in `meta_info.finish_reason.type`;
- `POST /update_weights_from_disk` with `model_path` (a Hugging Face directory the trainer has
  just written) and then `POST /flush_cache`, so that no cached prefix outlives the old weights.

The request and response fields follow SGLang's `GenerateReqInput` and
`UpdateWeightFromDiskReqInput` (python/sglang/srt/managers/io_struct.py). Every request has a
timeout and bounded retries with backoff; a server that keeps failing stops the run with its
address and the last error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megatron_rlpt.errors import UsageError
from megatron_rlpt.reward.http_judge import backoff_delay, normalize_endpoint
from megatron_rlpt.rollout.base import Completion, SamplingParams


@dataclass
class SGLangConfig:
    """External SGLang servers (`rollout.engine=sglang`)."""

    endpoints: list[str] = field(default_factory=list)
    """Server base URLs (`http://host:30000`); prompts are spread over them round-robin."""
    timeout_s: float = 1800.0
    """Longest wait for one request (a whole group of samples)."""
    max_retries: int = 3
    """Retries of a request after a timeout, connection error or 5xx, with backoff."""
    backoff_initial_s: float = 1.0
    """First retry delay; doubles per retry (with jitter) up to 30 s."""
    max_concurrency: int = 64
    """Requests in flight over all servers."""
    weights_dir: str = ""
    """Shared directory (visible to the servers) where each weight push writes the policy in
    Hugging Face format for `/update_weights_from_disk`; required with this engine."""


class SGLangError(RuntimeError):
    """A server kept failing."""


class SGLangClient:
    """HTTP client of a set of SGLang servers (no process groups; usable anywhere)."""

    def __init__(self, cfg: SGLangConfig, tokenizer: Any = None, seed: int = 0) -> None:
        if not cfg.endpoints:
            raise UsageError("rollout.engine=sglang needs rollout.sglang.endpoints")
        self.cfg = cfg
        self.endpoints = [normalize_endpoint(e) for e in cfg.endpoints]
        self.tokenizer = tokenizer
        self._rng = random.Random(seed)

    @staticmethod
    def sampling_params(sampling: SamplingParams, n: int) -> dict[str, Any]:
        """SGLang's `sampling_params` for ours (top_k -1 and top_p 1 switch filtering off)."""
        params: dict[str, Any] = {
            "n": n, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
            "max_new_tokens": sampling.max_tokens, "stop": list(sampling.stop),
            "no_stop_trim": True,  # keep the stop string in the text, as every engine does
        }
        if sampling.seed is not None:
            params["sampling_seed"] = sampling.seed % 2**31
        return params

    def _completions(self, data: Any, n: int) -> list[Completion]:
        results = data if isinstance(data, list) else [data]
        if len(results) != n:
            raise SGLangError(f"asked for {n} samples, the server returned {len(results)}")
        out = []
        for r in results:
            meta = r["meta_info"]
            triples = meta["output_token_logprobs"]
            ids = [int(t[1]) for t in triples]
            finish = (meta.get("finish_reason") or {}).get("type", "stop")
            text = r.get("text")
            if text is None and self.tokenizer is not None:
                text = self.tokenizer.decode(ids)
            out.append(Completion(text or "", ids, [float(t[0]) for t in triples],
                                  "length" if finish == "length" else "stop"))
        return out

    async def _post(self, session: Any, endpoint: str, path: str, body: dict[str, Any]) -> Any:
        import aiohttp

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1, self.cfg.backoff_initial_s, 30.0,
                                                  self._rng))
            try:
                async with session.post(endpoint + path, json=body) as resp:
                    text = await resp.text()
                    if resp.status < 400:
                        return json.loads(text) if text.strip() else None
                    last = f"HTTP {resp.status}: {text[:200]}"
                    if resp.status < 500 and resp.status not in (408, 429):
                        break  # the request itself is wrong: retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as err:
                last = f"{type(err).__name__}: {err}"
        raise SGLangError(f"SGLang server {endpoint}{path} failed: {last}")

    async def _run(self, jobs: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        import aiohttp

        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(job: tuple[str, str, dict[str, Any]]) -> Any:
                async with sem:
                    return await self._post(session, *job)

            return await asyncio.gather(*(one(j) for j in jobs))

    def generate_ids(self, prompt_ids: list[list[int]], n: int,
                     sampling: SamplingParams) -> list[list[Completion]]:
        """`n` samples of each prompt, prompts spread over the servers round-robin."""
        jobs = []
        for i, ids in enumerate(prompt_ids):
            params = self.sampling_params(sampling, n)
            if "sampling_seed" in params:  # a different stream per prompt
                params["sampling_seed"] = (params["sampling_seed"] + i) % 2**31
            jobs.append((self.endpoints[i % len(self.endpoints)], "/generate",
                         {"input_ids": list(ids), "sampling_params": params,
                          "return_logprob": True, "stream": False}))
        return [self._completions(r, n) for r in asyncio.run(self._run(jobs))]

    def update_weights_from_disk(self, model_path: str) -> None:
        """Every server loads `model_path`, then drops its prefix cache. Returns once every
        server has confirmed the load; a server that answers `success: false` is an error."""
        replies = asyncio.run(self._run([
            (e, "/update_weights_from_disk", {"model_path": model_path}) for e in self.endpoints]))
        for endpoint, reply in zip(self.endpoints, replies):
            if isinstance(reply, dict) and reply.get("success") is False:
                raise SGLangError(f"SGLang server {endpoint} did not load {model_path}: "
                                  f"{reply.get('message', '')}")
        asyncio.run(self._run([(e, "/flush_cache", {}) for e in self.endpoints]))


PUSH_PATTERN = re.compile(r"push-(\d{6,})")


def push_dirs(weights_dir: Path) -> dict[int, Path]:
    """The weight pushes in `weights_dir` by number (`push-NNNNNN`; temporary ones left out)."""
    if not weights_dir.is_dir():
        return {}
    found = {}
    for p in weights_dir.iterdir():
        m = PUSH_PATTERN.fullmatch(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return found


class SGLangEngine:
    """The trainer-facing engine: the model-parallel group's first rank talks to the servers and
    broadcasts the completions; every rank takes part in gathering the weights to push.

    The trainer's weights are pushed at start-up and after every step. Every data-parallel
    replica generates through the servers, but the weights (the same on every replica) are
    pushed once, by the first replica's first rank; the others wait for it. Only the last push
    the servers confirmed stays on disk.
    """

    def __init__(self, state: Any, tokenizer: Any, model_cfg: Any, cfg: SGLangConfig) -> None:
        from megatron.core import parallel_state as ps

        if not cfg.weights_dir:
            raise UsageError("rollout.engine=sglang needs rollout.sglang.weights_dir (a directory "
                             "the servers can read) for the weight push")
        self.state, self.tokenizer, self.model_cfg, self.cfg = state, tokenizer, model_cfg, cfg
        self.group = ps.get_model_parallel_group()
        self.src = torch.distributed.get_process_group_ranks(self.group)[0]
        self.owner = torch.distributed.get_rank() == self.src
        self.client = SGLangClient(cfg, tokenizer) if self.owner else None
        self.pusher = self.owner and ps.get_data_parallel_rank(with_context_parallel=True) == 0
        # Numbers go on from a previous run's pushes (a resumed run), never reusing a name.
        self._pushes = itertools.count(max(push_dirs(Path(cfg.weights_dir)), default=0) + 1)
        # The servers started from MODEL, which need not be this policy (a fresh model, a
        # resumed run): the first rollouts must come from the trainer's own weights.
        self.push()

    def generate_ids(self, prompt_ids: list[list[int]], n: int,
                     sampling: SamplingParams) -> list[list[Completion]]:
        holder = [self.client.generate_ids(prompt_ids, n, sampling) if self.owner else None]
        if torch.distributed.get_world_size(self.group) > 1:
            torch.distributed.broadcast_object_list(holder, src=self.src, group=self.group)
        return holder[0]

    def push(self) -> None:
        """Write the trainer's weights as a Hugging Face directory, have the servers load it,
        then remove the older pushes. Every rank calls this; it returns on all of them once the
        servers hold the new weights."""
        from megatron_rlpt.convert.hf_config import hf_config_from_model
        from megatron_rlpt.convert.live import hf_named_tensors
        from megatron_rlpt.rollout.vllm_engine import _write_weights
        from megatron_rlpt.utils.io import atomic_directory

        weights = hf_named_tensors(self.state, self.model_cfg, gather_pipeline=True)
        if self.pusher:
            target = Path(self.cfg.weights_dir) / f"push-{next(self._pushes):06d}"
            with atomic_directory(target) as tmp:
                _write_weights(tmp, weights, self.model_cfg.torch_dtype)
                (tmp / "config.json").write_text(json.dumps(hf_config_from_model(self.model_cfg)))
                self.tokenizer.save_pretrained(str(tmp))
            self.client.update_weights_from_disk(str(target))
            # Acknowledged by every server: the older pushes are no longer read by anyone.
            for old in push_dirs(target.parent).values():
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
        else:
            for _ in weights:  # the gathers are collectives: take part, keep nothing
                pass
        if torch.distributed.get_world_size() > 1:
            torch.distributed.barrier()  # no replica generates before the servers have loaded

    def update_weights(self, weights: Any = None) -> None:
        self.push()
