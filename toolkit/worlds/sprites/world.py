"""The sprite world as a plug-in: what the toolkit asks of it (``toolkit.plugins.World``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from toolkit.models.recipes import Recipe
from toolkit.plugins import World
from toolkit.worlds import install
from toolkit.worlds.sprites import WEIGHTS_DIR
from toolkit.worlds.sprites import features as _features  # noqa: F401  (feature ``world``)
from toolkit.worlds.sprites.analyse import FROZEN_SPEED, analyse_video, video_report
from toolkit.worlds.sprites.sim import SPEEDS, Prompt, simulate, split_seed


def claims(prompt: Any) -> bool:
    """A :class:`Prompt`, or its text."""
    if isinstance(prompt, Prompt):
        return True
    try:
        return isinstance(prompt, str) and bool(Prompt.from_text(prompt))
    except ValueError:
        return False


def prompt_of(prompt: Any) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt.from_text(prompt)


def identities(frames: np.ndarray) -> list[Counter]:
    """Per frame, the (colour, shape) of every sprite the analysers read."""
    return [Counter((s.colour, s.shape) for s in f.sprites) for f in analyse_video(frames)]


def references(prompt: Prompt, n: int, frames: int) -> Any:
    """``n`` simulator clips of the prompt (the "val" split's local seeds 0..n-1)."""
    return simulate([prompt] * n, [split_seed(i, "val") for i in range(n)], frames)


def attributes(prompt: Prompt) -> dict[str, Any]:
    """What a prompt asks for, by attribute (the switch measures compare them): background,
    the multisets of colours and shapes (sorted), the sprite count, speed in px/frame."""
    return {"background": prompt.background,
            "colour": tuple(sorted(s.colour for s in prompt.sprites)),
            "shape": tuple(sorted(s.shape for s in prompt.sprites)),
            "count": len(prompt.sprites), "speed": SPEEDS[prompt.speed]}


#: The figures the docs quote (``rollbench docs``), made by :mod:`.docfigures`.
_DOCS = "toolkit.worlds.sprites.docfigures"
FIGURES = {
    "world-1x": f"{_DOCS}:world_1x",
    "world-pf-steps": f"{_DOCS}:world_pf_steps",
    "world-pf-mid-use": f"{_DOCS}:world_pf_mid_use"}


WORLD = install(World(
    name="sprites",
    description="one prompted sprite (circle / square / triangle, 4 colours) bouncing on a "
                "background; 16x16 frames",
    claims=claims, prompt_of=prompt_of, report=video_report, identities=identities,
    attributes=attributes,
    references=references, frozen_speed=FROZEN_SPEED, weights=WEIGHTS_DIR,
    presets=("world", "world-pf"),
    recipes={"world-model": Recipe("toolkit.worlds.sprites.train:TrainConfig",
                                   "toolkit.worlds.sprites.train:train"),
             "packforcing": Recipe("toolkit.worlds.sprites.pf_train:PFTrainConfig",
                                   "toolkit.worlds.sprites.pf_train:train_packforcing")},
    strategies=("full", "packforcing"),
    figures=FIGURES,
))
