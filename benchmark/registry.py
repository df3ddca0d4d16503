"""One Registry class for protocols, recipes, datasets and architectures.

Built-ins register themselves with a decorator in their own module; the
registry imports the modules of its built-in packages on first use, then adds
the entry points of its group, which load only when asked for by name.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from benchmark.errors import SslBenchError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table with decorator, lazy 'module:attr' and entry-point registration."""

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin_packages: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_packages = builtin_packages
        self._targets: dict[str, Any] = {}
        self._origins: dict[str, str] = {}
        self._discovered = False
        self._frozen = False

    def register(self, name: str, target: Any = None) -> Any:
        """Register `target` (object or 'module:attr' string) under `name`; without target, a decorator."""
        if target is None:
            def decorator(obj: T) -> T:
                self._add(name, obj, origin=getattr(obj, "__module__", "builtin"))
                return obj
            return decorator
        self._add(name, target, origin=target if isinstance(target, str) else "builtin")
        return target

    def _add(self, name: str, target: Any, origin: str) -> None:
        if self._frozen:
            raise RuntimeError(f"{self.kind} registry is frozen; cannot add '{name}'")
        existing = self._targets.get(name)
        if existing is not None and existing is not target and _identity(existing) != _identity(target):
            raise ValueError(f"{self.kind} '{name}' is already registered by {self._origins[name]}")
        self._targets[name] = target
        self._origins[name] = origin

    def get(self, name: str) -> T:
        """The object registered as `name`; unknown names raise SslBenchError with a suggestion."""
        self._discover()
        if name not in self._targets:
            names = sorted(self._targets)
            raise SslBenchError(
                f"unknown {self.kind} '{name}'.{did_you_mean(name, names)} "
                f"Available: {', '.join(names) or '(none)'}")
        target = self._targets[name]
        if isinstance(target, EntryPoint):
            target = target.load()
        elif isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        self._targets[name] = target
        return target

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch pattern, sorted."""
        self._discover()
        return sorted(n for n in self._targets if fnmatch.fnmatch(n, pattern))

    def origin(self, name: str) -> str:
        self._discover()
        return self._origins[name]

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._targets

    def freeze(self) -> None:
        self._frozen = True

    def _clear(self) -> None:
        """Forget everything (tests only)."""
        self._targets.clear()
        self._origins.clear()
        self._discovered = False
        self._frozen = False

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for package_name in self.builtin_packages:
            package = importlib.import_module(package_name)
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{package_name}.{module.name}")
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                if ep.name not in self._targets:
                    self._targets[ep.name] = ep
                    self._origins[ep.name] = f"entry point {ep.value}"


def _identity(target: Any) -> Any:
    if isinstance(target, EntryPoint):
        return target.value
    if isinstance(target, str):
        return target
    return (getattr(target, "__module__", None), getattr(target, "__qualname__", id(target)))


PROTOCOLS: Registry[Any] = Registry("protocol", "ssl_bench.protocols", ("protocols",))
DATASETS: Registry[Any] = Registry("dataset", "ssl_bench.datasets", ("benchmark.data",))
ARCHS: Registry[Callable[..., Any]] = Registry("architecture", "ssl_bench.archs", ("checkpoints.archs",))
RECIPES: Registry[Any] = Registry("recipe", "ssl_bench.recipes", ("checkpoints.recipes",))
