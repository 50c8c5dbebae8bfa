"""Per-token log-probabilities from vocab-parallel logits, chunked along the tokens.

The vocabulary stays split across tensor-parallel ranks (each holds `[tokens, V/TP]`) and the
tokens are processed `chunk_size` rows at a time, so at most one `[chunk, V/TP]` fp32 block (and
a few of its temporaries) exists at once, forward and backward:

- forward: each chunk is copied to fp32 and run through Megatron's vocab-parallel cross-entropy
  steps (`VocabParallelCrossEntropy.calculate_logits_max` / `calculate_predicted_logits`, which
  overwrite their input, hence the copy) with the max, target logit and sum-exp all-reduced over
  the TP group. Only per-token scalars (log-sum-exp, and E_p[x] for the entropy) are saved.
- backward: each chunk's softmax is recomputed from the saved global log-sum-exp, with no
  communication, and written into the gradient of the logits.

`fused_output_logprobs` goes further: it takes the final hidden states and the (vocab-parallel)
output weight and computes each chunk's logits inside the loop, so not even the model-dtype
`[tokens, V/TP]` logits or their gradient exist. `output_layer_bypass` makes Megatron's GPTModel
return its final hidden states for that path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

LOCAL = "local"
"""Pass as `tp_group` to compute on this rank alone (the logits hold the whole vocabulary)."""


def resolve_tp_group(tp_group: Any = None) -> tuple[Any, int, int]:
    """(group, rank, world size) of the tensor-parallel group.

    `None`: Megatron's TP group when model parallelism is initialised, else this rank alone;
    `LOCAL`: this rank alone; anything else: that process group.
    """
    if tp_group is None:
        try:
            from megatron.core import parallel_state as ps

            if ps.model_parallel_is_initialized():
                tp_group = ps.get_tensor_model_parallel_group()
        except ImportError:  # megatron-core absent: plain torch use
            pass
    if tp_group is None or tp_group == LOCAL:
        return None, 0, 1
    return tp_group, dist.get_rank(tp_group), dist.get_world_size(tp_group)


def _all_reduce(t: torch.Tensor, group: Any, op: Any = dist.ReduceOp.SUM) -> None:
    if group is not None:
        dist.all_reduce(t, op=op, group=group)


def _chunks(rows: int, index: torch.Tensor | None, chunk: int) -> Iterator[tuple[int, int]]:
    n = rows if index is None else index.numel()
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


def _rows(x: torch.Tensor, index: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
    return x[start:end] if index is None else x.index_select(0, index[start:end])


def _prepare_block(x: torch.Tensor, temperature: float, block_start: int,
                   vocab_size: int | None) -> None:
    """Temper a block of fp32 logits in place and drop padded vocabulary ids (>= vocab_size)."""
    if temperature != 1.0:
        x.div_(temperature)
    if vocab_size is not None and block_start + x.shape[-1] > vocab_size:
        x[:, max(0, vocab_size - block_start):] = float("-inf")


def _forward_chunk(x: torch.Tensor, target: torch.Tensor, group: Any, vocab_start: int,
                   compute_entropy: bool) -> tuple[torch.Tensor, ...]:
    """Log-probs, log-sum-exp and (optionally) entropy and E_p[x] for one fp32 chunk.

    `x` is consumed: Megatron's helpers overwrite it with exp(x - max).
    """
    from megatron.core.tensor_parallel.cross_entropy import VocabParallelCrossEntropy as VPCE

    x, x_max = VPCE.calculate_logits_max(x)
    _all_reduce(x_max, group, dist.ReduceOp.MAX)
    vocab_end = vocab_start + x.shape[-1]
    _, _, predicted, sum_exp, exp_x = VPCE.calculate_predicted_logits(
        x, target, x_max, vocab_start, vocab_end)
    _all_reduce(predicted, group)  # x[target] - max, from the rank that owns the target
    _all_reduce(sum_exp, group)
    log_z = torch.log(sum_exp)
    logp = predicted - log_z
    lse = log_z + x_max
    if not compute_entropy:
        return logp, lse
    # sum_v exp(z_v) * z_v with z = x - max; xlogy keeps 0 * log 0 = 0 where exp underflowed.
    weighted = torch.special.xlogy(exp_x, exp_x).sum(dim=-1)
    _all_reduce(weighted, group)
    mean_z = weighted / sum_exp
    entropy = log_z - mean_z
    return logp, lse, entropy, mean_z + x_max


def _grad_chunk(x: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, g_logp: torch.Tensor,
                mean_x: torch.Tensor | None, g_ent: torch.Tensor | None, vocab_start: int,
                temperature: float) -> torch.Tensor:
    """d(loss)/d(logits) for one block; `x` holds its fp32 (tempered) logits and is consumed.

    d logp_t / d x_v = 1[v = t] − p_v;  d H / d x_v = p_v (E_p[x] − x_v).
    Works on any `[rows, vocab block]` slice: `vocab_start` is the block's first global id.
    """
    if g_ent is None:
        grad = x.sub_(lse.unsqueeze(-1)).exp_().mul_(-g_logp.unsqueeze(-1))  # -g·p, in place
    else:
        p = x.sub(lse.unsqueeze(-1)).exp_()
        x.nan_to_num_(neginf=0.0)  # padded ids: p = 0 there, keep 0 * inf out of the product
        # grad = p * (g_H * (E[x] - x) - g_logp), built in x's storage.
        x.neg_().add_(mean_x.unsqueeze(-1)).mul_(g_ent.unsqueeze(-1))
        grad = x.sub_(g_logp.unsqueeze(-1)).mul_(p)
        del p
    # + g_logp at the target column, where the target falls in this block (no data-dependent
    # shapes: out-of-block rows add 0 at column 0).
    local = target - vocab_start
    owned = (local >= 0) & (local < grad.shape[-1])
    column = torch.where(owned, local, torch.zeros_like(local)).unsqueeze(-1)
    grad.scatter_add_(-1, column, torch.where(owned, g_logp, torch.zeros_like(g_logp)).unsqueeze(-1))
    if temperature != 1.0:
        grad.div_(temperature)
    return grad


def _grads_in(g_logp: torch.Tensor | None, g_ent: torch.Tensor | None, like: torch.Tensor,
              compute_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    g_logp = torch.zeros_like(like) if g_logp is None else g_logp.float()
    g_ent = g_ent.float() if (compute_entropy and g_ent is not None) else None
    return g_logp, g_ent


class _LogitsLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, index, chunk, temperature, group, vocab_start,
                compute_entropy, inplace_backward, vocab_size):
        rows = logits.shape[0]
        n = rows if index is None else index.numel()
        logp = torch.zeros(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        entropy = torch.zeros(n if compute_entropy else 0, dtype=torch.float32,
                              device=logits.device)
        mean_x = torch.empty_like(entropy)
        buf = torch.empty(min(chunk, max(n, 1)), logits.shape[1], dtype=torch.float32,
                          device=logits.device)
        tgt = target if index is None else target.index_select(0, index)
        for s, e in _chunks(rows, index, chunk):
            x = buf[: e - s]
            x.copy_(_rows(logits, index, s, e))
            _prepare_block(x, temperature, vocab_start, vocab_size)
            out = _forward_chunk(x, tgt[s:e], group, vocab_start, compute_entropy)
            logp[s:e], lse[s:e] = out[0], out[1]
            if compute_entropy:
                entropy[s:e], mean_x[s:e] = out[2], out[3]
        del buf
        ctx.save_for_backward(logits, tgt, index, lse, mean_x)
        ctx.config = (chunk, temperature, vocab_start, compute_entropy, inplace_backward,
                      vocab_size)
        if not compute_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, tgt, index, lse, mean_x = ctx.saved_tensors
        chunk, temperature, vocab_start, compute_entropy, inplace, vocab_size = ctx.config
        g_logp, g_ent = _grads_in(g_logp, g_ent, lse, compute_entropy)
        if inplace:
            # The logits are dead once their chunk's gradient is known: write it over them.
            grad = logits
            if index is not None:
                keep = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
                keep[index] = True
                grad.masked_fill_(~keep.unsqueeze(-1), 0)
        else:
            grad = torch.zeros_like(logits)
        in_place_rows = inplace and index is None and logits.dtype == torch.float32
        for s, e in _chunks(logits.shape[0], index, chunk):
            x = _rows(logits, index, s, e).float()
            if index is None and logits.dtype == torch.float32 and not in_place_rows:
                x = x.clone()  # .float() of an fp32 slice is a view of the logits
            _prepare_block(x, temperature, vocab_start, vocab_size)
            gx = _grad_chunk(x, tgt[s:e], lse[s:e], g_logp[s:e],
                             mean_x[s:e] if g_ent is not None else None,
                             g_ent[s:e] if g_ent is not None else None, vocab_start, temperature)
            if in_place_rows:
                pass  # computed in the logits' own rows
            elif index is None:
                grad[s:e] = gx
            else:
                grad.index_copy_(0, index[s:e], gx.to(grad.dtype))
            del x, gx
        return grad, None, None, None, None, None, None, None, None, None


class _FusedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, index, chunk, temperature, group, vocab_start,
                compute_entropy, vocab_size):
        rows = hidden.shape[0]
        n = rows if index is None else index.numel()
        logp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.zeros(n if compute_entropy else 0, dtype=torch.float32,
                              device=hidden.device)
        mean_x = torch.empty_like(entropy)
        tgt = target if index is None else target.index_select(0, index)
        for s, e in _chunks(rows, index, chunk):
            # The output layer's matmul in the model's dtype, as Megatron computes it, then fp32.
            x = torch.matmul(_rows(hidden, index, s, e), weight.t()).float()
            _prepare_block(x, temperature, vocab_start, vocab_size)
            out = _forward_chunk(x, tgt[s:e], group, vocab_start, compute_entropy)
            del x
            logp[s:e], lse[s:e] = out[0], out[1]
            if compute_entropy:
                entropy[s:e], mean_x[s:e] = out[2], out[3]
        ctx.save_for_backward(hidden, weight, tgt, index, lse, mean_x)
        ctx.config = (chunk, temperature, vocab_start, compute_entropy, group, vocab_size)
        if not compute_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, tgt, index, lse, mean_x = ctx.saved_tensors
        chunk, temperature, vocab_start, compute_entropy, group, vocab_size = ctx.config
        g_logp, g_ent = _grads_in(g_logp, g_ent, lse, compute_entropy)
        h = hidden if index is None else hidden.index_select(0, index)
        n, vocab = h.shape[0], weight.shape[0]
        # Tiles of the vocabulary over all tokens (the same element budget as a token chunk):
        # each tile's weight gradient is one matmul, written once, never accumulated.
        block = max(1, min(vocab, chunk * vocab // max(n, 1)))
        grad_weight = torch.empty_like(weight)
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        for v0 in range(0, vocab, block):
            w = weight[v0 : v0 + block]
            x = torch.matmul(h, w.t()).float()
            _prepare_block(x, temperature, vocab_start + v0, vocab_size)
            gx = _grad_chunk(x, tgt, lse, g_logp, mean_x if g_ent is not None else None, g_ent,
                             vocab_start + v0, temperature).to(weight.dtype)
            torch.matmul(gx.t(), h, out=grad_weight[v0 : v0 + block])
            # In the model's dtype, as the output layer's backward would; summed in fp32.
            grad_h += torch.matmul(gx, w)
            del x, gx
        # The hidden states feed every TP rank's vocabulary shard: sum their gradients, as
        # Megatron's column-parallel output layer does.
        _all_reduce(grad_h, group)
        if index is None:
            grad_hidden = grad_h.to(hidden.dtype).view_as(hidden)
        else:
            grad_hidden = torch.zeros_like(hidden)
            grad_hidden.index_copy_(0, index, grad_h.to(hidden.dtype))
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


def _prepare(target: torch.Tensor, mask: torch.Tensor | None, rows: int):
    if target.numel() != rows:
        raise ValueError(f"target has {target.numel()} entries for {rows} rows of logits")
    flat_target = target.reshape(-1).long()
    index = None
    if mask is not None:
        if mask.numel() != rows:
            raise ValueError("mask must have one entry per token")
        index = torch.nonzero(mask.reshape(-1) != 0, as_tuple=True)[0]
    return flat_target, index


def _scatter(values: torch.Tensor, index: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    if index is None:
        return values.view(shape)
    full = values.new_zeros(int(torch.Size(shape).numel()))
    return full.index_put((index,), values).view(shape)


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    tp_group: Any = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    compute_entropy: bool = False,
    inplace_backward: bool = False,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of `target` under vocab-parallel `logits`, and optionally the entropy.

    `logits`: `[..., V/TP]` (this rank's vocabulary shard, any float dtype); `target`: `[...]`
    global token ids. With a `mask`, only positions where it is non-zero are computed (others are
    0). `temperature` divides the logits first, matching a rollout sampled at that temperature.
    `vocab_size`: the tokenizer's true vocabulary; Megatron pads the output layer to a multiple
    of 128·TP, and ids at or past `vocab_size` are left out of the softmax (as an inference
    engine serving the exported model, which has no padding, leaves them out).
    Returns fp32 `(logp, entropy)` shaped like `target` (entropy None unless asked); both are
    differentiable. The forward never modifies the logits; with `inplace_backward` the backward
    writes their gradient over them (no second `[tokens, V/TP]` tensor, as Megatron's own
    cross-entropy does), so the caller must not read the logits after backward.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    group, rank, _ = resolve_tp_group(tp_group)
    vocab_local = logits.shape[-1]
    logits2d = logits.reshape(-1, vocab_local)
    flat_target, index = _prepare(target, mask, logits2d.shape[0])
    logp, entropy = _LogitsLogProbs.apply(logits2d, flat_target, index, chunk_size,
                                          float(temperature), group, rank * vocab_local,
                                          compute_entropy, inplace_backward, vocab_size)
    return (_scatter(logp, index, target.shape),
            _scatter(entropy, index, target.shape) if compute_entropy else None)


def fused_output_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    tp_group: Any = None,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    compute_entropy: bool = False,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `vocab_parallel_logprobs`, from the final hidden states and the output weight.

    `hidden`: `[..., H]`, the same on every TP rank (the output layer's input); `weight`:
    `[V/TP, H]`, this rank's shard of the output (or tied embedding) weight. The logits exist one
    chunk at a time; the gradient of `hidden` is summed over the TP group.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    group, rank, _ = resolve_tp_group(tp_group)
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    flat_target, index = _prepare(target, mask, hidden2d.shape[0])
    logp, entropy = _FusedLogProbs.apply(hidden2d, weight, flat_target, index, chunk_size,
                                         float(temperature), group, rank * weight.shape[0],
                                         compute_entropy, vocab_size)
    return (_scatter(logp, index, target.shape),
            _scatter(entropy, index, target.shape) if compute_entropy else None)


# -- Megatron GPTModel: hidden states instead of logits -----------------------------------------


def _gpt_model(model: Any) -> Any:
    from megatron.core.utils import get_attr_wrapped_model

    return get_attr_wrapped_model(model, "output_layer", return_model_obj=True)


def output_weight(model: Any) -> torch.Tensor:
    """The weight this rank's output layer multiplies by (its shard of the vocabulary)."""
    gpt = _gpt_model(model)
    if getattr(gpt, "share_embeddings_and_output_weights", False):
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight


@contextlib.contextmanager
def output_layer_bypass(model: Any) -> Iterator[torch.Tensor]:
    """Within the block, `model(...)` (labels None) returns `[b, s, H]` final hidden states
    instead of logits; yields the output weight to pass to `fused_output_logprobs`.

    Wrap the whole `forward_backward_func` call. Sequence parallelism is not supported here
    (the output layer's sequence gather would have to move into the loss).
    """
    gpt = _gpt_model(model)
    layer = gpt.output_layer
    if getattr(layer, "sequence_parallel", False):
        raise NotImplementedError("fused log-probs with sequence_parallel: use logits mode")

    def identity(input_: torch.Tensor, weight: Any = None, runtime_gather_output: Any = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
        return input_, None

    layer.forward = identity
    try:
        yield output_weight(gpt)
    finally:
        del layer.forward
