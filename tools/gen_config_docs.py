"""Write docs/config.md: every field of `rlpt train`'s config tree with its type, default and doc."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from megatron_rlpt.config import TrainConfig
from megatron_rlpt.utils.config import field_docs, to_dict
from megatron_rlpt.utils.io import atomic_write_text

OUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, doc) for every leaf field under `cls`."""
    docs, hints, out = field_docs(cls), typing.get_type_hints(cls), []
    defaults = cls()
    for f in dataclasses.fields(cls):
        name, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += rows(tp, name + ".")
            continue
        type_name = getattr(tp, "__name__", str(tp)).replace("typing.", "")
        default = to_dict(getattr(defaults, f.name))
        out.append((name, type_name, f"`{default!r}`", docs.get(f.name, "")))
    return out


def render() -> str:
    lines = [
        "# `rlpt train` configuration",
        "",
        "Generated from the docstrings of `megatron_rlpt.config.TrainConfig` by",
        "`python tools/gen_config_docs.py`. A YAML file nests these names (`optim: {lr: 1e-6}`);",
        "`key=value` arguments override them (`optim.lr=1e-6`).",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, type_name, default, doc in rows(TrainConfig):
        cells = [f"`{name}`", type_name, default, doc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    atomic_write_text(OUT, render())
    print(f"wrote {OUT}")
