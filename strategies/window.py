"""Sliding window: the last ``window_frames`` latent frames (Self-Forcing's rolling cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.cache import KeepBlocksStrategy, require_block_multiples, require_non_negative
from toolkit.registry import STRATEGIES
from toolkit.spec import ModelSpec


@STRATEGIES.register("window")
@dataclass
class Window(KeepBlocksStrategy):
    """Keep the blocks of the last ``window_frames`` finished latent frames.

    Attributes:
        window_frames: finished frames kept; a multiple of the model's block size.
    """

    window_frames: int = 12
    partitions: ClassVar[tuple[str, ...]] = ("recent",)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "window_frames")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "window_frames")

    def assign(self, index: int, upcoming: int) -> str | None:
        keep = self.window_frames // self.spec.block_frames
        return "recent" if index >= upcoming - keep else None
