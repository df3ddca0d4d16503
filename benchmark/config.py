"""Typed, frozen protocol configs built from defaults plus `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

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
    origin, args = get_origin(annotation), get_args(annotation)
    try:
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            if raw.lower() in ("none", "null", "") and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return coerce(raw, inner[0], key, owner)
        if origin is Literal:
            if raw not in [str(a) for a in args]:
                raise ValueError(f"one of {', '.join(map(str, args))}")
            return next(a for a in args if str(a) == raw)
        if origin is tuple:
            item_type = args[0]
            parts = [p for p in raw.replace(" ", "").split(",") if p]
            return tuple(coerce(p, item_type, key, owner) for p in parts)
        if annotation is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("true or false")
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is str:
            return raw
    except ValueError as exc:
        expected = str(exc) if str(exc).startswith(("one of", "true")) else _type_name(annotation)
        raise SslBenchError(
            f"--set {key}={raw}: expected {expected} for {owner}") from None
    raise TypeError(f"unsupported config field type {annotation!r} for {key}")


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple:
        return f"a comma-separated list of {_type_name(args[0])}"
    return {int: "an integer", float: "a number", str: "a string"}.get(annotation, str(annotation))


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def config_digest(data: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-ready mapping."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
