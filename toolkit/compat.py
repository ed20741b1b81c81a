"""Old import paths of moved modules: still working, with a FutureWarning, until ``REMOVED_IN``.

Every module that moved is one line of :data:`MOVED` (old dotted path -> new one). Importing an
old path gives the module at its new place (the same object: ``toolkit.cache is
toolkit.core.cache``) and one FutureWarning naming the new path and the release that removes the
old one. So a user's strategy (``from toolkit.cache import KeepBlocksStrategy``), a config's
``_target_: toolkit.world.model.load_world`` and a pickle naming an old class all keep working.
An old package whose modules went to several places (``toolkit.world``) becomes a thin module
that hands out its old names from their new homes. Names that left a module which stayed are
listed in :data:`RENAMED` and handed out by that module's ``__getattr__`` (:func:`moved_names`).

``toolkit/__init__.py`` installs the finder, so nothing else has to import this module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

#: The release that removes the old paths.
REMOVED_IN = "0.3"

#: Old module path -> new module path.
MOVED: dict[str, str] = {
    # the two worlds of toolkit/world/ got a wing each (0.2)
    "toolkit.world": "toolkit.worlds.sprites",
    **{f"toolkit.world.{m}": f"toolkit.worlds.sprites.{m}"
       for m in ("sim", "analyse", "model", "train", "evaluate", "pf_train")},
    "toolkit.world.scenes": "toolkit.worlds.memory.scenes",
    **{f"toolkit.world.memory_{m}": f"toolkit.worlds.memory.{n}"
       for m, n in (("train", "train"), ("eval", "evaluate"), ("figure", "figure"),
                    ("packed", "packed"), ("gates", "gates"), ("reference", "reference"))},
    # toolkit/'s flat modules got folders that show the architecture (0.2)
    **{f"toolkit.{m}": f"toolkit.core.{m}"
       for m in ("spec", "rope", "attention", "model", "sampling", "schedule", "trace", "timing",
                 "cache", "contract", "rollout", "testing")},
    **{f"toolkit.{m}": f"toolkit.runs.{m}"
       for m in ("config", "jobs", "grid", "sweep", "tracking", "stores", "aggregate", "media")},
    "toolkit.claims": "toolkit.runs.claims",
    "toolkit.docs": "toolkit.tools.docs",
    "toolkit.memory": "toolkit.bench.kv",
    "toolkit.realbench": "toolkit.bench.realsize",
    "toolkit.throughput": "toolkit.bench.throughput",
    "toolkit.allocations": "toolkit.bench.allocations",
    **{f"toolkit.{m}": f"toolkit.models.{m}"
       for m in ("zoo", "specmodel", "weights", "recipes", "real", "real.builder",
                 "real.checkpoint", "real.text", "real.vae")},
    # the memory world's measures live with the memory world
    "toolkit.metrics.recall": "toolkit.worlds.memory.metrics",
}

#: Old paths that were packages (their modules are listed one by one above).
PACKAGES: frozenset[str] = frozenset({"toolkit.world", "toolkit.real"})

_OLD = {new: old for old, new in MOVED.items()}

#: Old ``module.name`` -> new ``module.name``, for names that left a module which stayed.
RENAMED: dict[str, str] = {
    "toolkit.runs.jobs.recall_line": "toolkit.worlds.memory.world.recall_line",
    "toolkit.metrics.WorldFeatures": "toolkit.worlds.sprites.features.WorldFeatures",
    "toolkit.metrics.features.WorldFeatures": "toolkit.worlds.sprites.features.WorldFeatures",
    # the three training loops became hooks over one trainer
    "toolkit.worlds.sprites.train.cosine_factor": "toolkit.models.trainer.cosine_factor",
    "toolkit.worlds.sprites.pf_train.RUN_ONLY": "toolkit.models.trainer.RUN_ONLY",
}


def moved_names(module: str) -> Any:
    """The ``__getattr__`` of a module some names of :data:`RENAMED` left: each is handed out
    from its new home with one FutureWarning (then kept on the module); any other name is an
    AttributeError."""

    def __getattr__(name: str) -> Any:
        new = RENAMED.get(f"{module}.{name}")
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", new)
        home, _, attr = new.rpartition(".")
        value = getattr(importlib.import_module(home), attr)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__


def new_path(name: str) -> str | None:
    """The new dotted path of ``name`` (a module, or ``module.attr``), or None when it did not
    move: ``toolkit.cache.Sink`` -> ``toolkit.core.cache.Sink``."""
    head, rest = name, ""
    while head:
        if head in MOVED:
            return MOVED[head] + rest
        head, _, tail = head.rpartition(".")
        rest = f".{tail}{rest}"
    return None


def old_path(name: str) -> str:
    """The dotted path ``name`` had before every move listed here (itself when it never moved):
    ``toolkit.worlds.sprites.model.load_world`` -> ``toolkit.world.model.load_world``.

    Run keys hash config targets under this spelling (``toolkit.runs.identity.run_key``), so
    a module that moves keeps every stored run's key, and a config naming a target by its old
    path is the same run as one naming it by the new path. Kept after the old paths go.
    """
    name = new_path(name) or name
    head, rest = name, ""
    while head:
        if head in _OLD:
            return _OLD[head] + rest
        head, _, tail = head.rpartition(".")
        rest = f".{tail}{rest}"
    return name


def _warn(old: str, new: str) -> None:
    """One FutureWarning, attributed to the line that imported the old path."""
    frame, level = sys._getframe(1), 1
    while frame is not None:  # ``warnings`` itself skips importlib's bootstrap frames
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            level += 1
            if name not in (__file__, importlib.__file__):
                break
        frame = frame.f_back
    warnings.warn(f"{old} moved to {new}; the old path is removed in rollbench {REMOVED_IN}",
                  FutureWarning, stacklevel=level)


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new place (or a thin stand-in for a package)."""

    def __init__(self, old: str) -> None:
        self.old = old
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if self.old in PACKAGES:
            return _stand_in(self.old)
        module = importlib.import_module(MOVED[self.old])
        self.spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        if self.spec is not None:  # the import system gave the module the alias's spec
            module.__spec__ = self.spec
        _warn(self.old, MOVED[self.old])


def _stand_in(old: str) -> types.ModuleType:
    """A package at an old path: its moved modules import through the finder, any other name
    comes from the package at the new path."""
    module = types.ModuleType(old, f"Moved to {MOVED[old]}.")
    module.__path__ = []

    def __getattr__(name: str) -> Any:
        child = f"{old}.{name}"
        if child in MOVED:
            return importlib.import_module(child)
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(MOVED[old]), name)

    module.__getattr__ = __getattr__
    return module


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(fullname),
                                               is_package=fullname in PACKAGES)


def install() -> None:
    """Put the finder of old paths first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
