"""The judge's configuration and the factory that builds a `Judge` from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from megatron_rlpt.errors import UsageError
from megatron_rlpt.reward.base import Judge
from megatron_rlpt.reward.prompts import judge_template


@dataclass
class JudgeConfig:
    """Which judge scores predictions, and how it is reached."""

    kind: Literal["http", "hf", "rule"] = "http"
    """`http`: a generative judge served by vLLM / SGLang / any OpenAI-compatible server (the
    paper's setup); `hf`: the same judge run in this process on a Hugging Face model; `rule`:
    normalised lexical prefix matching (no model; for CI and as a baseline)."""
    reward_mode: Literal["prefix", "strict"] = "prefix"
    """`prefix` (the paper's reward): the prediction must be a semantic prefix of s_i and the
    following segments. `strict` (the paper's ablation): it must match s_i alone."""
    prompt_file: str | None = None
    """A judge prompt template with `{reference}` and `{predicted}`; None: the paper's prompt
    (prefix mode) or the project's strict prompt (strict mode)."""
    max_tokens: int = 32
    """Most tokens the judge may write. The answer is one line; a judge that thinks first (e.g.
    Qwen3 with thinking on) needs far more, or thinking turned off via `extra_body`."""
    temperature: float = 0.0
    """Judge sampling temperature; 0 (greedy) makes verdicts reproducible."""
    rejudge_attempts: int = 1
    """Times a failed judgement (after the HTTP retries) is judged again before its GRPO group
    is masked out. 0 masks at once."""

    # -- http --------------------------------------------------------------------------------
    endpoints: list[str] = field(default_factory=list)
    """Base URLs of the judge servers, e.g. `http://judge-0:30000` (a trailing `/v1` is fine)."""
    api: Literal["chat", "completions", "sglang"] = "chat"
    """`chat`: OpenAI `/v1/chat/completions` (the server applies the chat template);
    `completions`: OpenAI `/v1/completions`; `sglang`: SGLang's native `/generate`. The last two
    send the prompt text as is."""
    model: str | None = None
    """Model name for the OpenAI APIs; None asks each server's `/v1/models` once."""
    api_key_env: str | None = None
    """Name of an environment variable holding a bearer token (the key itself never goes in a
    config or a log)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields merged into every request, e.g.
    `{"chat_template_kwargs": {"enable_thinking": false}}` for a Qwen3 judge on vLLM/SGLang."""
    routing: Literal["round_robin", "least_loaded"] = "least_loaded"
    """How requests are spread over `endpoints`."""
    max_concurrency: int = 64
    """Most judge requests in flight at once (over all endpoints)."""
    timeout_s: float = 60.0
    """Seconds before one judge request is abandoned (and retried)."""
    connect_timeout_s: float = 10.0
    """Seconds to establish a connection."""
    max_retries: int = 3
    """Retries of one request after a timeout, connection error, 5xx, 408 or 429. Other 4xx
    answers are not retried."""
    backoff_initial_s: float = 0.5
    """First retry delay; it doubles per retry, with jitter, up to `backoff_max_s`."""
    backoff_max_s: float = 8.0
    """Longest delay between retries."""

    # -- hf (in-process) ---------------------------------------------------------------------
    hf_model: str | None = None
    """Hugging Face model directory of the in-process judge."""
    hf_device: str | None = None
    """Device of the in-process judge; None: CUDA if present, else CPU."""
    hf_dtype: str | None = None
    """`float32`, `bfloat16` or `float16`; None: bfloat16 on a GPU, float32 on the CPU."""
    hf_batch_size: int = 16
    """Judge prompts generated together in-process."""
    hf_chat_template: bool = True
    """Wrap the judge prompt in the judge tokenizer's chat template (when it has one)."""
    hf_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra `apply_chat_template` arguments for the in-process judge."""

    # -- rule --------------------------------------------------------------------------------
    rule_tolerance: float = 0.1
    """Fraction of the prediction's words that may differ (word edit distance)."""
    rule_min_coverage: float = 0.8
    """In prefix mode, the prediction needs at least this fraction of s_i's word count."""


def build_judge(cfg: JudgeConfig) -> Judge:
    """The `Judge` that `cfg` describes."""
    if cfg.kind == "rule":
        from megatron_rlpt.reward.rule import RuleJudge

        return RuleJudge(cfg.reward_mode, cfg.rule_tolerance, cfg.rule_min_coverage)
    template = judge_template(cfg.reward_mode, cfg.prompt_file)
    if cfg.kind == "http":
        if not cfg.endpoints:
            raise UsageError("judge kind 'http' needs judge endpoints")
        try:
            return _http_judge(cfg, template)
        except ValueError as err:  # bad endpoint URL, empty API key variable, bad limits
            raise UsageError(f"judge config: {err}") from err
    if cfg.kind == "hf":
        from megatron_rlpt.reward.engine_judge import EngineJudge

        if not cfg.hf_model:
            raise UsageError("judge kind 'hf' needs hf_model (a Hugging Face model directory)")
        return EngineJudge.from_pretrained(
            cfg.hf_model, template, device=cfg.hf_device, dtype=cfg.hf_dtype,
            batch_size=cfg.hf_batch_size, chat_template=cfg.hf_chat_template,
            chat_template_kwargs=cfg.hf_chat_template_kwargs, max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
        )
    raise UsageError(f"unknown judge kind {cfg.kind!r}; use 'http', 'hf' or 'rule'")


def _http_judge(cfg: JudgeConfig, template: str) -> Judge:
    from megatron_rlpt.reward.http_judge import HTTPJudge

    return HTTPJudge(
        cfg.endpoints, template, api=cfg.api, model=cfg.model, api_key_env=cfg.api_key_env,
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, extra_body=cfg.extra_body,
        routing=cfg.routing, max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s,
        connect_timeout_s=cfg.connect_timeout_s, max_retries=cfg.max_retries,
        backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s,
    )
