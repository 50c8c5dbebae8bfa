"""Dataclass configs from YAML and `key=value` overrides, and their field documentation.

Configs are plain dataclasses whose fields each carry a docstring (a string literal right under
the field). `load_config` builds one from a YAML file plus dotted overrides, rejecting unknown
keys and values of the wrong type with a one-line reason; `field_docs` reads the docstrings back
for generated documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from megatron_rlpt.errors import UsageError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses from mappings."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UsageError as err:
                errors.append(str(err))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UsageError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(tp, type) and tp is not float and tp is not bool and tp is not str \
            and issubclass(tp, str):  # str-valued enums
        try:
            return tp(value)
        except ValueError as err:
            raise UsageError(f"{where}: {value!r} is not one of {[e.value for e in tp]}") from err
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise UsageError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are UsageErrors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UsageError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known under {where or 'the top level'}: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, str) and type(obj) is not str:  # str enums
        return str(obj.value)
    return obj


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-5", "run.steps=3"]` as a nested mapping (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r} is not of the form key=value")
        node = tree
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override {item!r} conflicts with another override")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def given_keys(path: str | Path | None = None,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping the user wrote (YAML file merged with overrides), before defaults: tells a
    field the user set from one left at its default."""
    data = read_yaml_mapping(path) if path is not None else {}
    return _merge(data, parse_overrides(overrides or []))


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file and `key=value` overrides (overrides win)."""
    return from_dict(cls, given_keys(path, overrides))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; unreadable or malformed files are one-line UsageErrors."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise UsageError(f"cannot read config {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a mapping at the top level")
    return data


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls`, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
