"""Typed configs: dataclasses are the single source of defaults; YAML overrides them; CLI
``key=value`` (dotted) overrides YAML.

Every unknown key is an error that lists the valid keys, and every bad value names the file, the
line, the key, the value and what is allowed::

    configs/dpo/demo.yaml:7: dpo.betaa: unknown key; valid keys: beta, loss_type, ...

A config dataclass may define ``__post_init__`` that raises ``ValueError`` for out-of-range values;
the loader adds the file/line/key context.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from onbrand.stage_table import STAGE_TABLE

T = TypeVar("T")

# Which dataclass validates each YAML under configs/: the most specific key wins (a file path
# relative to configs/, else its first folder). The stages' kinds come from the stage table
# (configs/<stage>/); these are the kinds that are not a stage. The test that loads every shipped
# YAML uses CONFIG_KINDS.
OTHER_CONFIG_KINDS: dict[str, str] = {
    "demo.yaml": "onbrand.pipeline:RunConfig",
    "runs": "onbrand.pipeline:RunConfig",
    "brands": "onbrand.data.brand:BrandCard",
    "eval/gates.yaml": "onbrand.eval.gate:GateConfig",
}
CONFIG_KINDS: dict[str, str] = {
    **{s.name: s.config_kind for s in STAGE_TABLE if s.config_kind},
    **OTHER_CONFIG_KINDS,
}
# Folders under configs/ whose YAML is another tool's format (checked by that tool, not by us).
FOREIGN_CONFIG_DIRS = ("accelerate",)


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and what is allowed."""


def resolve_kind(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------- YAML with lines
def _line_map(text: str) -> dict[str, int]:
    """Map dotted key paths of a YAML mapping to their 1-based line numbers."""
    out: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                out[path] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}.{i}"
                out.setdefault(path, item.start_mark.line + 1)
                walk(item, path)

    walk(root, "")
    return out


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML mapping; return (data, line map). Errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data, _line_map(text)


# ----------------------------------------------------------------------------- overrides
def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "seed=3"]`` -> nested dict. Values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r}: expected key=value (dotted keys allowed, e.g. dpo.beta=0.2)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is set both as a value and as a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- typed building
class _Ctx:
    def __init__(self, source: str, lines: dict[str, int]):
        self.source = source
        self.lines = lines

    def where(self, path: str) -> str:
        probe = path
        while probe:
            if probe in self.lines:
                return f"{self.source}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0]
        return self.source

    def fail(self, path: str, msg: str) -> typing.NoReturn:
        raise ConfigError(f"{self.where(path)}: {path or '<root>'}: {msg}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``; errors name ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, path, ctx)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            ctx.fail(path, f"got {value!r}; allowed: {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            ctx.fail(path, f"expected a mapping for section {_type_name(tp)}, got {value!r}")
        return _build(tp, value, path, ctx)
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _coerce_container(tp, value, path, ctx)
    return _coerce_scalar(tp, value, path, ctx)


def _coerce_union(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """The first option of ``X | Y | None`` that accepts ``value``."""
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(option, value, path, ctx)
        except ConfigError:
            pass
    ctx.fail(path, f"got {value!r}; allowed: {' or '.join(_type_name(o) for o in options)}")


def _coerce_container(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """list[X] / tuple[X, ...] / dict[str, X], items coerced one by one (``path.i`` / ``path.key``)."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            ctx.fail(path, f"expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(val_tp, v, f"{path}.{k}", ctx) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        ctx.fail(path, f"expected a list, got {value!r}")
    item_tp = args[0] if args else Any
    items = [_coerce(item_tp, v, f"{path}.{i}", ctx) for i, v in enumerate(value)]
    return tuple(items) if (origin is tuple or tp is tuple) else items


def _coerce_scalar(tp: Any, value: Any, path: str, ctx: _Ctx) -> Any:
    """bool / int / float (YAML's dotless "1e-4" string too) / str / Path; other types pass through."""
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "1e-4" (no dot) as a string
                except ValueError:
                    pass
            ctx.fail(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            ctx.fail(path, f"expected a path, got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, ctx: _Ctx) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            ctx.fail(path, f"unknown key; valid keys: {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, path, ctx)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        ctx.fail(prefix, f"missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        ctx.fail(prefix, str(e))


def from_dict(
    cls: type[T], data: dict[str, Any], source: str = "<config>", lines: dict[str, int] | None = None
) -> T:
    """Build dataclass ``cls`` from a plain dict, checking keys, types and ranges."""
    return _build(cls, data, "", _Ctx(source, lines or {}))


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults of ``cls`` <- YAML at ``path`` <- dotted ``key=value`` overrides."""
    data: dict[str, Any] = dict(base or {})
    lines: dict[str, int] = {}
    source = "<defaults>"
    if path is not None:
        file_data, lines = read_yaml(path)
        data = deep_merge(data, file_data)
        source = str(path)
    over = parse_overrides(overrides)
    if over:
        data = deep_merge(data, over)
        # An override wins over the file: report it as coming from the command line.
        for key in _flatten(over):
            lines.pop(key, None)
        source = f"{source} (+ command-line overrides)"
    return from_dict(cls, data, source, lines)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        keys.append(path)
        if isinstance(v, dict):
            keys += _flatten(v, path)
    return keys


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config dataclass (Paths become strings, tuples lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def check_range(
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise ``ValueError("name must be in [lo, hi], got v")`` when out of range.

    NaN and +-inf are always out of range: a NaN compares False to every bound, so without the
    explicit check it would pass any range.
    """
    non_finite = isinstance(value, float) and not math.isfinite(value)
    bad = (
        non_finite
        or (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        finite = " and finite" if non_finite else ""
        raise ValueError(f"{name} must be in {rng}{finite}, got {value!r}")
