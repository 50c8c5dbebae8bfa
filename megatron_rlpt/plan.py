"""Cluster planner: check a training config's layout on N nodes × G GPUs, estimate memory and time.

Nothing here touches a GPU or Megatron; it is arithmetic on the config, so a layout can be
planned on a laptop before a thousand GPUs are booked. The formulas (all documented in
docs/cluster.md, bytes unless stated):

Parameters (from the shapes; q = heads·head_dim, k = query_groups·head_dim, f = ffn size):
  per layer  h·(q + 2k) [+ q + 2k bias] + q·h + h·2f + f·h + 2h [+ 2·head_dim qk-norm]
  embedding  V_pad·h on the first pipeline stage; output layer V_pad·h on the last stage unless
             tied (tied with PP > 1: the last stage keeps its own copy, as Megatron does); final
             norm h on the last stage. Matrices are split by TP, norms are replicated.
Model states per parameter on a GPU:
  weights    2 (bf16) or 4 (fp32)
  gradients  4 with grad_reduce_in_fp32 or fp32 params, else 2 (Megatron's grad buffer)
  optimizer  bf16: 12 (fp32 main weight + Adam exp_avg + exp_avg_sq); fp32: 8 (Adam moments);
             divided by DP·CP with the distributed optimizer
Activations per token per layer (e = activation bytes, t = TP, m = micro-batch size):
  e·(4h/t_sp + (2q + 2k)/t + 5f/t + 4·head_dim/m) [+ e·(q + k)/t with QK-norm]
  4h: the inputs of the two RMSNorms and of the QKV and FC1 matmuls (divided by TP only with
  sequence parallelism); 2q + 2k: Q, K, V after rotary and the attention output; 5f: the SwiGLU
  FC1 output (gate and up), silu(gate), the copy `up + glu_linear_offset` that Megatron's
  unfused GLU makes (bias_activation_fusion is off) and the FC2 input; 4·head_dim: rotary
  cos and sin per position, recomputed for Q and K in every layer.
  `transformer_impl: local` (unfused attention) repeats K and V to every query head, so they
  count q each (2q + 2k becomes 4q), and saves the fp32 softmax, its model-dtype copy for the
  probabilities × V matmul when the model is not fp32, and the causal mask (a byte per score):
  (4 + e if e < 4 else 4)·(heads/t)·s + s/m. tests/scale/test_plan.py checks this against a
  forward pass measured on CPU (local spec), within the bound stated there.
  Full recompute keeps only each layer's input (e·h/t_sp) plus one layer's full set while it is
  recomputed. A pipeline stage i holds min(PP − i, micro-batches) micro-batches in flight
  (1F1B), times (1 + (PP − 1)/(PP·VPP)) with interleaving.
Logits on the last stage, per token: pretrain/sft (Megatron's cross-entropy) (e + 4)·V_pad/t;
  RL `logprob_mode: logits` 2e·V_pad/t (logits and their gradient) + 12·chunk·V_pad/t;
  `fused` the chunk term only.
Rollout KV cache (RL, engine on the training GPUs): 2·layers·kv_heads·head_dim·2·tokens / TP
  per sequence of prompt + response tokens; in-process vLLM also holds a bf16 weight copy.
Step time: training FLOPs per token 3 × forward (4 × with full recompute), forward = 2 × matmul
  parameters + 2·layers·q·s (causal attention over the average context s/2); time = tokens ×
  FLOPs / (GPUs × peak × MFU), or tokens / (GPUs × the measured tokens/s/GPU when given).
  Rollout time = generated tokens / (GPUs × tokens/s/GPU), from a given figure or from
  rollout MFU × peak / forward FLOPs per token, but at least max_new_tokens × the time of one
  decoding step (the longest response is generated token by token).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from megatron_rlpt.errors import UsageError

GIB = 2**30
RL_STAGES = ("rlpt", "rlvr")


@dataclass
class ClusterSpec:
    """The machines and the throughput figures a plan is made for."""

    nodes: int
    """Nodes in the job."""
    gpus_per_node: int
    """GPUs (training ranks) per node."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU in GiB (H100 80GB: 80; H200: 141; A100 40GB: 40)."""
    reserve_gib: float = 5.0
    """Memory kept back for the CUDA context, NCCL buffers and allocator fragmentation."""
    peak_tflops: float = 989.0
    """Dense bf16 peak of one GPU in TFLOP/s (H100 SXM: 989; A100: 312)."""
    train_mfu: float = 0.35
    """Model FLOPs utilisation of the training step, used when train_tokens_per_gpu_s is None."""
    train_tokens_per_gpu_s: float | None = None
    """Measured training throughput (tokens/s/GPU, forward + backward); overrides train_mfu."""
    rollout_mfu: float = 0.05
    """FLOPs utilisation of generation (decoding is memory-bound), when the figure below is None."""
    rollout_tokens_per_gpu_s: float | None = None
    """Measured generation throughput (generated tokens/s/GPU); overrides rollout_mfu."""
    rollout_gpus: int | None = None
    """GPUs generating rollouts; None: the training GPUs (colocated engine)."""
    rollout_batch: int | None = None
    """Sequences one engine replica decodes at once; None: report how many fit instead."""
    decode_step_ms: float = 15.0
    """Milliseconds per decoding step of one sequence: generation takes at least the longest
    response times this, however many GPUs share the work."""
    recompute: str | None = None
    """`none`, `full` or `selective` activation recompute; None: the config's, else none."""
    mean_prompt_tokens: int | None = None
    """Average prompt length for the step time; None: the maximum (an upper bound)."""
    mean_response_tokens: int | None = None
    """Average response length for the step time; None: the maximum (an upper bound)."""

    def validate(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise UsageError("--nodes and --gpus-per-node must be >= 1")
        if self.gpu_memory_gib <= 0 or self.reserve_gib < 0:
            raise UsageError("GPU memory must be > 0 and the reserve >= 0")
        if self.recompute not in (None, "none", "full", "selective"):
            raise UsageError(f"recompute must be none, full or selective, got {self.recompute!r}")
        for name in ("peak_tflops", "train_mfu", "rollout_mfu", "decode_step_ms"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be > 0")
        for name in ("train_tokens_per_gpu_s", "rollout_tokens_per_gpu_s", "rollout_gpus",
                     "rollout_batch", "mean_prompt_tokens", "mean_response_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"{name} must be > 0")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class StageMemory:
    """Bytes on one GPU of one pipeline stage."""

    stage: int
    """Pipeline stage index (0 is the first)."""
    params: int
    """Parameters held by one GPU of the stage (its TP share)."""
    weights: float
    """Model weights in the parameter dtype."""
    grads: float
    """Megatron's contiguous gradient buffer."""
    optimizer: float
    """fp32 main weights (bf16 training) and Adam moments, sharded by the distributed optimizer."""
    activations: float
    """Activations saved for the backward pass, all micro-batches in flight."""
    logits: float
    """Output logits and the log-prob / cross-entropy working set (last stage only)."""
    rollout_weights: float = 0.0
    """In-process vLLM's own bf16 weight copy."""
    kv_cache: float = 0.0
    """Rollout KV cache for `Plan.rollout_batch` sequences."""

    @property
    def states(self) -> float:
        return self.weights + self.grads + self.optimizer

    @property
    def train_peak(self) -> float:
        return self.states + self.activations + self.logits

    @property
    def rollout_peak(self) -> float:
        return self.states + self.rollout_weights + self.kv_cache


@dataclass
class Plan:
    """A checked layout with its memory and time estimates."""

    config_name: str
    """Where the config came from (for the report)."""
    cluster: ClusterSpec
    """The machines planned for."""
    tp: int
    """Tensor-parallel size."""
    pp: int
    """Pipeline-parallel size."""
    cp: int
    """Context-parallel size."""
    vpp: int | None
    """Virtual pipeline chunks per stage, or None."""
    dp: int
    """Data-parallel size (0 when the world does not divide into TP×PP×CP)."""
    stage_kind: str
    """The config's run.stage."""
    seq_length: int
    """Longest training sequence (RL: max prompt + max response)."""
    micro_batch: int
    """Sequences per micro-batch."""
    micro_batches: int
    """Micro-batches per data-parallel rank per optimizer step."""
    recompute: str
    """Activation recompute assumed: none, full or selective."""
    total_params: int
    """Parameters of the whole model (vocabulary padded)."""
    padded_vocab: int
    """Embedding rows after padding for TP."""
    stages: list[StageMemory] = field(default_factory=list)
    """Memory of one GPU of each pipeline stage."""
    kv_bytes_per_sequence: float = 0.0
    """KV cache of one full-length rollout on one GPU (0 without a colocated engine)."""
    rollout_batch: int | None = None
    """Sequences decoded at once per TP group: given, or as many as fit (up to the step's share)."""
    rollout_capacity: int | None = None
    """Full-length sequences whose KV cache fits beside the training state (colocated engine)."""
    train_tokens: float = 0.0
    """Tokens trained on per step (all ranks)."""
    rollout_tokens: float = 0.0
    """Tokens generated per step (all ranks)."""
    train_s: float = 0.0
    """Estimated seconds of forward and backward passes per step."""
    rollout_s: float = 0.0
    """Estimated seconds of generation per step."""
    errors: list[str] = field(default_factory=list)
    """Why the layout cannot run; empty when feasible."""
    notes: list[str] = field(default_factory=list)
    """Warnings that do not make it infeasible."""

    @property
    def feasible(self) -> bool:
        return not self.errors

    @property
    def step_s(self) -> float:
        return self.train_s + self.rollout_s

    @property
    def peak_bytes(self) -> float:
        return max((max(s.train_peak, s.rollout_peak) for s in self.stages), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(feasible=self.feasible, step_s=self.step_s, peak_bytes=self.peak_bytes)
        for s, d in zip(self.stages, out["stages"]):
            d.update(states=s.states, train_peak=s.train_peak, rollout_peak=s.rollout_peak)
        return out


# -- shapes --------------------------------------------------------------------------------------


def _dims(model: Any) -> tuple[int, int, int, int, int]:
    """(h, q, k, f, head_dim) of the model: width, query, key/value, MLP widths, head size."""
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    head_dim = model.kv_channels or model.hidden_size // heads
    return model.hidden_size, heads * head_dim, groups * head_dim, model.ffn_hidden_size, head_dim


def padded_vocab(model: Any, tp: int) -> int:
    """Embedding rows after Megatron's padding to a multiple of make_vocab_size_divisible_by·TP."""
    multiple = model.make_vocab_size_divisible_by * tp
    return -(-model.vocab_size // multiple) * multiple


def layer_params(model: Any, tp: int = 1) -> tuple[int, int]:
    """(TP-split, replicated) parameters of one transformer layer on one TP rank."""
    h, q, k, f, head_dim = _dims(model)
    split = h * (q + 2 * k) + q * h + h * 2 * f + f * h
    if model.add_qkv_bias:
        split += q + 2 * k
    replicated = 2 * h + (2 * head_dim if model.qk_layernorm else 0)
    return split // tp, replicated


def total_params(model: Any, tp: int = 1) -> int:
    """Parameters of the whole model (with the vocabulary padded for `tp`)."""
    split, replicated = layer_params(model)
    vocab_rows = padded_vocab(model, tp) * model.hidden_size
    outputs = 0 if model.tie_embeddings else vocab_rows
    return model.num_layers * (split + replicated) + vocab_rows + outputs + model.hidden_size


def stage_params(model: Any, tp: int, pp: int, stage: int) -> int:
    """Parameters on one GPU of pipeline stage `stage`."""
    split, replicated = layer_params(model, tp)
    n = model.num_layers // pp * (split + replicated)
    vocab_rows = padded_vocab(model, tp) * model.hidden_size // tp
    if stage == 0:
        n += vocab_rows
    if stage == pp - 1:
        n += model.hidden_size  # final norm
        if not model.tie_embeddings or pp > 1:
            n += vocab_rows  # output layer, or the last stage's copy of tied embeddings
    return n


def matmul_params(model: Any) -> int:
    """Parameters that do a multiply-add per token (all but the embedding lookup and norms)."""
    split, _ = layer_params(model)
    return model.num_layers * split + padded_vocab(model, 1) * model.hidden_size


def forward_flops_per_token(model: Any, seq_length: int) -> float:
    """Forward FLOPs per token at sequence length `seq_length` (causal attention: s/2 context)."""
    _, q, _, _, _ = _dims(model)
    return 2.0 * matmul_params(model) + 2.0 * model.num_layers * q * seq_length


def activation_bytes_per_token(model: Any, tp: int, seq_length: int, sequence_parallel: bool,
                               recompute: str = "none", micro_batch: int = 1) -> float:
    """Bytes one layer saves for the backward pass per token when it is not fully recomputed
    (selective recompute drops what the unfused attention core saves)."""
    h, q, k, f, head_dim = _dims(model)
    e = 2 if model.params_dtype == "bf16" else 4
    tsp = tp if sequence_parallel else 1
    local_core = model.transformer_impl == "local" and recompute != "selective"
    qkv_out = 4 * q if local_core else 2 * q + 2 * k  # unfused attention repeats K and V (GQA)
    elems = 4 * h / tsp + qkv_out / tp + 5 * f / tp
    if model.qk_layernorm:
        elems += (q + k) / tp
    elems += 4 * head_dim / micro_batch  # rotary cos and sin of Q and K, per position
    total = e * elems
    if local_core:
        scores = 4 + e if e < 4 else 4  # fp32 softmax, plus its bf16 copy for the bf16 matmul
        total += scores * (model.num_attention_heads / tp) * seq_length + seq_length / micro_batch
    return total


# -- planning ------------------------------------------------------------------------------------


def _seq_length(cfg: Any) -> int:
    if cfg.run.stage in RL_STAGES:
        return cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    return cfg.data.seq_length


def _config_recompute(cfg: Any) -> str:
    # A config field for recompute may be added to ModelConfig/ParallelConfig; read it if present.
    for section in (cfg.model, cfg.parallel):
        value = getattr(section, "recompute_granularity", None) or getattr(section, "recompute", None)
        if value:
            return str(value)
    return "none"


def layout_errors(cfg: Any, cluster: ClusterSpec) -> list[str]:
    """Why this config cannot be laid out on the cluster (empty when it can)."""
    m, par = cfg.model, cfg.parallel
    tp, pp, cp = par.tensor_parallel, par.pipeline_parallel, par.context_parallel
    vpp = par.virtual_pipeline
    errors: list[str] = []
    if min(tp, pp, cp) < 1:
        return ["parallel sizes must be >= 1"]
    heads = m.num_attention_heads
    groups = m.num_query_groups or heads
    world = cluster.world_size
    checks = [
        (heads % groups == 0, f"num_attention_heads {heads} is not divisible by num_query_groups {groups}"),
        (heads % tp == 0, f"num_attention_heads {heads} is not divisible by TP {tp}"),
        (groups % tp == 0, f"num_query_groups {groups} is not divisible by TP {tp}"),
        (m.ffn_hidden_size % tp == 0, f"ffn_hidden_size {m.ffn_hidden_size} is not divisible by TP {tp}"),
        (m.num_layers % (pp * (vpp or 1)) == 0,
         f"num_layers {m.num_layers} is not divisible by PP {pp}"
         + (f" × virtual pipeline {vpp}" if vpp else "")),
        (m.kv_channels is not None or m.hidden_size % heads == 0,
         f"hidden_size {m.hidden_size} is not divisible by num_attention_heads {heads} "
         "(set kv_channels)"),
        (world % (tp * pp * cp) == 0,
         f"world size {world} ({cluster.nodes} nodes × {cluster.gpus_per_node} GPUs) is not "
         f"divisible by TP×PP×CP = {tp}×{pp}×{cp} = {tp * pp * cp}"),
        (not par.sequence_parallel or tp > 1, "sequence_parallel needs tensor_parallel > 1"),
        (vpp is None or pp > 1, "virtual_pipeline needs pipeline_parallel > 1"),
        (m.params_dtype in ("fp32", "bf16"), f"params_dtype must be fp32 or bf16, got {m.params_dtype!r}"),
        (m.fp8 in (None, "e4m3", "hybrid"), f"fp8 must be e4m3, hybrid or null, got {m.fp8!r}"),
        (m.fp8 is None or m.transformer_impl != "local",
         "fp8 needs transformer_impl auto or transformer_engine, not local"),
    ]
    errors += [reason for ok, reason in checks if not ok]
    seq = _seq_length(cfg)
    if seq > m.max_position_embeddings:
        errors.append(f"sequences of {seq} tokens exceed max_position_embeddings "
                      f"{m.max_position_embeddings}")
    if cp > 1 and seq % (2 * cp):
        errors.append(f"sequence length {seq} is not divisible by 2×CP = {2 * cp}")
    if world % (tp * pp * cp):
        return errors  # no data-parallel size to check the batch against
    dp = world // (tp * pp * cp)
    b = cfg.batch
    if cfg.run.stage in RL_STAGES:
        if cfg.rollout.engine == "megatron" and pp > 1:
            errors.append("the in-process rollout engine needs pipeline_parallel=1; use "
                          "rollout.engine=vllm or sglang with PP")
        if b.prompts_per_step % dp:
            errors.append(f"batch.prompts_per_step {b.prompts_per_step} is not divisible by DP {dp}")
        else:
            per_rank = b.prompts_per_step // dp * cfg.grpo.group_size
            if per_rank % b.micro_batch_size:
                errors.append(f"{per_rank} sequences per DP rank are not divisible by "
                              f"micro_batch_size {b.micro_batch_size}")
    else:
        if b.sequences_per_step % dp:
            errors.append(f"batch.sequences_per_step {b.sequences_per_step} is not divisible by "
                          f"DP {dp}")
        elif b.sequences_per_step // dp % b.micro_batch_size:
            errors.append(f"{b.sequences_per_step // dp} sequences per DP rank are not divisible "
                          f"by micro_batch_size {b.micro_batch_size}")
    return errors


def make_plan(cfg: Any, cluster: ClusterSpec, config_name: str = "config") -> Plan:
    """Check `cfg` (a TrainConfig) on `cluster` and estimate memory per GPU and step time."""
    cluster.validate()
    m, par, b = cfg.model, cfg.parallel, cfg.batch
    tp, pp, cp, vpp = par.tensor_parallel, par.pipeline_parallel, par.context_parallel, \
        par.virtual_pipeline
    rl = cfg.run.stage in RL_STAGES
    recompute = cluster.recompute or _config_recompute(cfg)
    seq = _seq_length(cfg)
    errors = layout_errors(cfg, cluster)
    world = cluster.world_size
    dp = world // (tp * pp * cp) if world % max(tp * pp * cp, 1) == 0 else 0
    plan = Plan(config_name=config_name, cluster=cluster, tp=tp, pp=pp, cp=cp, vpp=vpp, dp=dp,
                stage_kind=cfg.run.stage, seq_length=seq, micro_batch=b.micro_batch_size,
                micro_batches=0, recompute=recompute, total_params=total_params(m, tp),
                padded_vocab=padded_vocab(m, tp), errors=errors)
    if dp == 0:
        return plan  # the world does not split into this layout: nothing to estimate

    sequences = b.prompts_per_step * cfg.grpo.group_size if rl else b.sequences_per_step
    plan.micro_batches = max(1, sequences // max(dp, 1) // b.micro_batch_size)
    _memory(plan, cfg)
    _step_time(plan, cfg, sequences)
    _judge_note(plan, cfg)
    if tp > cluster.gpus_per_node:
        plan.notes.append(f"TP {tp} spans nodes ({cluster.gpus_per_node} GPUs per node): "
                          "tensor-parallel traffic will cross the network")
    if m.fp8 is not None:
        plan.notes.append("fp8: memory is estimated as for bf16 (TE's FP8 copies are small); "
                          "pass --peak-tflops with the FP8 peak for the step time")
    return plan


def _memory(plan: Plan, cfg: Any) -> None:
    m, par, optim, cluster = cfg.model, cfg.parallel, cfg.optim, plan.cluster
    tp, pp, cp = plan.tp, plan.pp, plan.cp
    rl = plan.stage_kind in RL_STAGES
    e = 2 if m.params_dtype == "bf16" else 4
    grad_bytes = 4 if (optim.grad_reduce_in_fp32 or e == 4) else 2
    opt_bytes = 12 if e == 2 else 8
    opt_shards = plan.dp * cp if optim.distributed_optimizer else 1
    tokens = plan.micro_batch * plan.seq_length / cp
    full_layer = activation_bytes_per_token(m, tp, plan.seq_length, par.sequence_parallel,
                                            plan.recompute, plan.micro_batch)
    if plan.recompute == "full":
        tsp = tp if par.sequence_parallel else 1
        per_layer_kept = e * m.hidden_size / tsp
    else:
        per_layer_kept = full_layer
    layers_per_stage = m.num_layers // pp
    interleave = 1.0 + (pp - 1) / (pp * plan.vpp) if plan.vpp else 1.0
    vocab_shard = plan.padded_vocab / tp
    chunk = getattr(cfg.loss, "logprob_chunk_size", 1024)
    if not rl:
        logits_per_token, logits_fixed = (e + 4) * vocab_shard, 0.0
    elif getattr(cfg.loss, "logprob_mode", "logits") == "fused":
        logits_per_token, logits_fixed = 0.0, 12.0 * chunk * vocab_shard
    else:
        logits_per_token, logits_fixed = 2.0 * e * vocab_shard, 12.0 * chunk * vocab_shard

    # Rollout engine state on the training GPUs (colocated engines only).
    colocated = rl and cfg.rollout.engine in ("megatron", "vllm")
    h, _, k, _, _ = _dims(m)
    kv_tokens_bytes = 2 * m.num_layers * k * 2 / tp  # K and V, bf16, per token
    rollout_seq = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    plan.kv_bytes_per_sequence = kv_tokens_bytes * rollout_seq if colocated else 0.0
    engine_weights = 2.0 * total_params(m, tp) / tp if rl and cfg.rollout.engine == "vllm" else 0.0

    usable = (cluster.gpu_memory_gib - cluster.reserve_gib) * GIB
    for stage in range(pp):
        n = stage_params(m, tp, pp, stage)
        in_flight = min(pp - stage, plan.micro_batches) * interleave
        acts = in_flight * layers_per_stage * per_layer_kept * tokens
        if plan.recompute == "full":
            acts += full_layer * tokens  # the layer being recomputed
        last = stage == pp - 1
        plan.stages.append(StageMemory(
            stage=stage, params=n, weights=e * n, grads=grad_bytes * n,
            optimizer=opt_bytes * n / opt_shards, activations=acts,
            logits=(logits_per_token * tokens + logits_fixed) if last else 0.0,
            rollout_weights=engine_weights,
        ))

    if colocated:
        free = min(usable - s.states - s.rollout_weights for s in plan.stages)
        plan.rollout_capacity = max(0, int(free // plan.kv_bytes_per_sequence))
        if cluster.rollout_batch is not None:
            plan.rollout_batch = cluster.rollout_batch
        else:
            per_replica = cfg.batch.prompts_per_step * cfg.grpo.group_size // max(plan.dp, 1)
            plan.rollout_batch = max(1, min(plan.rollout_capacity, per_replica))
        for s in plan.stages:
            s.kv_cache = plan.rollout_batch * plan.kv_bytes_per_sequence

    for s in plan.stages:
        where = f"stage {s.stage}" if pp > 1 else "each GPU"
        if s.train_peak > usable:
            plan.errors.append(
                f"training needs {s.train_peak / GIB:.1f} GiB on {where} but "
                f"{usable / GIB:.1f} GiB are usable (states {s.states / GIB:.1f}, activations "
                f"{s.activations / GIB:.1f}, logits {s.logits / GIB:.1f}); "
                + _memory_hint(plan, cfg))
            break
    if colocated and plan.rollout_capacity == 0:
        plan.errors.append(
            f"no room for the KV cache of even one {rollout_seq}-token rollout "
            f"({plan.kv_bytes_per_sequence / GIB:.2f} GiB) beside the training state; "
            "raise TP or use external rollout servers (rollout.engine=sglang)")
    elif colocated and plan.rollout_batch is not None \
            and plan.rollout_batch > (plan.rollout_capacity or 0):
        plan.errors.append(f"--rollout-batch {plan.rollout_batch} needs "
                           f"{plan.rollout_batch * plan.kv_bytes_per_sequence / GIB:.1f} GiB of KV "
                           f"cache; {plan.rollout_capacity} sequences fit")
    elif colocated and (plan.rollout_capacity or 0) < 8:
        plan.notes.append(f"only {plan.rollout_capacity} full-length rollouts fit in the KV "
                          "cache at once; generation will be slow")


def _memory_hint(plan: Plan, cfg: Any) -> str:
    hints = []
    if not cfg.optim.distributed_optimizer and plan.dp > 1:
        hints.append("optim.distributed_optimizer=true")
    if plan.recompute != "full":
        hints.append("full activation recompute")
    hints.append("a larger TP or PP")
    return "try " + ", ".join(hints)


def _step_time(plan: Plan, cfg: Any, sequences: int) -> None:
    c, m = plan.cluster, cfg.model
    rl = plan.stage_kind in RL_STAGES
    if rl:
        prompt = c.mean_prompt_tokens or cfg.rollout.max_prompt_tokens
        response = c.mean_response_tokens or cfg.rollout.max_new_tokens
        plan.train_tokens = float(sequences * (prompt + response))
        plan.rollout_tokens = float(sequences * response)
        mean_len = prompt + response
    else:
        plan.train_tokens = float(sequences * plan.seq_length)
        mean_len = plan.seq_length
    fwd = forward_flops_per_token(m, mean_len)
    passes = 4.0 if plan.recompute == "full" else 3.0
    if c.train_tokens_per_gpu_s:
        plan.train_s = plan.train_tokens / (c.world_size * c.train_tokens_per_gpu_s)
    else:
        plan.train_s = plan.train_tokens * passes * fwd / (c.world_size * c.peak_tflops * 1e12
                                                           * c.train_mfu)
    if rl:
        gpus = c.rollout_gpus or c.world_size
        rate = c.rollout_tokens_per_gpu_s or c.rollout_mfu * c.peak_tflops * 1e12 / fwd
        # The longest response is decoded token after token: a floor no GPU count lowers.
        plan.rollout_s = max(plan.rollout_tokens / (gpus * rate),
                             cfg.rollout.max_new_tokens * c.decode_step_ms / 1e3)


def _judge_note(plan: Plan, cfg: Any) -> None:
    if plan.stage_kind == "rlpt" and cfg.judge.kind == "http":
        plan.notes.append("the judge runs on its own servers (slurm/judge_servers.sbatch); its "
                          "GPUs are not part of this plan")


# -- search and output ---------------------------------------------------------------------------


def search_layouts(cfg: Any, cluster: ClusterSpec, limit: int = 10) -> list[Plan]:
    """Feasible TP × PP layouts of `cfg` on `cluster`: fastest first, then the least model
    parallelism (less communication, which the time estimate does not model), then the lowest
    training peak."""
    found = []
    world = cluster.world_size
    for tp in [t for t in (1, 2, 4, 8, 16) if t <= cluster.gpus_per_node]:
        for pp in range(1, cfg.model.num_layers + 1):
            if world % (tp * pp) or cfg.model.num_layers % pp:
                continue
            trial = dataclasses.replace(cfg, parallel=dataclasses.replace(
                cfg.parallel, tensor_parallel=tp, pipeline_parallel=pp, virtual_pipeline=None,
                context_parallel=1, sequence_parallel=cfg.parallel.sequence_parallel and tp > 1))
            p = make_plan(trial, cluster)
            if p.feasible:
                found.append(p)
    found.sort(key=lambda p: (round(p.step_s, 1), p.tp * p.pp,
                              max(s.train_peak for s in p.stages)))
    return found[:limit]


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: Plan, run_steps: int | None = None) -> str:
    """The plan as a human-readable table."""
    c = plan.cluster
    lines = [
        f"plan: {plan.config_name} on {c.nodes} node(s) × {c.gpus_per_node} GPUs = "
        f"{c.world_size} GPUs of {c.gpu_memory_gib:g} GiB ({c.reserve_gib:g} GiB reserved)",
        f"layout: TP={plan.tp} PP={plan.pp}" + (f" (VPP={plan.vpp})" if plan.vpp else "")
        + f" CP={plan.cp} DP={plan.dp}   stage={plan.stage_kind}  sequence={plan.seq_length} "
        f"tokens  micro-batch={plan.micro_batch} × {plan.micro_batches} per DP rank  "
        f"recompute={plan.recompute}",
        f"model: {plan.total_params / 1e9:.3f} B parameters (vocab padded to {plan.padded_vocab})",
    ]
    if plan.stages:
        shown = [plan.stages[0]] if plan.pp == 1 else [plan.stages[0], plan.stages[-1]]
        names = ["per GPU"] if plan.pp == 1 else ["first stage", "last stage"]
        rows = [
            ("parameters (millions)", lambda s: f"{s.params / 1e6:8.1f}"),
            ("weights", lambda s: _gib(s.weights)),
            ("gradients", lambda s: _gib(s.grads)),
            ("optimizer states", lambda s: _gib(s.optimizer)),
            ("activations", lambda s: _gib(s.activations)),
            ("logits", lambda s: _gib(s.logits)),
            ("= training peak", lambda s: _gib(s.train_peak)),
        ]
        if plan.rollout_batch is not None:
            rows += [
                ("rollout engine weights", lambda s: _gib(s.rollout_weights)),
                (f"KV cache ({plan.rollout_batch} seqs)", lambda s: _gib(s.kv_cache)),
                ("= rollout peak", lambda s: _gib(s.rollout_peak)),
            ]
        width = 28
        lines.append("")
        lines.append("memory (GiB)".ljust(width) + "".join(n.rjust(14) for n in names))
        for label, fmt in rows:
            lines.append(label.ljust(width) + "".join(fmt(s).rjust(14) for s in shown))
        usable = c.gpu_memory_gib - c.reserve_gib
        lines.append("usable".ljust(width) + "".join(f"{usable:8.2f}".rjust(14) for _ in shown))
        if plan.rollout_capacity is not None:
            lines.append(f"KV cache room: {plan.rollout_capacity} sequences of "
                         f"{plan.kv_bytes_per_sequence / GIB:.3f} GiB")
    if plan.train_tokens:
        lines.append("")
        train = f"training {_duration(plan.train_s)} for {plan.train_tokens:,.0f} tokens"
        if plan.rollout_tokens:
            lines.append(f"step time: {_duration(plan.step_s)}  (rollout "
                         f"{_duration(plan.rollout_s)} for {plan.rollout_tokens:,.0f} generated "
                         f"tokens, {train})")
        else:
            lines.append(f"step time: {_duration(plan.step_s)}  ({train})")
        if run_steps:
            lines.append(f"run.steps={run_steps}: about {_duration(run_steps * plan.step_s)}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    lines.append("")
    if plan.feasible:
        lines.append("feasible")
    else:
        lines += [f"infeasible: {e}" for e in plan.errors]
    return "\n".join(lines)
