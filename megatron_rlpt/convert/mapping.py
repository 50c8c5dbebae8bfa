"""Weight mapping between Hugging Face tensors and Megatron's full (TP-independent) tensors.

One set of rules serves checkpoint import, checkpoint export and the rollout weight push. A rule
names a Hugging Face tensor, the Megatron tensor it lives in, and which part of it (`part`):

- `whole`: the same tensor.
- `q`, `k`, `v`: rows of `linear_qkv` (weight or bias). Megatron interleaves them per query group
  `[q_g0 (heads/groups × head_dim rows), k_g0, v_g0, q_g1, ...]`; Hugging Face keeps three
  separate projections, query heads of group g being heads g·(heads/groups) ... in order.
- `gate`, `up`: the two halves of `linear_fc1 = [gate; up]` (SwiGLU).
- `vocab`: the first `vocab_size` rows of an embedding or output layer padded to a TP multiple.

"Full" Megatron tensors are what a TP=1 model holds under its local-spec parameter names, which is
also the dist-checkpoint's layout. Under TP, `gather_full` turns a rank's shard into that form.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from megatron_rlpt.runtime.model import ModelConfig

PARTS = ("whole", "q", "k", "v", "gate", "up", "vocab")

# Transformer Engine fuses the pre-attention / pre-MLP norms into the next linear layer; the
# dist-checkpoint uses those names for both layer specs, and so does a TE-built model.
TE_ALIASES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Rule:
    """One Hugging Face tensor and where it lives in Megatron."""

    hf: str
    """Hugging Face name; `{i}` stands for the layer index."""
    megatron: str
    """Megatron parameter name (local layer spec, TP=1); `{i}` stands for the layer index."""
    part: str = "whole"
    """Which part of the Megatron tensor the Hugging Face tensor is (see the module docstring)."""


def _layer_rules(cfg: ModelConfig) -> list[Rule]:
    hf, mg = "model.layers.{i}.", "decoder.layers.{i}."
    rules = [Rule(hf + "input_layernorm.weight", mg + "input_layernorm.weight")]
    for p in ("q", "k", "v"):
        rules.append(Rule(hf + f"self_attn.{p}_proj.weight", mg + "self_attention.linear_qkv.weight", p))
    if cfg.add_qkv_bias:
        for p in ("q", "k", "v"):
            rules.append(Rule(hf + f"self_attn.{p}_proj.bias", mg + "self_attention.linear_qkv.bias", p))
    if cfg.qk_layernorm:
        rules += [
            Rule(hf + "self_attn.q_norm.weight", mg + "self_attention.q_layernorm.weight"),
            Rule(hf + "self_attn.k_norm.weight", mg + "self_attention.k_layernorm.weight"),
        ]
    rules += [
        Rule(hf + "self_attn.o_proj.weight", mg + "self_attention.linear_proj.weight"),
        Rule(hf + "post_attention_layernorm.weight", mg + "pre_mlp_layernorm.weight"),
        Rule(hf + "mlp.gate_proj.weight", mg + "mlp.linear_fc1.weight", "gate"),
        Rule(hf + "mlp.up_proj.weight", mg + "mlp.linear_fc1.weight", "up"),
        Rule(hf + "mlp.down_proj.weight", mg + "mlp.linear_fc2.weight"),
    ]
    return rules


def rules(cfg: ModelConfig) -> list[Rule]:
    """Every tensor of the model, in Hugging Face order, layer indices expanded."""
    out = [Rule("model.embed_tokens.weight", "embedding.word_embeddings.weight", "vocab")]
    templates = _layer_rules(cfg)
    for i in range(cfg.num_layers):
        out += [Rule(r.hf.format(i=i), r.megatron.format(i=i), r.part) for r in templates]
    out.append(Rule("model.norm.weight", "decoder.final_layernorm.weight"))
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", "output_layer.weight", "vocab"))
    return out


def rules_by_megatron(cfg: ModelConfig) -> dict[str, list[Rule]]:
    """The rules grouped by Megatron tensor, in order."""
    grouped: dict[str, list[Rule]] = {}
    for rule in rules(cfg):
        grouped.setdefault(rule.megatron, []).append(rule)
    return grouped


def canonical_name(name: str) -> str:
    """A Megatron parameter name under the local layer spec (maps Transformer Engine's names)."""
    for te, local in TE_ALIASES.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


def split_layer_name(name: str) -> tuple[int, str] | None:
    """`decoder.layers.3.mlp.linear_fc2.weight` -> (3, "mlp.linear_fc2.weight"); else None."""
    match = _LAYER_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


# ---- shapes ----------------------------------------------------------------------------


def head_dim(cfg: ModelConfig) -> int:
    return cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads


def query_groups(cfg: ModelConfig) -> int:
    return cfg.num_query_groups or cfg.num_attention_heads


def hf_shape(cfg: ModelConfig, rule: Rule) -> tuple[int, ...]:
    """The shape of the Hugging Face tensor named by `rule`."""
    h, hd, groups = cfg.hidden_size, head_dim(cfg), query_groups(cfg)
    bias = rule.hf.endswith(".bias")
    rows = {
        "q": cfg.num_attention_heads * hd, "k": groups * hd, "v": groups * hd,
        "gate": cfg.ffn_hidden_size, "up": cfg.ffn_hidden_size, "vocab": cfg.vocab_size,
    }
    if rule.part in rows:
        return (rows[rule.part],) if bias else (rows[rule.part], h)
    tail = rule.megatron.rsplit(".", 2)[-2]
    if tail in ("q_layernorm", "k_layernorm"):
        return (hd,)
    if tail.endswith("layernorm"):
        return (h,)
    if tail == "linear_proj":
        return (h, cfg.num_attention_heads * hd)
    if tail == "linear_fc2":
        return (h, cfg.ffn_hidden_size)
    raise ValueError(f"no shape rule for {rule}")


def megatron_shape(cfg: ModelConfig, name: str, padded_vocab: int) -> tuple[int, ...]:
    """The full shape of a Megatron tensor (the embedding and output layer padded)."""
    group = rules_by_megatron(cfg)[name]
    part = group[0].part
    shape = hf_shape(cfg, group[0])
    if part == "vocab":
        return (padded_vocab, *shape[1:])
    if part == "whole":
        return shape
    return (sum(hf_shape(cfg, r)[0] for r in group), *shape[1:])


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor name the model has, with its shape."""
    return {r.hf: hf_shape(cfg, r) for r in rules(cfg)}


# ---- moving parts between layouts ------------------------------------------------------


def _qkv_groups(cfg: ModelConfig, full: torch.Tensor) -> torch.Tensor:
    """`linear_qkv` rows viewed as [group, q heads per group + 2, head_dim, ...]."""
    groups = query_groups(cfg)
    per_group = cfg.num_attention_heads // groups
    return full.view(groups, per_group + 2, head_dim(cfg), *full.shape[1:])


def _part_view(cfg: ModelConfig, part: str, full: torch.Tensor) -> torch.Tensor:
    """A view of `full` holding `part`, shaped like the Hugging Face tensor up to a reshape."""
    if part == "whole":
        return full
    if part == "vocab":
        return full[: cfg.vocab_size]
    if part in ("gate", "up"):
        half = full.shape[0] // 2
        return full[:half] if part == "gate" else full[half:]
    grouped = _qkv_groups(cfg, full)
    per_group = grouped.shape[1] - 2
    return {"q": grouped[:, :per_group], "k": grouped[:, per_group], "v": grouped[:, per_group + 1]}[part]


def extract(cfg: ModelConfig, rule: Rule, full: torch.Tensor) -> torch.Tensor:
    """The Hugging Face tensor of `rule` cut from the full Megatron tensor (a new tensor)."""
    view = _part_view(cfg, rule.part, full)
    return view.reshape(hf_shape(cfg, rule)).clone()


def place(cfg: ModelConfig, rule: Rule, full: torch.Tensor, hf_tensor: torch.Tensor) -> None:
    """Copy a Hugging Face tensor into its part of the full Megatron tensor, in place."""
    expected = hf_shape(cfg, rule)
    if tuple(hf_tensor.shape) != expected:
        raise ValueError(f"{rule.hf}: shape {tuple(hf_tensor.shape)}, expected {expected}")
    view = _part_view(cfg, rule.part, full)
    with torch.no_grad():
        view.copy_(hf_tensor.reshape(view.shape))


def to_hf(cfg: ModelConfig, name: str, full: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The Hugging Face tensors held by the full Megatron tensor `name` (canonical, global)."""
    for rule in rules_by_megatron(cfg).get(name, []):
        yield rule.hf, extract(cfg, rule, full)


def gather_full(name: str, shards: list[torch.Tensor], partition_dim: int) -> torch.Tensor:
    """Join the TP shards of one parameter into the full tensor.

    `linear_fc1` is `[gate_r; up_r]` on each rank, so its halves are joined separately to give
    `[gate; up]`; `linear_qkv` shards hold whole query groups, so plain concatenation keeps the
    per-group interleaving.
    """
    if name.endswith("linear_fc1.weight") or name.endswith("linear_fc1.bias"):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=partition_dim)
