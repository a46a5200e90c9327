"""Typed configuration: dataclasses -> YAML and dotted command-line overrides.

Every config is a dataclass whose fields carry ``metadata={"help": ...}`` (and optionally
``"choices"``). Loading is strict: an unknown key, a value of the wrong type or outside its
choices raises :class:`ConfigError` naming the dotted key (``parallel.tp``) and, where the
value came from a file, the file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type, TypeVar, Union

import yaml

from megatron_align.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong; the message names the dotted key."""


def help_field(default: Any = MISSING, *, help: str, choices: Optional[Iterable[Any]] = None,
               default_factory: Any = MISSING) -> Any:
    """A dataclass field with its documentation (and allowed values) attached."""
    meta: Dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> Tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or an override string) to ``tp`` or raise naming ``key``."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, List, tuple):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_choices(f: dataclasses.Field, value: Any, key: str) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (nested) mapping, strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}" + (f" (section {prefix} has: {', '.join(known)})" if prefix else
                                                   f" (top-level keys: {', '.join(known)})")
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        f = known[name]
        kwargs[name] = _coerce(value, hints[name], key)
        _check_choices(f, kwargs[name], key)
    obj = cls(**kwargs)
    _validate_tree(obj, prefix)
    return obj


def _validate_tree(obj: Any, prefix: str) -> None:
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:  # section validators raise ValueError naming the key
            raise ConfigError(str(e)) from None


def to_dict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def _parse_override(item: str) -> Tuple[List[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested mapping (values parsed as YAML scalars)."""
    out = _deepcopy_dict(data)
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy_dict(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Iterable[str] = ()) -> T:
    """YAML file (optional) + dotted overrides -> a validated ``cls``.

    An error is blamed on where the value came from: ``override data.seq_length=1: data.seq_length: ...`` when the
    key it names was set on the command line, else ``<file>: ...``."""
    overrides = list(overrides)
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        blamed = _blame_overrides(str(e), overrides)
        if blamed:
            raise ConfigError(f"{blamed}: {e}") from None
        if path:
            raise ConfigError(f"{path}: {e}") from None
        raise


_KEY_IN_MESSAGE = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _blame_overrides(message: str, overrides: List[str]) -> str:
    """``override k=v`` for each command-line override whose key (or a key inside it, or the section above it) the
    error message names; '' when it names none (the value came from the file or the defaults)."""
    named = set(_KEY_IN_MESSAGE.findall(message))
    hits = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if any(n == key or n.startswith(key + ".") or key.startswith(n + ".") and "." in n for n in named):
            hits.append(item)
    return ", ".join(f"override {item}" for item in hits)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def describe(cls: type, prefix: str = "") -> List[Tuple[str, str, str, str]]:
    """(dotted key, type, default, help) rows for every field of ``cls``, recursively."""
    rows = []
    hints = _type_hints(cls)
    for f in fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        _, inner = _is_optional(tp)
        if is_dataclass(inner):
            rows.extend(describe(inner, key))
            continue
        if f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
        rows.append((key, str(tp).replace("typing.", ""), default, help_text))
    return rows
