"""RL stages: `rlpt` (next-segment reasoning with a judge) and `rlvr` (verifiable math reward).

One step on one data-parallel rank:

    prompts ─ rollout (G samples each) ─ rewards (extraction + judge) ─ GRPO advantages
            ─ dynamic sampling (drop failed and zero-variance groups; refill with more rounds)
            ─ Megatron forward/backward with the policy-gradient loss ─ optimizer step
            ─ weight push to the rollout engine

Rollouts and rewards are computed per DP rank on its share of the prompts; the judge runs on the
first tensor-parallel rank, on a thread that judges one chunk of prompts while the engine
generates the next, and its results are broadcast to the others, so each completion is judged
once. Everything random is keyed by (seed, step, round, prompt position); the data position
(`prompt_cursor`) is saved in every checkpoint.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron_rlpt.algo.grpo import group_advantages
from megatron_rlpt.algo.loss import attach_global_denominators, make_loss_func
from megatron_rlpt.errors import UsageError
from megatron_rlpt.rollout.base import SamplingParams
from megatron_rlpt.rollout.factory import build_rollout_engine, push_weights
from megatron_rlpt.stages.common import data_parallel_share
from megatron_rlpt.stages.prompts import PromptSource, build_prompt_source


@dataclass
class Rollout:
    """One prompt's group of completions and what the judge made of them."""

    prompt_ids: list[int]
    task: str
    sample_weight: float
    completions: list[Any] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)
    truncated: bool = False
    """The prompt's context was left-truncated to fit `rollout.max_prompt_tokens`."""


def pack_micro_batches(rows: list[dict[str, torch.Tensor]], micro_batch_size: int,
                       pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-pad sequences into micro-batches of `micro_batch_size` rows.

    A rank that kept nothing gets one empty micro-batch (no loss tokens), so that every rank
    takes part in the same collectives.
    """
    if not rows:
        rows = [{"tokens": torch.tensor([pad_id]), "labels": torch.tensor([pad_id]),
                 "loss_mask": torch.zeros(1), "old_logprobs": torch.zeros(1),
                 "engine_logprobs": torch.zeros(1),
                 "advantages": torch.zeros(1), "sample_weight": torch.tensor(0.0)}]
    keys = ["tokens", "labels", "loss_mask", "old_logprobs", "advantages"]
    if all("engine_logprobs" in r for r in rows):
        keys.append("engine_logprobs")
    out = []
    for i in range(0, len(rows), micro_batch_size):
        chunk = rows[i : i + micro_batch_size]
        s = max(len(r["tokens"]) for r in chunk)
        mb: dict[str, torch.Tensor] = {}
        for key in keys:
            integer = key in ("tokens", "labels")
            t = torch.full((len(chunk), s), pad_id if integer else 0,
                           dtype=torch.long if integer else torch.float32)
            for k, r in enumerate(chunk):
                t[k, : len(r[key])] = r[key]
            mb[key] = t
        mb["sample_weight"] = torch.stack([r["sample_weight"] for r in chunk]).float()
        mb["position_ids"] = torch.arange(s).expand(len(chunk), -1).contiguous()
        out.append(mb)
    return out


def make_forward_step(vocab_size: int, loss_cfg: Any,
                      extremes: dict[str, float] | None = None) -> Any:
    """The `forward_step_func` of RL training: logits, then the policy-gradient loss.

    `extremes` collects this rank's mismatch maxima (see `policy_loss`)."""

    def forward_step(data_iterator: Any, model: Any) -> tuple:
        from megatron.core import parallel_state as ps

        batch = next(data_iterator)
        output = model(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                       attention_mask=None)
        # Padded vocabulary rows stay out of the softmax: the sampler never draws them either.
        return output, make_loss_func(batch, loss_cfg, vocab_size=vocab_size,
                                      tp_group=ps.get_tensor_model_parallel_group(),
                                      extremes=extremes)

    return forward_step


def recompute_old_logprobs(chunks: list[Any], batches: list[dict[str, torch.Tensor]],
                           vocab_size: int, loss_cfg: Any, micro_batch_size: int) -> None:
    """Replace each micro-batch's `old_logprobs` with the training model's own log-probs.

    One forward-only pass through Megatron's schedule, without autograd, with the loss's own
    log-prob code (same chunking, temperature and vocabulary), so on the update that follows the
    ratio is exactly 1. TP ranks all-reduce inside the log-prob code; under pipeline parallelism
    only the last stage computes (and only it reads `old_logprobs`).
    """
    from megatron.core import parallel_state as ps

    from megatron_rlpt.algo.logprobs import vocab_parallel_logprobs
    from megatron_rlpt.runtime.step import run_forward_backward

    def forward_step(data_iterator: Any, model: Any) -> tuple:
        batch = next(data_iterator)
        output = model(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                       attention_mask=None)

        def loss_func(logits: torch.Tensor) -> tuple:
            mask = batch["loss_mask"].to(logits.device)
            logp, _ = vocab_parallel_logprobs(
                logits, batch["labels"].to(logits.device),
                tp_group=ps.get_tensor_model_parallel_group(),
                chunk_size=loss_cfg.logprob_chunk_size, temperature=loss_cfg.temperature,
                mask=mask, vocab_size=vocab_size)
            batch["old_logprobs"] = torch.where(mask != 0, logp.detach().float(),
                                                torch.zeros_like(logp, dtype=torch.float32))
            return logits.new_zeros(()), (mask != 0).sum().to(torch.int), {}

        return output, loss_func

    seq_length = max(b["tokens"].shape[1] for b in batches)
    with torch.no_grad():
        run_forward_backward(chunks, forward_step, iter(batches), len(batches),
                             micro_batch_size, seq_length, forward_only=True)


def reduce_extremes(extremes: dict[str, float]) -> dict[str, float]:
    """Global maxima of the per-rank `extremes` (names agreed in advance, absent = −inf): MAX
    over data-parallel ranks on the last pipeline stage, then broadcast along the pipeline.
    `mismatch/ratio_min` is kept negated until here."""
    from megatron.core import parallel_state as ps

    names = ("mismatch/ratio_max", "mismatch/ratio_min")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    t = torch.tensor([extremes.get(n, float("-inf")) for n in names], dtype=torch.float64,
                     device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX,
                                     group=ps.get_data_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(t, src=ps.get_pipeline_model_parallel_last_rank(),
                                    group=ps.get_pipeline_model_parallel_group())
    out = {}
    for name, value in zip(names, t.tolist()):
        if value != float("-inf"):
            out[name] = -value if name.endswith("_min") else value
    return out


class RLStage:
    """One RLPT or RLVR optimizer step."""

    def __init__(self, cfg: Any, state: Any, tokenizer: Any) -> None:
        from megatron.core import parallel_state as ps

        self.cfg, self.state, self.tokenizer = cfg, state, tokenizer
        self.source: PromptSource = build_prompt_source(cfg, tokenizer)
        self.engine = build_rollout_engine(cfg, state, tokenizer)
        self.is_judge_rank = ps.get_tensor_model_parallel_rank() == 0
        self.judge = self.source.make_judge() if self.is_judge_rank else None
        # One judging thread: chunk k is judged while chunk k+1 is generated.
        self.judge_pool = ThreadPoolExecutor(1, "rlpt-judge") if self.is_judge_rank else None
        self.cursor = 0  # global position of the next prompt in the endless data order
        if cfg.loss.temperature != cfg.rollout.temperature:
            raise UsageError("loss.temperature must equal rollout.temperature: the loss compares "
                             "log-probs of the distribution the rollouts were sampled from")
        if cfg.loss.old_logprobs not in ("recompute", "engine"):
            raise UsageError(f"loss.old_logprobs must be 'recompute' or 'engine', "
                             f"got {cfg.loss.old_logprobs!r}")
        if cfg.loss.tis_cap < 0:
            raise UsageError("loss.tis_cap must be >= 0 (0 disables the correction)")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume the data order (refill rounds move it)."""
        return {"prompt_cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state.get("prompt_cursor",
                                    state["step"] * self.cfg.batch.prompts_per_step))

    # -- rollout and reward -------------------------------------------------------------------

    def _sampling(self, step: int, round_: int, position: int) -> SamplingParams:
        r = self.cfg.rollout
        seed = random.Random(f"{self.cfg.run.seed}:{step}:{round_}:{position}").getrandbits(63)
        return SamplingParams(max_tokens=r.max_new_tokens, temperature=r.temperature,
                              top_p=r.top_p, top_k=r.top_k, stop=list(r.stop), seed=seed)

    def _round(self, step: int, round_: int, timing: dict[str, float]) -> list[Rollout]:
        """Generate and judge this rank's share of the next `prompts_per_step` prompts.

        Prompts go to the engine in chunks; each finished chunk is judged on the judge thread
        while the next one is generated, and the results are shared with the other TP ranks.
        """
        from megatron.core import parallel_state as ps

        per_step, g = self.cfg.batch.prompts_per_step, self.cfg.grpo.group_size
        first, count = data_parallel_share(per_step)
        positions = [self.cursor + first + i for i in range(count)]
        self.cursor += per_step
        prompts = [self.source.prompt(p, random.Random(f"{self.cfg.run.seed}:{p}"))
                   for p in positions]
        chunk = self.cfg.rollout.judge_chunk_prompts or max(1, len(prompts))
        rollouts: list[Rollout] = []
        futures = []
        t0 = time.perf_counter()
        for c in range(0, len(prompts), chunk):
            part = prompts[c : c + chunk]
            groups = self.engine.generate_ids([p.prompt_ids for p in part], g,
                                              self._sampling(step, round_, positions[c]))
            rollouts += [Rollout(p.prompt_ids, p.task, p.sample_weight, list(gr),
                                 truncated=getattr(p, "truncated", False))
                         for p, gr in zip(part, groups)]
            if self.judge_pool is not None:
                texts = [c.text for gr in groups for c in gr]
                meta = [p for p in part for _ in range(g)]
                futures.append(self.judge_pool.submit(self._judge, texts, meta))
        t1 = time.perf_counter()
        payload: list[Any] = [None]
        if self.judge_pool is not None:
            payload = [[x for f in futures for x in f.result()]]
        t2 = time.perf_counter()
        if ps.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.broadcast_object_list(
                payload, src=ps.get_tensor_model_parallel_src_rank(),
                group=ps.get_tensor_model_parallel_group())
        flat = iter(payload[0])
        for r in rollouts:
            for _ in r.completions:
                reward, valid = next(flat)
                r.rewards.append(reward)
                r.valid.append(valid)
        timing["time/rollout_s"] += t1 - t0
        timing["time/judge_s"] += t2 - t1  # judging not hidden behind generation
        return rollouts

    def _judge(self, texts: list[str], prompts: list[Any]) -> list[tuple[float, bool]]:
        t0 = time.perf_counter()
        results = self.source.score(self.judge, texts, prompts)
        self._judge_busy += time.perf_counter() - t0
        return [(float(x.reward), bool(x.valid)) for x in results]

    def _collect(self, step: int, timing: dict[str, float]) -> tuple[list[Rollout], list[Any]]:
        """Dynamic sampling: rounds of rollouts until `prompts_per_step` groups (over all DP
        ranks) are worth training on or `grpo.max_sampling_rounds` ran out.

        Returns the kept groups with their advantages, and every round's (rollouts, advantages)
        for the metrics. Surplus kept groups are dropped in DP-rank order, the same on every run.
        """
        from megatron.core import parallel_state as ps

        target, g = self.cfg.batch.prompts_per_step, self.cfg.grpo.group_size
        kept: list[tuple[Rollout, torch.Tensor]] = []
        rounds: list[tuple[list[Rollout], Any]] = []
        dp_group = ps.get_data_parallel_group()
        for round_ in range(max(1, self.cfg.grpo.max_sampling_rounds)):
            rollouts = self._round(step, round_, timing)
            rewards = torch.tensor([r.rewards for r in rollouts]).view(-1, g)
            valid = torch.tensor([r.valid for r in rollouts]).view(-1, g)
            adv = group_advantages(rewards, valid, self.cfg.grpo)
            rounds.append((rollouts, adv))
            kept += [(r, adv.advantages[i]) for i, r in enumerate(rollouts) if adv.keep[i]]
            total = torch.tensor([float(len(kept))])
            torch.distributed.all_reduce(total, group=dp_group)
            if total.item() >= target:
                break
        counts = [torch.zeros(1) for _ in range(ps.get_data_parallel_world_size())]
        torch.distributed.all_gather(counts, torch.tensor([float(len(kept))]), group=dp_group)
        before = int(sum(c.item() for c in counts[: ps.get_data_parallel_rank()]))
        return kept[: max(0, target - before)], rounds

    # -- training -----------------------------------------------------------------------------

    def _sequences(self, kept: list[tuple[Rollout, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        rows = []
        for r, advantages in kept:
            for j, c in enumerate(r.completions):
                if not c.token_ids:
                    continue
                ids = r.prompt_ids + list(c.token_ids)
                n_prompt, n = len(r.prompt_ids), len(ids) - 1
                mask = torch.zeros(n)
                mask[n_prompt - 1 :] = 1
                # The engine's log-probs (NaN where it gave none): the old log-probs themselves
                # in `engine` mode, else overwritten by the recompute and kept for the mismatch.
                engine = torch.zeros(n)
                if c.logprobs is not None:
                    engine[n_prompt - 1 :] = torch.tensor(c.logprobs, dtype=torch.float32)
                elif self.cfg.loss.old_logprobs == "engine":
                    raise UsageError("loss.old_logprobs=engine needs an engine that reports "
                                     "log-probs; use loss.old_logprobs=recompute")
                else:
                    engine[n_prompt - 1 :] = float("nan")
                rows.append({
                    "tokens": torch.tensor(ids[:-1]), "labels": torch.tensor(ids[1:]),
                    "loss_mask": mask, "old_logprobs": engine.clone(),
                    "engine_logprobs": engine,
                    "advantages": torch.full((n,), float(advantages[j])),
                    "sample_weight": torch.tensor(r.sample_weight),
                })
        return rows

    def step(self, step: int) -> dict[str, float]:
        from megatron.core import parallel_state as ps

        from megatron_rlpt.runtime.step import train_step

        timing = {"time/rollout_s": 0.0, "time/judge_s": 0.0}
        self._judge_busy = 0.0
        kept, rounds = self._collect(step, timing)
        batches = pack_micro_batches(self._sequences(kept), self.cfg.batch.micro_batch_size,
                                     self.tokenizer.eos_token_id)
        tokens, _ = attach_global_denominators(batches, ps.get_data_parallel_group())

        metrics = self._rollout_metrics(rounds, len(kept))
        t2 = time.perf_counter()
        if tokens == 0:  # nothing to learn from anywhere: no update, so no weight decay drift
            metrics.update(update_skipped=1.0)
        else:
            s = max(b["tokens"].shape[1] for b in batches)
            if self.cfg.loss.old_logprobs == "recompute":
                t_old = time.perf_counter()
                recompute_old_logprobs(self.state.chunks, batches, self.cfg.model.vocab_size,
                                       self.cfg.loss, self.cfg.batch.micro_batch_size)
                timing["time/old_logprobs_s"] = time.perf_counter() - t_old
            extremes: dict[str, float] = {}
            forward_step = make_forward_step(self.cfg.model.vocab_size, self.cfg.loss,
                                             extremes)
            metrics.update(train_step(self.state, forward_step, iter(batches), len(batches),
                                      self.cfg.batch.micro_batch_size, s))
            metrics.update(reduce_extremes(extremes))
            push_weights(self.engine, self.state, self.cfg)
        t3 = time.perf_counter()
        metrics.update(timing)
        metrics.update({"time/judge_busy_s": self._judge_busy, "time/train_s": t3 - t2,
                        "train/tokens": float(tokens),
                        "train/tokens_per_s": tokens / max(t3 - t2, 1e-9)})
        return metrics

    def _rollout_metrics(self, rounds: list[tuple[list[Rollout], Any]],
                         kept: int) -> dict[str, float]:
        """Reward and length statistics over every round, summed over data-parallel ranks."""
        from megatron.core import parallel_state as ps

        # [sum, count] pairs: reward all / asr / msr, response length, failed judgements.
        stats = torch.zeros(6, 2, dtype=torch.float64)
        # kept, zero-variance, failed, seen groups; prompts whose context was truncated
        groups = torch.zeros(5, dtype=torch.float64)
        for rollouts, adv in rounds:
            for r in rollouts:
                groups[4] += float(r.truncated)
                for c, reward, ok in zip(r.completions, r.rewards, r.valid):
                    stats[4] += torch.tensor([len(c.token_ids), 1.0])
                    stats[5] += torch.tensor([0.0 if ok else 1.0, 1.0])
                    if ok:
                        stats[0] += torch.tensor([reward, 1.0])
                        row = 1 if r.task == "asr" else 2 if r.task == "msr" else 3
                        stats[row] += torch.tensor([reward, 1.0])
            groups += torch.tensor([0.0, float(adv.zero_variance.sum()),
                                    float(adv.failed.sum()), float(adv.keep.numel()), 0.0],
                                   dtype=torch.float64)
        groups[0] = kept
        packed = torch.cat([stats.flatten(), groups])
        torch.distributed.all_reduce(packed, group=ps.get_data_parallel_group())
        stats, groups = packed[:12].view(6, 2), packed[12:]

        def mean(i: int) -> float:
            return float(stats[i, 0] / stats[i, 1]) if stats[i, 1] > 0 else float("nan")

        # Per-task rewards only for the tasks the stage has: RLVR's samples are all "math".
        per_task = ({"reward/math": mean(3)} if self.cfg.run.stage == "rlvr"
                    else {"reward/asr": mean(1), "reward/msr": mean(2)})
        return {
            "reward": mean(0), **per_task,
            "response_length": mean(4), "judge/failed": float(stats[5, 0]),
            "judge/failed_fraction": mean(5),
            "grpo/kept_groups": float(groups[0]),
            "grpo/zero_variance_fraction": float(groups[1] / max(groups[3], 1)),
            "grpo/failed_groups": float(groups[2]),
            "grpo/sampling_rounds": float(len(rounds)),
            "data/prompts_truncated": float(groups[4]),
        }

    def close(self) -> None:
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:
            close_engine()
        if self.judge_pool is not None:
            self.judge_pool.shutdown(wait=True)
        if self.judge is not None:
            self.judge.close()
