"""Registries with decorators, "did you mean" errors and entry points for outside plug-ins."""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name that is neither registered nor an importable ``module.Class`` path."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


#: Every registry made so far, by kind (a plug-in's own, e.g. PackForcing's compressors, too).
REGISTRIES: dict[str, Registry] = {}


class Registry(Generic[T]):
    """Names -> classes (or factories), filled by ``@REGISTRY.register(name)``.

    Args:
        kind: what is registered (used in error messages).
        group: entry-point group through which installed packages add their own.
        builtin: module imported on first use, whose import registers the built-ins.
        extended_by: registries whose plug-ins add to this one (worlds bring metrics): they
            are loaded with it.
    """

    def __init__(self, kind: str, group: str, builtin: str,
                 extended_by: tuple[Registry, ...] = ()) -> None:
        self.kind, self.group, self.builtin = kind, group, builtin
        self.extended_by = extended_by
        self._items: dict[str, T] = {}
        self._loaded = False
        REGISTRIES[kind] = self

    def register(self, name: str):
        """Class decorator registering under ``name`` (also sets ``cls.name``)."""

        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to "
                                 f"{self._items[name]!r}")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self.builtin)
        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep.load())
        for other in self.extended_by:
            other._load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> dict[str, T]:
        self._load()
        return dict(sorted(self._items.items()))

    def name_of(self, obj: Any) -> str | None:
        """The name ``obj`` itself is registered under (not a registered parent's), or None."""
        self._load()
        return next((n for n, o in self._items.items() if o is obj), None)

    def get(self, name: str) -> T:
        """The registered object, or one imported from a dotted ``module.Name`` path."""
        self._load()
        if name in self._items:
            return self._items[name]
        if "." in name:
            module, _, attr = name.rpartition(".")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise UnknownName(f"cannot import {self.kind} {name!r}: {err}") from err
        close = difflib.get_close_matches(name, self._items, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UnknownName(f"unknown {self.kind} {name!r}.{hint} Available: "
                          f"{', '.join(self.names())} (or a 'module.Class' path)")


def where(obj: Any) -> str:
    """Where an object is defined, as ``module.QualName``."""
    return f"{obj.__module__}.{getattr(obj, '__qualname__', repr(obj))}"


STRATEGIES: Registry[type] = Registry("strategy", "rollbench.strategies", "strategies")


def strategy_name(strategy: Any) -> str:
    """What runs, traces and reports call a strategy: its registry name, else the
    ``module.Class`` path that builds it (``strategy._target_=...``)."""
    cls = type(strategy)
    return STRATEGIES.name_of(cls) or where(cls)
