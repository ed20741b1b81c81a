"""The built-in sprite world: prompts, simulator and ground-truth analysers.

See :mod:`toolkit.worlds.sprites.sim` for the world's rules and seeds, and
:mod:`toolkit.worlds.sprites.analyse` for how frames are read back. Its plug-in (``world``)
registers its weight folder (``toolkit/worlds/sprites/weights``) on the weights search path
(``toolkit.models.weights``).
"""

from pathlib import Path

from toolkit.worlds.sprites.analyse import (
    FrameObs,
    SpriteObs,
    analyse_frame,
    analyse_video,
    classify_pixels,
    fidelity,
    video_report,
)
from toolkit.worlds.sprites.sim import (
    BACKGROUNDS,
    COLOURS,
    FRAME_SIZE,
    HALF_EXTENT,
    MAX_SPRITES,
    PAD_TOKEN,
    PALETTE,
    PROMPT_TOKENS,
    SHAPES,
    SPEEDS,
    SPLIT_SEEDS,
    SPLITS,
    VOCAB_SIZE,
    Prompt,
    SpriteSpec,
    prompt_for_seed,
    prompt_tokens,
    sample_batch,
    shape_mask,
    simulate,
    split_seed,
    trajectories,
)

#: The world's shipped weights and their cards.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FRAME_SIZE",
    "HALF_EXTENT",
    "MAX_SPRITES",
    "PAD_TOKEN",
    "PALETTE",
    "PROMPT_TOKENS",
    "SHAPES",
    "SPEEDS",
    "SPLITS",
    "SPLIT_SEEDS",
    "VOCAB_SIZE",
    "WEIGHTS_DIR",
    "FrameObs",
    "Prompt",
    "SpriteObs",
    "SpriteSpec",
    "analyse_frame",
    "analyse_video",
    "classify_pixels",
    "fidelity",
    "prompt_for_seed",
    "prompt_tokens",
    "sample_batch",
    "shape_mask",
    "simulate",
    "split_seed",
    "trajectories",
    "video_report",
]
