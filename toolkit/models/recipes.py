"""Training recipes behind ``rollbench train NAME``: each a config dataclass and a function.

Worlds bring their recipes (``World.recipes``, registered when the worlds load); an installed
package adds its own through the entry-point group ``rollbench.recipes``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from toolkit.plugins import WORLDS
from toolkit.registry import Registry


class Recipe:
    """A training recipe: its config dataclass (the schema of ablations/train/NAME.yaml) and
    the function that trains with it. Either may be given as a ``module:Name`` path, imported
    on first use, so that registering and listing recipes imports no trainer."""

    def __init__(self, config: type | str, run: Callable[[Any], Any] | str) -> None:
        self._config, self._run = config, run

    @property
    def config(self) -> type:
        return _load(self._config)

    @property
    def run(self) -> Callable[[Any], Any]:
        return _load(self._run)

    def __repr__(self) -> str:
        return f"Recipe({self._config!r}, {self._run!r})"


def _load(obj: Any) -> Any:
    if not isinstance(obj, str):
        return obj
    module, _, name = obj.partition(":")
    return getattr(importlib.import_module(module), name)


RECIPES: Registry[Recipe] = Registry("training recipe", "rollbench.recipes",
                                     "toolkit.models.recipes", extended_by=(WORLDS,))
