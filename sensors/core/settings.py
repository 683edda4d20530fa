"""The one config layer of training and the runtime: nested dataclasses built from YAML, environment
variables and ``--set key=value`` overrides, checked against the dataclasses' type hints.

Order, later wins: the dataclass defaults (the only place a default is written), YAML files
(a file only needs the keys it changes), environment variables ``<PREFIX>SECTION__KEY=value``
(e.g. ``AWC_RUNTIME_SYNC__RATE_HZ=20``), then ``--set section.key=value`` overrides. Values of
the environment and of overrides are parsed as YAML, so lists are written ``[rgb, lidar]`` and
booleans ``true``/``false``. A key that does not exist, or a value of the wrong type, raises
``ConfigError`` naming the key, what was expected, what came, and where it came from; the
dataclasses then check their own ranges (``__post_init__`` or ``validate()``).

``describe(cls)`` lists every key with its type and default (``config show``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and how to fix it."""


# ------------------------------------------------------------------------------------------ sources
def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found: pass an existing YAML file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict, top: Mapping) -> dict:
    """Merge ``top`` into ``base`` in place (mappings recursively, anything else replaced)."""
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = dict(v) if isinstance(v, Mapping) else v
    return base


def _set_path(data: dict, keys: list[str], value: Any, source: str) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {k!r} is a value, not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"sync.rate_hz=20"`` -> (["sync", "rate_hz"], 20); the value is parsed as YAML."""
    if "=" not in item or not item.split("=", 1)[0].strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. --set sync.rate_hz=20 or "
                          "--set model.modalities=[rgb,lidar]")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, items: list[str] | None) -> dict:
    for item in items or []:
        keys, value = parse_override(item)
        _set_path(data, keys, value, f"override {item!r}")
    return data


def apply_env(data: dict, prefix: str, environ: Mapping[str, str] | None = None) -> dict:
    """``PREFIX``SECTION__KEY=value variables (case-insensitive keys) into ``data``."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if name.startswith(prefix) and len(name) > len(prefix):
            keys = [k.lower() for k in name[len(prefix):].split("__")]
            _, value = parse_override(f"x={environ[name]}")
            _set_path(data, keys, value, f"environment variable {name}")
    return data


# ------------------------------------------------------------------------------------------- build
def build(cls: type, data: Mapping | None, where: str = "", source: str = "config") -> Any:
    """An instance of dataclass ``cls`` from ``data`` (missing keys keep their defaults)."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} ({source}): expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key(s) {', '.join(_join(where, k) for k in unknown)} ({source}); "
                          f"{where or 'the config'} has: {known}")
    kwargs = {name: _convert(hints[name], value, _join(where, name), source) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{err} ({source})") from None
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(option, value, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} ({source})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r} ({source})")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r} ({source})")
    if tp in (int, float):
        number = _number(value)   # YAML reads 3e-4 (no dot) as a string: numbers in text are accepted
        if number is not None and tp is float:
            return number
        if number is not None and number.is_integer():
            return int(number)
        what = "an integer" if tp is int else "a number"
        raise ConfigError(f"{key}: expected {what}, got {value!r} ({source})")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r} ({source})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            example = f"[{value}]" if isinstance(value, str | int | float) else "[a, b]"
            raise ConfigError(f"{key}: expected a list like {example}, got {value!r} ({source})")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r} ({source})")
            return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({source})")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, key, source): _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list of {type_name(args[0])}"
    if origin in (tuple, list):
        return "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------------------- describe
def to_plain(x: Any) -> Any:
    """Dataclasses, tuples and mappings -> plain YAML/JSON-friendly values."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def describe(cls: type, value: Any = None, where: str = "") -> list[tuple[str, str, Any, Any]]:
    """Every key of ``cls``: (dotted key, type, default, value in ``value``), sections expanded."""
    default = cls()
    value = default if value is None else value
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = _join(where, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, getattr(value, f.name), key)
        else:
            rows.append((key, type_name(tp), to_plain(getattr(default, f.name)), to_plain(getattr(value, f.name))))
    return rows


def format_keys(rows: list[tuple[str, str, Any, Any]]) -> str:
    """``config show``: one line per key; values that differ from the default are marked ``*``."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'key':<{width}}  {'type':<16} value (default when it differs)"]
    for key, tp, default, value in rows:
        changed = value != default
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        note = ""
        if changed:
            note = "   * default " + yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
        lines.append(f"{key:<{width}}  {tp:<16} {text}{note.removesuffix('...').rstrip()}")
    return "\n".join(lines)


def show(load, cls: type, as_yaml: bool = False) -> int:
    """``config show``: print every key of ``cls`` with its type, default and the value ``load()``
    resolves (or that config as YAML); a bad file, key or value is one line and exit code 2."""
    try:
        cfg = load()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip() if as_yaml
          else format_keys(describe(cls, cfg)))
    return 0
