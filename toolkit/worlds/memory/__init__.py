"""The memory world: a video cuts between scenes that come back (:mod:`.scenes`).

Its plug-in (``world``) registers its weight folder (``toolkit/worlds/memory/weights``) on the
weights search path (``toolkit.models.weights``).
"""

from pathlib import Path

#: The memory world's shipped weights and their cards.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = ["WEIGHTS_DIR"]
