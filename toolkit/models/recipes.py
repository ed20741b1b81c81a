"""Training recipes behind ``rollbench train NAME``: each a config dataclass and a function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A training recipe: its config dataclass (the schema of ablations/train/NAME.yaml)."""

    config: type
    run: Callable[[Any], Any]


RECIPES: Registry[Recipe] = Registry("training recipe", "rollbench.recipes",
                                     "toolkit.models.recipes")


def _builtin() -> None:
    from toolkit.worlds.sprites.train import TrainConfig, train

    RECIPES.register("world-model")(Recipe(TrainConfig, train))

    from toolkit.worlds.memory.train import MemoryTrainConfig, train_memory

    RECIPES.register("world-memory")(Recipe(MemoryTrainConfig, train_memory))

    from toolkit.worlds.sprites.pf_train import PFTrainConfig, train_packforcing

    RECIPES.register("packforcing")(Recipe(PFTrainConfig, train_packforcing))


_builtin()
