"""Typed, frozen protocol configs built from defaults plus `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

import numpy as np

from benchmark.errors import SslBenchError

C = TypeVar("C")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """['k=v', ...] -> {'k': 'v'}; a pair without '=' is a user error."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SslBenchError(f"--set expects key=value, got '{pair}'")
        overrides[key.strip()] = value.strip()
    return overrides


def build_config(config_cls: type[C], overrides: Mapping[str, Any], owner: str) -> C:
    """Defaults of `config_cls` with `overrides` applied; string values are coerced to the field type."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in fields:
            raise SslBenchError(
                f"unknown --set key '{key}' for {owner}; valid keys: {', '.join(sorted(fields))}")
        values[key] = coerce(raw, hints[key], key, owner) if isinstance(raw, str) else raw
    try:
        return config_cls(**values)
    except (ValueError, TypeError) as exc:
        raise SslBenchError(f"invalid config for {owner}: {exc}") from None


def coerce(raw: str, annotation: Any, key: str, owner: str) -> Any:
    """Convert the string `raw` to `annotation` (bool, int, float, str, Literal, tuple[...], Optional)."""
    try:
        return _convert(raw, annotation)
    except ValueError as exc:
        raise SslBenchError(f"--set {key}={raw}: expected {exc} for {owner}") from None


def _convert(raw: str, annotation: Any) -> Any:
    """The conversion itself; ValueError carries what was expected."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if raw.lower() in ("none", "null", "") and type(None) in args:
            return None
        return _convert(raw, next(a for a in args if a is not type(None)))
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(f"one of {', '.join(map(str, args))}")
    if origin is tuple:
        parts = [p for p in raw.replace(" ", "").split(",") if p]
        try:
            return tuple(_convert(p, args[0]) for p in parts)
        except ValueError:
            raise ValueError(f"a comma-separated list of {_type_name(args[0])}") from None
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("true or false")
    if annotation in (int, float, str):
        try:
            return annotation(raw)
        except ValueError:
            raise ValueError({int: "an integer", float: "a number"}.get(annotation, "a string")) from None
    raise TypeError(f"unsupported config field type {annotation!r}")


def _type_name(annotation: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(annotation, str(annotation))


def is_int(value: Any) -> bool:
    """An integer (numpy's too) that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_split_fields(config: Any, names: tuple[str, ...] = ("train_split", "test_split")) -> None:
    """ValueError naming the field when a split override is neither None nor a non-empty name."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name}: expected a split name or None, got {value!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def config_digest(data: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-ready mapping."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
