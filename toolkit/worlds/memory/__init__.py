"""The memory world: a video cuts between scenes that come back (:mod:`.scenes`).

Importing it registers the world's weight folder (``toolkit/worlds/memory/weights``) on the
weights search path (``toolkit.models.weights``).
"""

from pathlib import Path

from toolkit.models.weights import register_weights_dir

#: The memory world's shipped weights and their cards.
WEIGHTS_DIR = register_weights_dir("memory", Path(__file__).resolve().parent / "weights")

__all__ = ["WEIGHTS_DIR"]
