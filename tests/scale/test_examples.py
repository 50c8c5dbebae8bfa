"""The example configs: they load, carry the paper's settings and real model shapes, and their
documented TP/PP layouts are valid and fit a node of 8 × 80 GiB GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.plan import ClusterSpec, make_plan, total_params
from megatron_rlpt.utils.config import load_config
from tests.multirank import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
ALL = sorted(EXAMPLES.glob("*.yaml"))
MODELS = ("llama3.2_3b", "qwen3_4b", "qwen3_8b")

# From each model's published Hugging Face config.json.
PUBLISHED = {
    "llama3.2_3b": dict(architecture="llama", num_layers=28, hidden_size=3072, ffn_hidden_size=8192,
                        num_attention_heads=24, num_query_groups=8, head_dim=128,
                        vocab_size=128256, rotary_base=500000.0, norm_epsilon=1e-5,
                        qk_layernorm=False, tie_embeddings=True,
                        rope_scaling=(32.0, 1.0, 4.0, 8192), billions=3.21),
    "qwen3_4b": dict(architecture="qwen3", num_layers=36, hidden_size=2560, ffn_hidden_size=9728,
                     num_attention_heads=32, num_query_groups=8, head_dim=128, vocab_size=151936,
                     rotary_base=1e6, norm_epsilon=1e-6, qk_layernorm=True, tie_embeddings=True,
                     rope_scaling=None, billions=4.02),
    "qwen3_8b": dict(architecture="qwen3", num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                     num_attention_heads=32, num_query_groups=8, head_dim=128, vocab_size=151936,
                     rotary_base=1e6, norm_epsilon=1e-6, qk_layernorm=True, tie_embeddings=False,
                     rope_scaling=None, billions=8.19),
}


def load(path: Path) -> TrainConfig:
    return load_config(TrainConfig, path)


def test_every_model_has_both_stages_and_the_quickstart_exists():
    names = {p.stem for p in ALL}
    assert "quickstart_cpu" in names
    for model in MODELS:
        assert {f"rlpt_{model}", f"sft_{model}", f"rlvr_{model}"} <= names


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_loads_and_is_documented(path: Path):
    cfg = load(path)  # unknown keys would raise
    cfg.validate()  # fp8 is off in every example, so this needs no GPU
    readme = (EXAMPLES / "README.md").read_text()
    assert path.name in readme


@pytest.mark.parametrize("model", MODELS)
def test_model_shapes_are_the_published_ones(model: str):
    want = PUBLISHED[model]
    for stage in ("rlpt", "sft", "rlvr"):
        m = load(EXAMPLES / f"{stage}_{model}.yaml").model
        for key in ("architecture", "num_layers", "hidden_size", "ffn_hidden_size",
                    "num_attention_heads", "num_query_groups", "vocab_size", "rotary_base",
                    "norm_epsilon", "qk_layernorm", "tie_embeddings"):
            assert getattr(m, key) == want[key], (stage, key)
        assert (m.kv_channels or m.hidden_size // m.num_attention_heads) == want["head_dim"]
        assert not m.add_qkv_bias and m.params_dtype == "bf16"
        scaling = m.rope_scaling
        got = None if scaling is None else (scaling.factor, scaling.low_freq_factor,
                                            scaling.high_freq_factor,
                                            scaling.original_max_position_embeddings)
        assert got == want["rope_scaling"]
        assert total_params(m) / 1e9 == pytest.approx(want["billions"], abs=0.01)


@pytest.mark.parametrize("model", MODELS)
def test_rlpt_configs_have_the_papers_settings(model: str):
    cfg = load(EXAMPLES / f"rlpt_{model}.yaml")
    assert cfg.run.stage == "rlpt"
    assert cfg.batch.prompts_per_step == 512 and cfg.grpo.group_size == 8
    assert cfg.rollout.temperature == 1.0 and cfg.loss.temperature == 1.0
    assert cfg.optim.lr == 1e-6 and cfg.optim.schedule == "constant" and cfg.optim.warmup_steps == 0
    assert cfg.loss.kl_coef == 0.0
    assert cfg.rollout.max_new_tokens == 8192
    assert cfg.run.init_from == load(EXAMPLES / f"sft_{model}.yaml").run.output_dir
    # Where a code default departs from the paper, the paper config sets the paper's choice
    # (docs/paper.md): plain on-policy GRPO without dynamic sampling, the cited GRPO's
    # per-sequence loss mean, old log-probs from the training model, and a judge reference of
    # s_i plus several later segments for both tasks with the prefix reward.
    assert not cfg.grpo.drop_zero_variance_groups and cfg.grpo.max_sampling_rounds == 1
    assert cfg.grpo.advantage == "mean_std" and cfg.loss.aggregation == "seq_mean"
    assert cfg.loss.clip_eps_low == cfg.loss.clip_eps_high == 0.2
    assert cfg.loss.old_logprobs == "recompute" and cfg.loss.entropy_coef == 0.0
    assert cfg.judge.reward_mode == "prefix"
    assert cfg.task.asr_reference_segments > 0 and cfg.task.msr_reference_segments > 0


@pytest.mark.parametrize("model", MODELS)
def test_rlvr_configs_have_the_rlpt_hyper_parameters(model: str):
    """The paper's RLVR uses "the same hyperparameters as the next-segment reasoning task"."""
    rlvr, rlpt = load(EXAMPLES / f"rlvr_{model}.yaml"), load(EXAMPLES / f"rlpt_{model}.yaml")
    assert rlvr.run.stage == "rlvr"
    assert rlvr.run.init_from == rlpt.run.output_dir
    for section in ("model", "parallel", "optim", "batch", "grpo", "loss"):
        assert getattr(rlvr, section) == getattr(rlpt, section), section
    for key in ("engine", "temperature", "top_p", "max_new_tokens", "max_prompt_tokens"):
        assert getattr(rlvr.rollout, key) == getattr(rlpt.rollout, key), key
    assert rlvr.task.chat_template == rlpt.task.chat_template
    # A JSONL file has no manifest naming its tokenizer: the config must name the model's.
    assert rlvr.data.path.endswith(".jsonl") and rlvr.data.tokenizer


@pytest.mark.parametrize("model", MODELS)
def test_sft_configs_have_the_papers_settings(model: str):
    cfg = load(EXAMPLES / f"sft_{model}.yaml")
    assert cfg.run.stage == "sft"
    assert cfg.batch.sequences_per_step == 1024
    assert cfg.optim.lr == 2e-5 and cfg.optim.schedule == "cosine"
    assert "3 epochs" in (EXAMPLES / f"sft_{model}.yaml").read_text()  # steps derive from it


@pytest.mark.parametrize("path", [p for p in ALL if p.stem != "quickstart_cpu"], ids=lambda p: p.stem)
def test_layout_is_valid_and_fits_one_node(path: Path):
    cfg = load(path)
    cfg.model.validate(cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel)
    assert cfg.parallel.tensor_parallel <= 8, "TP should stay within a node"
    plan = make_plan(cfg, ClusterSpec(nodes=1, gpus_per_node=8))
    assert plan.feasible, plan.errors
    # The layout documented at the top of the file is the one configured.
    header = path.read_text().split("\n")
    layout = next(line for line in header if line.startswith("# Layout:"))
    assert f"TP={cfg.parallel.tensor_parallel}" in layout


# -- the chain, run from the example files ---------------------------------------------------------
#
# cold-start SFT -> RLPT -> RLVR for Qwen3-4B, each `rlpt train --config examples/<stage>_qwen3_4b.yaml`
# run as shipped, from a workspace laid out the way the files expect (models/, data/, runs/ under
# the working directory), so their relative paths (`init_from: runs/sft-qwen3-4b`, `data.path`,
# `data.tokenizer`) resolve unchanged. Overrides, and why each is needed:
#   model.{num_layers,hidden_size,ffn_hidden_size,num_attention_heads,num_query_groups,
#          kv_channels,vocab_size}   a 4B model does not train on a shared 2-core CPU
#   parallel.tensor_parallel=1        one CPU process instead of one per GPU
#   run.steps=1, batch.*              one small step per stage
#   judge.endpoints                   the judge server of slurm/judge_servers.sbatch needs a GPU;
#                                     a real HTTP server on 127.0.0.1 speaking the same OpenAI chat
#                                     API takes its place (kind http, api chat, extra_body unchanged)
#   rollout.engine=megatron           the colocated vLLM needs a GPU (its CPU build takes minutes
#                                     to start; tests/rollout test it)
#   rollout.max_new_tokens=32         the in-process engine sizes its KV cache and attention to
#                                     prompt + budget, not to what is generated: with 8,192 one
#                                     step of 6-token answers takes minutes on a CPU
# Everything else (bf16, distributed optimizer, lr and schedule, G=8, temperature 1.0, 4,096-token
# prompts, chat template, λ=0.5, no KL, the SFT's 8,192-token sequences) is the example's.
#
# The "base model" is a one-layer Qwen3 whose weights are set by hand to a known policy, so the
# rewards are real and predictable: attention is switched off (o_proj = 0) and the MLP maps the
# current token to its successor on a fixed chain, so from the assistant cue the policy writes, with
# probability 1/2 each, `<|startofprediction|>The<|endofprediction|>` or `\boxed{` followed by `4}`
# or `5}` (1/4 each). Every sentence of the corpus starts with "The", so the judge rewards the
# first half of RLPT samples; the RLVR problems' answer is 4, so Math-Verify rewards a quarter of
# RLVR samples. One optimizer step at lr 2e-5 or 1e-6 moves no weight far enough to change that,
# and a stage that did not start from the previous one's weights (random init) would earn nothing.

CHAIN_MODEL = dict(num_layers=1, hidden_size=64, ffn_hidden_size=64, num_attention_heads=4,
                   num_query_groups=2, kv_channels=16)
TAGS = ["<|startofprediction|>", "<|endofprediction|>"]
# token -> successors (two: a fair coin); the tokenizer's end-of-text closes both answers.
CHAIN = {"Ċ": ["\\", TAGS[0]], "\\": ["b"], "b": ["ox"], "ox": ["ed"], "ed": ["{"],
         "{": ["4", "5"], "4": ["}"], "5": ["}"], "}": ["<|endoftext|>"],
         TAGS[0]: ["The"], "The": [TAGS[1]], TAGS[1]: ["<|endoftext|>"]}


def _write_chain_model(out: Path) -> int:
    """The scripted Qwen3 "base model" (HF format) with the shipped tokenizer plus the two
    prediction tags as tokens; returns its vocabulary size."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from megatron_rlpt.data.tokenizer import default_tokenizer_path

    tok = AutoTokenizer.from_pretrained(str(default_tokenizer_path()))
    tok.add_tokens(TAGS)
    tok.save_pretrained(str(out))
    ref = load(EXAMPLES / "sft_qwen3_4b.yaml").model  # every non-size field as the example has it
    m = CHAIN_MODEL
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=m["hidden_size"],
                      intermediate_size=m["ffn_hidden_size"], num_hidden_layers=m["num_layers"],
                      num_attention_heads=m["num_attention_heads"],
                      num_key_value_heads=m["num_query_groups"], head_dim=m["kv_channels"],
                      max_position_embeddings=ref.max_position_embeddings,
                      rope_theta=ref.rotary_base, rms_norm_eps=ref.norm_epsilon,
                      tie_word_embeddings=ref.tie_embeddings, torch_dtype="float32",
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    tokens = sorted({t for a, bs in CHAIN.items() for t in [a, *bs]})
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.unk_token_id not in ids and None not in ids, "chain token missing from vocabulary"
    dim = {t: d for d, t in enumerate(tokens)}  # each chain token owns one hidden dimension
    h = m["hidden_size"]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_()
        emb[:, : len(tokens)] = 0  # other tokens live in the remaining dimensions
        for t, i in zip(tokens, ids):
            emb[i] = 0
            emb[i, dim[t]] = 10.0  # after RMSNorm: sqrt(h) on its own axis
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        mlp = layer.mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight):
            w.zero_()
        for unit, (a, successors) in enumerate(CHAIN.items()):
            mlp.gate_proj.weight[unit, dim[a]] = 1.0  # silu(8) * 8 ~ 64 on token a, else 0
            mlp.up_proj.weight[unit, dim[a]] = 1.0
            for b in successors:
                mlp.down_proj.weight[dim[b], unit] = 100.0 / h  # +100 on b's axis
    model.save_pretrained(str(out), safe_serialization=True)
    return len(tok)


def _chain_corpus(path: Path) -> None:
    """The quickstart's lamp documents with every sentence starting with "The"."""
    import json
    import re

    src = REPO_ROOT / "megatron_rlpt" / "assets" / "quickstart" / "corpus.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()[:24]
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            record = json.loads(line)
            text = re.sub(r"At (\d+) o'clock the (\w+) shows (\w+)\.",
                          r"The \2 shows \3 at \1 o'clock.", record["text"])
            f.write(json.dumps({"text": text}) + "\n")


def _rlpt(workspace: Path, *args: str, timeout: float = 300) -> str:
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "megatron_rlpt.cli", *args], cwd=workspace,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
                               "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, f"rlpt {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, shared_data):
    """Run the whole chain once; the tests below check each stage's outputs."""
    import json

    from tests.objective.servers import ScriptedJudgeServer

    class RecordingJudge(ScriptedJudgeServer):
        """The scripted judge, keeping every judge prompt it is sent."""

        def __init__(self) -> None:
            super().__init__()
            self.prompts: list[str] = []

        async def _answer(self, request, prompt, wrap):
            self.prompts.append(prompt)
            return await super()._answer(request, prompt, wrap)

    ws = tmp_path_factory.mktemp("chain")
    (ws / "data").mkdir()
    vocab = _write_chain_model(ws / "models" / "Qwen3-4B-Base")
    size = [f"model.{k}={v}" for k, v in {**CHAIN_MODEL, "vocab_size": vocab}.items()]
    size += ["parallel.tensor_parallel=1", "run.steps=1"]
    rollout = ["rollout.engine=megatron", "rollout.max_new_tokens=32"]
    out: dict = {"ws": ws}
    _rlpt(ws, "convert", "hf-to-megatron", "--hf", "models/Qwen3-4B-Base",
          "--out", "models/qwen3-4b-base-megatron")

    sft = [{"prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = \\boxed{{{a + b}}}."}
           for a in range(3) for b in range(3)]
    (ws / "data" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    out["sft_log"] = _rlpt(ws, "train", "--config", str(EXAMPLES / "sft_qwen3_4b.yaml"), *size,
                           "batch.sequences_per_step=4")

    _chain_corpus(ws / "corpus.jsonl")
    out["prepare_log"] = _rlpt(ws, "prepare", "--input", "corpus.jsonl", "--output",
                               "data/rlpt-qwen3", "--tokenizer", "models/Qwen3-4B-Base",
                               "--decontaminate",
                               str(shared_data / "benchmarks" / "math500" / "test.jsonl"),
                               "--set", "segment.short=drop")  # as examples/README.md runs it
    with RecordingJudge() as judge:
        out["rlpt_log"] = _rlpt(ws, "train", "--config", str(EXAMPLES / "rlpt_qwen3_4b.yaml"),
                                *size, "batch.prompts_per_step=8", *rollout,
                                f"judge.endpoints=[{judge.url}]")
        out["judge_prompts"] = list(judge.prompts)

    problems = [{"problem": f"How many {thing} does a {owner} have?", "answer": "4"}
                for thing, owner in [("legs", "dog"), ("sides", "square"), ("wheels", "car"),
                                     ("corners", "rectangle")]]
    (ws / "data" / "rlvr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
    out["rlvr_log"] = _rlpt(ws, "train", "--config", str(EXAMPLES / "rlvr_qwen3_4b.yaml"), *size,
                            "batch.prompts_per_step=4", *rollout)
    return out


def _checkpointed(run: Path, step: int) -> bool:
    return (run / "checkpoints" / f"iter_{step:07d}" / "COMPLETE").exists() or \
        (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(step)


@pytest.mark.slow
def test_chain_sft_stage(chain):
    run = chain["ws"] / "runs" / "sft-qwen3-4b"
    (m,) = _metrics(run)
    assert m["step"] == 1 and m["loss"] > 0 and m["sft/truncated_examples"] == 0
    assert _checkpointed(run, 1)


@pytest.mark.slow
def test_chain_rlpt_stage_trains_both_tasks_on_judged_rewards(chain):
    """RLPT from the SFT *run directory* (the example's init_from), λ = 0.5: ASR and MSR samples
    in one step, both judged over HTTP, and an update."""
    import json
    import math

    manifest = json.loads((chain["ws"] / "data" / "rlpt-qwen3" / "manifest.json").read_text())
    assert manifest["decontamination"]["files"]  # the eval set is named, not "none"
    run = chain["ws"] / "runs" / "rlpt-qwen3-4b"
    (m,) = _metrics(run)
    assert m["judge/failed"] == 0
    # Half of the samples answer "The", a prefix of every reference: rewards are the judge's.
    assert 0 < m["reward"] < 1
    for task in ("asr", "msr"):
        assert math.isfinite(m[f"reward/{task}"]) and 0 < m[f"reward/{task}"] < 1, task
    assert "reward/math" not in m
    assert m["grpo/kept_groups"] > 0 and not m.get("update_skipped")
    assert m["grad_norm"] > 0 and math.isfinite(m["loss"])
    assert _checkpointed(run, 1)


@pytest.mark.slow
def test_chain_rlvr_stage_rewards_come_from_the_math_verifier(chain):
    import math

    run = chain["ws"] / "runs" / "rlvr-qwen3-4b"
    (m,) = _metrics(run)
    assert m["judge/failed"] == 0
    # A quarter of the samples box the right answer: Math-Verify's 1s and 0s, not a constant.
    assert 0 < m["reward"] < 1
    # Every RLVR sample is a math one: its reward is reported as such, RLPT's task keys are not.
    assert m["reward/math"] == m["reward"]
    assert "reward/asr" not in m and "reward/msr" not in m
    assert m["grpo/kept_groups"] > 0 and not m.get("update_skipped")
    assert m["grad_norm"] > 0 and math.isfinite(m["loss"])
    assert _checkpointed(run, 1)


@pytest.mark.slow
def test_chain_rlpt_step_built_msr_prompts_and_judged_them_against_s_i(chain):
    """The step's prompts, rebuilt from the run's saved config by the trainer's own prompt source
    (positions 0.., each drawn with the RNG keyed by seed and position), hold both tasks; the
    references the judge actually received are theirs, MSR ones among them, and an MSR reference
    holds s_i and the segments after it (the example's msr_reference_segments), as the paper
    gives the judge several subsequent segments for both tasks."""
    import random
    import re

    from megatron_rlpt.config import TrainConfig
    from megatron_rlpt.data.tokenizer import load_tokenizer
    from megatron_rlpt.stages.prompts import RLPTSource
    from megatron_rlpt.tasks import MSR_TEMPLATE

    ws = chain["ws"]
    run = ws / "runs" / "rlpt-qwen3-4b"
    cfg = load_config(TrainConfig, run / "config.yaml")
    cfg.data.path = str(ws / cfg.data.path)
    tok = load_tokenizer(run / "checkpoints" / "tokenizer")
    source = RLPTSource(cfg, tok)
    (m,) = _metrics(run)
    n = int(m["grpo/sampling_rounds"]) * cfg.batch.prompts_per_step
    prompts = [source.prompt(p, random.Random(f"{cfg.run.seed}:{p}")) for p in range(n)]
    msr = [p for p in prompts if p.task == "msr"]
    asr = [p for p in prompts if p.task == "asr"]
    assert msr and asr, [p.task for p in prompts]
    head = MSR_TEMPLATE.split("{prompt}")[0]
    for p in msr:
        text = tok.decode(p.prompt_ids)
        assert head in text and "<MASK>" in text and text.endswith("<|im_start|>assistant\n")
    ref = re.compile(r"Reference: (.*?)\n\nPredicted: ", re.DOTALL)
    judged = {ref.search(p).group(1) for p in chain["judge_prompts"]}
    assert judged <= {p.reference for p in prompts}
    only_msr = {p.reference for p in msr} - {p.reference for p in asr}
    assert judged & only_msr, "no MSR sample was judged against its own reference"
    assert cfg.task.msr_reference_segments > 0
    for p in msr:
        assert p.reference.startswith(p.target)
    assert any(len(p.reference) > len(p.target) for p in msr), "MSR judged against s_i alone"
