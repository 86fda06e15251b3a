"""Frozen dataclass configs loaded from YAML, with `key=value` overrides.

Every experiment config is a frozen dataclass (possibly nested). `load_config(cls,
path, overrides)` reads the YAML, applies dotted `key=value` overrides (values parsed
as YAML scalars), rejects unknown keys with the list of valid ones, and builds the
dataclass, whose `__post_init__` checks values. `load_yaml` reads both: YAML as PyYAML
reads it, except that `1e-3` and `1.5e1` are the numbers a person means (YAML 1.2), not strings.
`describe_config` writes a config back as that YAML, each key with its meaning (`--cfg`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lightman.models.provenance import to_dict

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2's exponent floats: without a dot or a sign (`1e-3`, `1.5e1`)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings _Loader would read as numbers (`"1e-3"`)."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """One YAML document (a config file, a space file or an override's value)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def _is_variant_type(tp: Any) -> bool:
    """A config base whose mapping picks one of several classes (LearnerConfig: by name)."""
    return _is_dataclass_type(tp) and hasattr(tp, "config_variant")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys fail with the valid list.

    A class with a `config_variant(data, prefix)` classmethod (LearnerConfig) first says
    which of its subclasses `data` builds and with which keys (it refuses a key that
    subclass does not have, naming who has it)."""
    if _is_variant_type(cls):
        try:
            cls, data = cls.config_variant(data, prefix)  # type: ignore[attr-defined]
        except ValueError as e:
            raise ConfigError(str(e)) from e
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: "
            f"{[prefix + k for k in valid_keys(cls)]}"
        )
    for f in dataclasses.fields(cls):  # a partial nested mapping updates the field's default
        value = data.get(f.name)
        # (a variant type starts from its chosen class's defaults: another class's default
        # would bring keys the chosen one does not have)
        tp = types_[f.name]
        if isinstance(value, dict) and _is_dataclass_type(tp) and not _is_variant_type(tp):
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            if dataclasses.is_dataclass(default):
                data = {**data, f.name: _merge(to_dict(default), value)}
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def _all_field_types(cls: type) -> dict[str, Any]:
    """The fields of `cls`, or of every variant of a variant type (first one wins)."""
    if _is_variant_type(cls):
        out: dict[str, Any] = {}
        for variant in cls.config_variants():  # type: ignore[attr-defined]
            for name, tp in _field_types(variant).items():
                out.setdefault(name, tp)
        return out
    return _field_types(cls)


def valid_keys(cls: type) -> list[str]:
    """All dotted keys of a (nested) config dataclass (of a variant type: every variant's)."""
    keys = []
    for name, tp in _all_field_types(cls).items():
        if _is_dataclass_type(tp):
            keys += [f"{name}.{k}" for k in valid_keys(tp)]
        else:
            keys.append(name)
    return keys


def key_type(cls: type, key: str) -> Any:
    """The annotated type of dotted key `key` of config `cls` (known to be valid)."""
    tp: Any = cls
    for part in key.split("."):
        tp = _all_field_types(tp)[part]
    return tp


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """`["a.b=1", "c=x"]` → `{"a": {"b": 1}, "c": "x"}` (values parsed as YAML scalars)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        value = load_yaml(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> T:
    """Load `cls` from an optional YAML file plus `key=value` overrides."""
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = load_yaml(text)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


# Comments that are instructions to tools, not meanings.
_TOOL_COMMENT = re.compile(r"^(noqa|type:|pragma|fmt:|ruff:)")


@functools.cache
def field_meanings(cls: type) -> dict[str, str]:
    """Each field of dataclass `cls` and its meaning, as the class's source writes it: the
    comment lines right above the field, the comment at the end of its line, and the string
    right below it (an attribute docstring), joined in that order.

    Read from the source file (ast + tokenize), never from `__doc__`: `python -OO` drops
    docstrings but not the file, so `--cfg` prints the same meanings there. A base class's
    meanings hold for the fields a subclass inherits; a field without words (or a class
    whose source is not installed) has "".
    """
    meanings: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's words win, where it has any
        if dataclasses.is_dataclass(klass):
            meanings.update({k: v for k, v in _own_meanings(klass).items() if v})
    return {f.name: meanings.get(f.name, "") for f in dataclasses.fields(cls)}


@functools.cache
def class_meaning(cls: type) -> str:
    """The first paragraph of a config class's docstring, read from its source (as
    `field_meanings`, so that `python -OO` prints it too); "" without one."""
    return _own_meanings(cls).get("", "")


def _own_meanings(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source installed (a zipped or compiled-only package)
        return {}
    lines = source.splitlines()
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, the line holds nothing else)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if text and not _TOOL_COMMENT.match(text):
                alone = lines[tok.start[0] - 1][: tok.start[1]].strip() == ""
                comments[tok.start[0]] = (text, alone)
    classdef = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    body = classdef.body
    meanings = {"": " ".join((ast.get_docstring(classdef) or "").split("\n\n")[0].split())}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        row = node.lineno - 1
        while row in comments and comments[row][1]:
            above.insert(0, comments[row][0])
            row -= 1
        end = node.end_lineno or node.lineno
        trailing = [
            comments[r][0]
            for r in range(node.lineno, end + 1)
            if r in comments and not comments[r][1]
        ]
        below = []
        after = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            below = [after.value.value]
        meanings[node.target.id] = " ".join(" ".join([*above, *trailing, *below]).split())
    return meanings


def _plain(value: Any) -> Any:
    """A config value as YAML writes it: tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _yaml_value(value: Any) -> str:
    text = yaml.dump(
        _plain(value), Dumper=_Dumper, default_flow_style=True, width=2**31, allow_unicode=True
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def describe_config(cfg: Any, indent: int = 0) -> str:
    """`cfg` as YAML that `load_config` reads back to an equal config, every key on its own
    line with its value and, as a comment, its meaning (`field_meanings`); nested configs
    are indented mappings."""
    pad = " " * indent
    meanings = field_meanings(type(cfg))
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        nested = dataclasses.is_dataclass(value) and bool(dataclasses.fields(value))
        meaning = meanings[f.name] or (class_meaning(type(value)) if nested else "")
        note = f"  # {meaning}" if meaning else ""
        if nested:
            out.append(f"{pad}{f.name}:{note}")
            out.append(describe_config(value, indent + 2))
        else:
            out.append(f"{pad}{f.name}: {_yaml_value(value)}{note}")
    return "\n".join(out)
