"""Peak memory of log-probs + policy loss + backward: chunked vs naive full-vocabulary logits.

    python benchmarks/logprob_memory.py [--tokens 8192] [--vocab 151936] [--hidden 2560]

Two settings, each chunked against the naive way (`log_softmax` over the whole `[tokens, vocab]`
logits in fp32, then gather):

- `logits`: the input is the model's output logits (`--dtype`, bf16 by default, as Megatron's
  output layer emits them); measured up to the gradient w.r.t. those logits. The chunked path is
  `vocab_parallel_logprobs(..., inplace_backward=True)`, as the trainer's loss uses it.
- `fused`: the input is the final hidden states and the output weight (`--hidden`); measured up
  to their gradients. The chunked path is `fused_output_logprobs`.

Peak memory is the peak of tensor storage allocated inside the measured block (inputs excluded),
counted by `megatron_rlpt.algo.memory.LiveBytes`. At the full size it runs under
`FakeTensorMode`, which allocates nothing: the naive path would need about 15 GB. The numerical
check runs for real on `--diff-tokens` tokens (full vocabulary): max |difference| of log-probs
and gradients, chunked vs naive, both fp32, plus the real-tensor peaks at that size.

Prints one line per setting with the ratio chunked/naive (target ≤ 0.10). `--sweep-chunks`
repeats the full-size count at other chunk sizes (FakeTensorMode only, so it costs seconds).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from megatron_rlpt.algo.logprobs import LOCAL, fused_output_logprobs, vocab_parallel_logprobs
from megatron_rlpt.algo.loss import LossConfig, policy_loss
from megatron_rlpt.algo.memory import LiveBytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _batch(tokens: int, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One sequence of `tokens` response tokens, as the loss sees it."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen) if gen is not None else torch.randn(*shape)

    return {
        "loss_mask": torch.ones(1, tokens),
        "advantages": randn(1, tokens),
        "global_num_tokens": torch.tensor(float(tokens)),
    }


def _loss(logp: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    # On-policy, as in the first step: the rollout log-probs are the current ones (ratio 1), so
    # no token is clipped and every position carries its advantage into the gradient.
    batch = dict(batch, old_logprobs=logp.detach().view(1, -1))
    return policy_loss(logp.view(1, -1), batch, LossConfig())[0]


def naive_logits(logits, target, batch):
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return torch.autograd.grad(_loss(logp, batch), [logits]), logp


def chunked_logits(logits, target, batch, chunk):
    logp, _ = vocab_parallel_logprobs(logits, target, tp_group=LOCAL, chunk_size=chunk,
                                      inplace_backward=True)
    return torch.autograd.grad(_loss(logp, batch), [logits]), logp


def naive_fused(hidden, weight, target, batch):
    logits = torch.matmul(hidden, weight.t())
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return torch.autograd.grad(_loss(logp, batch), [hidden, weight]), logp


def chunked_fused(hidden, weight, target, batch, chunk):
    logp, _ = fused_output_logprobs(hidden, weight, target, tp_group=LOCAL, chunk_size=chunk)
    return torch.autograd.grad(_loss(logp, batch), [hidden, weight]), logp


def peak_bytes(fn: Callable[[], object]) -> int:
    with LiveBytes() as live:
        result = fn()
    del result
    return live.peak


def measure_fake(args: argparse.Namespace, chunk: int | None = None) -> dict[str, dict[str, float]]:
    """Peaks at the full size, under FakeTensorMode (no memory is allocated)."""
    dtype = DTYPES[args.dtype]
    n, v, h, c = args.tokens, args.vocab, args.hidden, chunk or args.chunk
    out: dict[str, dict[str, float]] = {}
    with FakeTensorMode():
        target = torch.randint(0, v, (n,))
        batch = _batch(n, None)
        logits = torch.empty(n, v, dtype=dtype).requires_grad_()
        out["logits"] = {
            "naive": peak_bytes(lambda: naive_logits(logits, target, batch)),
            "chunked": peak_bytes(lambda: chunked_logits(logits, target, batch, c)),
        }
        hidden = torch.empty(n, h, dtype=dtype).requires_grad_()
        weight = torch.empty(v, h, dtype=dtype).requires_grad_()
        out["fused"] = {
            "naive": peak_bytes(lambda: naive_fused(hidden, weight, target, batch)),
            "chunked": peak_bytes(lambda: chunked_fused(hidden, weight, target, batch, c)),
        }
    return out


def _fp64_reference(fn, inputs, target, batch):
    """Log-probs and gradients of the same loss, computed in float64 throughout."""
    xs = [t.detach().double().requires_grad_() for t in inputs]
    logits = fn(*xs)
    logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return torch.autograd.grad(_loss(logp, batch), xs), logp.detach()


def _errors(chunked, naive, reference) -> dict[str, float]:
    """Max |difference| of log-probs and of gradients, each path against fp64 and each other."""
    (g_c, lp_c), (g_n, lp_n), (g_r, lp_r) = chunked, naive, reference

    def worst(a, b):
        return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))

    return {
        "max_diff_logprob": worst([lp_c], [lp_n]),
        "max_err_logprob_chunked": worst([lp_c], [lp_r]),
        "max_err_logprob_naive": worst([lp_n], [lp_r]),
        "max_diff_grad": worst(g_c, g_n),
        "max_err_grad_chunked": worst(g_c, g_r),
        "max_err_grad_naive": worst(g_n, g_r),
        "max_abs_grad": max(g.abs().max().item() for g in g_r),
    }


def measure_real(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Numerical agreement on `--diff-tokens` tokens (full vocabulary, fp32 inputs) against a
    float64 reference, and the peaks of the same computation on real tensors and under
    FakeTensorMode (which must agree)."""
    n, v, h, c = args.diff_tokens, args.vocab, args.diff_hidden, args.chunk
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, v, (n,), generator=gen)
    batch = _batch(n, gen)
    out: dict[str, dict[str, float]] = {}

    base = torch.randn(n, v, generator=gen) * 4.0
    logits = base.clone().requires_grad_()
    naive_peak = peak_bytes(partial(naive_logits, logits, target, batch))
    naive = naive_logits(logits, target, batch)
    work = base.clone().requires_grad_()  # the in-place backward overwrites its input
    chunk_peak = peak_bytes(partial(chunked_logits, work, target, batch, c))
    work = base.clone().requires_grad_()
    chunked = chunked_logits(work, target, batch, c)
    reference = _fp64_reference(lambda x: x, [base], target, batch)
    with FakeTensorMode():
        fake_logits = torch.empty(n, v).requires_grad_()
        fake_t, fake_b = torch.randint(0, v, (n,)), _batch(n, None)
        fake_naive = peak_bytes(partial(naive_logits, fake_logits, fake_t, fake_b))
        fake_chunk = peak_bytes(partial(chunked_logits, fake_logits, fake_t, fake_b, c))
    out["logits"] = {"naive": naive_peak, "chunked": chunk_peak, "fake_naive": fake_naive,
                     "fake_chunked": fake_chunk, **_errors(chunked, naive, reference)}
    del base, logits, work, naive, chunked, reference

    hidden = torch.randn(n, h, generator=gen).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).requires_grad_()
    naive_peak = peak_bytes(partial(naive_fused, hidden, weight, target, batch))
    chunk_peak = peak_bytes(partial(chunked_fused, hidden, weight, target, batch, c))
    naive = naive_fused(hidden, weight, target, batch)
    chunked = chunked_fused(hidden, weight, target, batch, c)
    reference = _fp64_reference(lambda x, w: x @ w.t(), [hidden, weight], target, batch)
    out["fused"] = {"naive": naive_peak, "chunked": chunk_peak,
                    **_errors(chunked, naive, reference)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=2560, help="hidden size (fused setting)")
    parser.add_argument("--chunk", type=int, default=512,
                        help="tokens per chunk (LossConfig.logprob_chunk_size's default)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="dtype of the logits / hidden states / weight at full size")
    parser.add_argument("--diff-tokens", type=int, default=512,
                        help="tokens of the real fp32 run that checks the numbers")
    parser.add_argument("--diff-hidden", type=int, default=256)
    parser.add_argument("--sweep-chunks", default="256,1024",
                        help="other chunk sizes to count at full size (comma-separated; '' none)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    start = time.monotonic()
    fake = measure_fake(args)
    sweep = {int(c): measure_fake(args, int(c)) for c in args.sweep_chunks.split(",") if c.strip()}
    real = measure_real(args) if args.diff_tokens > 0 else {}
    gib = 1024**3
    print(f"vocab {args.vocab}, {args.tokens} tokens, chunk {args.chunk}, {args.dtype}, "
          f"hidden {args.hidden} (fused); peaks counted under FakeTensorMode")
    for name, row in fake.items():
        ratio = row["chunked"] / row["naive"]
        print(f"{name:7s} naive {row['naive'] / gib:7.3f} GiB  chunked {row['chunked'] / gib:6.3f} "
              f"GiB  ratio {ratio:.3f}  {'meets' if ratio <= 0.10 else 'misses'} the 0.10 target")
    for name, row in real.items():
        print(f"{name:7s} real run, fp32 inputs, {args.diff_tokens} tokens, max |error| vs fp64: "
              f"logp chunked {row['max_err_logprob_chunked']:.1e} / naive "
              f"{row['max_err_logprob_naive']:.1e}; grad chunked {row['max_err_grad_chunked']:.1e}"
              f" / naive {row['max_err_grad_naive']:.1e} (max |grad| {row['max_abs_grad']:.2f}); "
              f"chunked vs naive: logp {row['max_diff_logprob']:.1e}, grad "
              f"{row['max_diff_grad']:.1e}")
        if "fake_naive" in row:
            print(f"{'':7s} tracker check, real vs fake peaks: naive {row['naive']} / "
                  f"{row['fake_naive']} B, chunked {row['chunked']} / {row['fake_chunked']} B")
    for chunk, rows in sweep.items():
        print(f"chunk {chunk}: " + ", ".join(
            f"{name} ratio {row['chunked'] / row['naive']:.3f}" for name, row in rows.items()))
    print(f"took {time.monotonic() - start:.0f} s")
    if args.json:
        from megatron_rlpt.utils.io import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), "full_size": fake,
                                      "full_size_by_chunk": {str(c): r for c, r in sweep.items()},
                                      "real_check": real})


if __name__ == "__main__":
    main()
