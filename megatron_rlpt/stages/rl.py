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


def pack_micro_batches(rows: list[dict[str, torch.Tensor]], micro_batch_size: int,
                       pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-pad sequences into micro-batches of `micro_batch_size` rows.

    A rank that kept nothing gets one empty micro-batch (no loss tokens), so that every rank
    takes part in the same collectives.
    """
    if not rows:
        rows = [{"tokens": torch.tensor([pad_id]), "labels": torch.tensor([pad_id]),
                 "loss_mask": torch.zeros(1), "old_logprobs": torch.zeros(1),
                 "advantages": torch.zeros(1), "sample_weight": torch.tensor(0.0)}]
    out = []
    for i in range(0, len(rows), micro_batch_size):
        chunk = rows[i : i + micro_batch_size]
        s = max(len(r["tokens"]) for r in chunk)
        mb: dict[str, torch.Tensor] = {}
        for key in ("tokens", "labels", "loss_mask", "old_logprobs", "advantages"):
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


def make_forward_step(vocab_size: int, loss_cfg: Any) -> Any:
    """The `forward_step_func` of RL training: logits, then the policy-gradient loss."""

    def forward_step(data_iterator: Any, model: Any) -> tuple:
        from megatron.core import parallel_state as ps

        batch = next(data_iterator)
        output = model(input_ids=batch["tokens"], position_ids=batch["position_ids"],
                       attention_mask=None)
        # Padded vocabulary rows stay out of the softmax: the sampler never draws them either.
        return output, make_loss_func(batch, loss_cfg, vocab_size=vocab_size,
                                      tp_group=ps.get_tensor_model_parallel_group())

    return forward_step


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
            rollouts += [Rollout(p.prompt_ids, p.task, p.sample_weight, list(gr))
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
                old = torch.zeros(n)
                old[n_prompt - 1 :] = torch.tensor(c.logprobs, dtype=torch.float32)
                rows.append({
                    "tokens": torch.tensor(ids[:-1]), "labels": torch.tensor(ids[1:]),
                    "loss_mask": mask, "old_logprobs": old,
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
            forward_step = make_forward_step(self.cfg.model.vocab_size, self.cfg.loss)
            metrics.update(train_step(self.state, forward_step, iter(batches), len(batches),
                                      self.cfg.batch.micro_batch_size, s))
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
        groups = torch.zeros(4, dtype=torch.float64)  # kept, zero-variance, failed, seen
        for rollouts, adv in rounds:
            for r in rollouts:
                for c, reward, ok in zip(r.completions, r.rewards, r.valid):
                    stats[4] += torch.tensor([len(c.token_ids), 1.0])
                    stats[5] += torch.tensor([0.0 if ok else 1.0, 1.0])
                    if ok:
                        stats[0] += torch.tensor([reward, 1.0])
                        row = 1 if r.task == "asr" else 2 if r.task == "msr" else 3
                        stats[row] += torch.tensor([reward, 1.0])
            groups += torch.tensor([0.0, float(adv.zero_variance.sum()),
                                    float(adv.failed.sum()), float(adv.keep.numel())],
                                   dtype=torch.float64)
        groups[0] = kept
        packed = torch.cat([stats.flatten(), groups])
        torch.distributed.all_reduce(packed, group=ps.get_data_parallel_group())
        stats, groups = packed[:12].view(6, 2), packed[12:]

        def mean(i: int) -> float:
            return float(stats[i, 0] / stats[i, 1]) if stats[i, 1] > 0 else float("nan")

        return {
            "reward": mean(0), "reward/asr": mean(1), "reward/msr": mean(2),
            "response_length": mean(4), "judge/failed": float(stats[5, 0]),
            "judge/failed_fraction": mean(5),
            "grpo/kept_groups": float(groups[0]),
            "grpo/zero_variance_fraction": float(groups[1] / max(groups[3], 1)),
            "grpo/failed_groups": float(groups[2]),
            "grpo/sampling_rounds": float(len(rounds)),
        }

    def close(self) -> None:
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:
            close_engine()
        if self.judge_pool is not None:
            self.judge_pool.shutdown(wait=True)
        if self.judge is not None:
            self.judge.close()
