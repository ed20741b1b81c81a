"""The worlds wing: each world a plug-in (``toolkit.plugins.World``) in a folder of its own.

``sprites``: one prompted sprite bouncing on a background; ``memory``: a video that cuts between
scenes which come back. A world's folder holds its simulator and analysers, its models and
weights, its measures, training recipes and evaluations, and ``world.py``, which describes it
and calls :func:`install`. The worlds registry (``toolkit.plugins.WORLDS``) imports this
package on first use; nothing else in the toolkit imports it.
"""

from __future__ import annotations

from toolkit.models.recipes import RECIPES
from toolkit.models.weights import register_weights_dir
from toolkit.plugins import WORLDS, World


def install(world: World) -> World:
    """Register a world: the world itself, its weights folder and its training recipes.

    A world of another package calls it when its module is imported (and names the returned
    ``World`` in the entry-point group ``rollbench.worlds`` so that runs find it).
    """
    WORLDS.register(world.name)(world)
    if world.weights is not None:
        register_weights_dir(world.name, world.weights)
    for name, recipe in world.recipes.items():
        RECIPES.register(name)(recipe)
    return world


from toolkit.worlds.memory import world as _memory  # noqa: E402, F401  (they call install)
from toolkit.worlds.sprites import world as _sprites  # noqa: E402, F401

__all__ = ["install"]
