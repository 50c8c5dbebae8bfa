"""The one config tree of `rlpt train`: every field documented where it is declared.

A YAML file mirrors this tree (`run:`, `model:`, `parallel:`, `optim:`, `data:`, `batch:`,
`rollout:`, `task:`, `judge:`, `grpo:`, `loss:`); `key.sub=value` arguments override it. The
resolved config is saved as `config.yaml` in the run directory. `docs/config.md` is generated
from these docstrings (`python tools/gen_config_docs.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_rlpt.algo.grpo import GRPOConfig
from megatron_rlpt.algo.loss import LossConfig
from megatron_rlpt.errors import UsageError
from megatron_rlpt.metrics_log import WandbConfig
from megatron_rlpt.reward.config import JudgeConfig
from megatron_rlpt.rollout.sglang_engine import SGLangConfig
from megatron_rlpt.rollout.vllm_engine import VLLMConfig
from megatron_rlpt.runtime.distributed import ParallelConfig
from megatron_rlpt.runtime.model import ModelConfig
from megatron_rlpt.runtime.optim import OptimConfig
from megatron_rlpt.tasks import TaskConfig

STAGES = ("pretrain", "sft", "rlpt", "rlvr")


@dataclass
class RunConfig:
    """What to run and where its outputs go."""

    stage: str = "rlpt"
    """`pretrain` (next-token loss on prepared text), `sft` (cold start on instruction JSONL),
    `rlpt` (next-segment reasoning RL) or `rlvr` (RL with a verifiable math reward)."""
    output_dir: str = "runs/rlpt"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, wandb/."""
    steps: int = 100
    """Optimizer steps to train in total (a resumed run continues to this count)."""
    seed: int = 1234
    """Seed of data order, task mix, sampling and initialisation."""
    init_from: str | None = None
    """Checkpoint to take the initial weights from: a previous stage's run directory (its newest
    checkpoint), a checkpoint root, one iter_N directory, the output of `rlpt convert
    hf-to-megatron`, or a Megatron-LM torch_dist checkpoint (its --save directory or one
    iteration). The model architecture and the tokenizer come from it (see `model` and
    docs/convert.md). Read on a fresh start only: a resumed run takes weights, architecture and
    tokenizer from its own checkpoints, so this checkpoint may be gone by then."""
    resume: bool = True
    """Continue from the newest complete checkpoint under output_dir/checkpoints if there is one."""
    save_every: int = 50
    """Save a checkpoint every this many steps (and always at the end)."""
    eval_every: int = 0
    """`pretrain`: compute the validation loss (`data.valid_path` or `data.split`) every this
    many steps and at the last step; 0 never."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted after a newer one is complete."""
    progress: bool = True
    """Report each step on rank 0: a progress bar when stdout is a terminal, otherwise (a Slurm
    log, a pipe) one plain line per step with reward, loss, tokens/s, consumed samples/tokens and
    ETA. False: neither (metrics.jsonl and wandb are written either way)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""


@dataclass
class DataConfig:
    """Training data."""

    path: str | list[float | str] = ""
    """`pretrain`: Megatron-LM's blend of Megatron IndexedDataset prefixes (`/data/a_text_document`
    for `.bin`/`.idx`): one prefix, a list of prefixes (weighted by size) or
    `[0.3, /data/a, 0.7, /data/b]`; a JSONL file (`text` field), a plain text file or an
    `rlpt prepare` directory may stand for a prefix (tokenized once into `data.cache_dir`).
    `rlpt`: an `rlpt prepare` output directory, or `[w1, dirA, w2, dirB, ...]` to sample
    prompts from several by weight. `sft`/`rlvr`: a JSONL file."""
    valid_path: str | list[float | str] | None = None
    """`pretrain`: validation data, in the same syntax as `path`; its loss (`valid/loss`) is
    logged every `run.eval_every` steps. None: the validation part of `split`, if any."""
    split: str | None = None
    """`pretrain` without `valid_path`: Megatron-LM's train,valid,test split of `path`'s
    documents, e.g. `98,2,0`. None trains on all of them."""
    valid_sequences: int = 64
    """`pretrain`: sequences per validation (the same ones each time)."""
    cache_dir: str | None = None
    """`pretrain`: where the dataset indices (and tokenized JSONL/text) are cached; built once,
    on rank 0, reused by later runs. None: `<run.output_dir>/data_cache`."""
    tokenizer: str | None = None
    """Hugging Face tokenizer directory; None uses the tokenizer saved with the prepared data, or
    the project's shipped tokenizer."""
    seq_length: int = 1024
    """`pretrain`/`sft`: tokens per training sequence."""
    prompt_key: str = "prompt"
    """`sft`/`rlvr`: field with the user prompt (or problem)."""
    response_key: str = "response"
    """`sft`: field with the target response."""
    answer_key: str = "answer"
    """`rlvr`: field with the reference answer."""


@dataclass
class BatchConfig:
    """How much data one optimizer step sees."""

    prompts_per_step: int = 512
    """RL: prompts per step (the paper's batch size 512); each gets `grpo.group_size` samples."""
    sequences_per_step: int = 1024
    """`pretrain`/`sft`: sequences per optimizer step (cold-start SFT: 1024)."""
    micro_batch_size: int = 1
    """Sequences per forward/backward pass on one data-parallel rank."""


@dataclass
class RolloutConfig:
    """How completions are sampled."""

    engine: str = "megatron"
    """`megatron` (in-process, on the training weights), `vllm` (a vLLM sidecar per
    model-parallel group on its GPUs, weights pushed after each step) or `sglang` (external
    servers, weights pushed at start-up and after each step)."""
    temperature: float = 1.0
    """Sampling temperature (the paper's 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling; 0 disables it."""
    max_new_tokens: int = 8192
    """Longest response (the paper's 8,192)."""
    max_prompt_tokens: int = 4096
    """Longest prompt; longer contexts are cut from the left before the template is applied."""
    stop: list[str] = field(default_factory=lambda: ["<|endofprediction|>"])
    """Stop strings (kept in the response)."""
    judge_chunk_prompts: int = 8
    """Prompts per engine call. Each finished chunk is judged on a background thread while the
    next one is generated, so judge latency hides behind generation; 0 sends all of a rank's
    prompts in one call (no overlap)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """`vllm`: the vLLM sidecar."""
    sglang: SGLangConfig = field(default_factory=SGLangConfig)
    """`sglang`: the external SGLang servers."""


@dataclass
class TrainConfig:
    """Everything `rlpt train` needs."""

    run: RunConfig = field(default_factory=RunConfig)
    """What to run and where."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy architecture. With `run.init_from` it comes from the checkpoint's
    model_config.json (or Megatron-LM's saved arguments) and this section is optional: it may set
    only params_dtype, fp8, transformer_impl, recompute_granularity, dropouts, init_method_std,
    max_position_embeddings and the kernel-fusion switches; any other field must equal the
    checkpoint's (docs/convert.md)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """TP / PP / CP layout (DP takes the remaining ranks)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """Batch sizes."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """RL sampling."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """ASR / MSR prompts and the judge's reference."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The reward model."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Advantages and dynamic sampling."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Policy-gradient loss."""

    def validate(self) -> None:
        """Raise UsageError for settings that cannot work together."""
        if self.run.stage not in STAGES:
            raise UsageError(f"run.stage must be one of {STAGES}, got {self.run.stage!r}")
        if self.run.steps < 1:
            raise UsageError("run.steps must be >= 1")
        if not self.data.path:
            raise UsageError("data.path is required")
        if not isinstance(self.data.path, str) and self.run.stage in ("sft", "rlvr"):
            raise UsageError(f"data.path of {self.run.stage} is one JSONL file, not a list")
        if self.run.eval_every < 0 or self.data.valid_sequences < 0:
            raise UsageError("run.eval_every and data.valid_sequences must be >= 0")
        if self.rollout.engine not in ("megatron", "vllm", "sglang"):
            raise UsageError(f"rollout.engine must be megatron, vllm or sglang, got {self.rollout.engine!r}")
        if self.rollout.engine == "megatron" and self.parallel.pipeline_parallel > 1 \
                and self.run.stage in ("rlpt", "rlvr"):
            raise UsageError("the in-process rollout engine needs pipeline_parallel=1; "
                             "use rollout.engine=vllm or sglang with PP")
        if self.batch.micro_batch_size < 1 or self.batch.prompts_per_step < 1:
            raise UsageError("batch sizes must be >= 1")
        self.model.validate(self.parallel.tensor_parallel, self.parallel.pipeline_parallel)
        self.optim.validate()
