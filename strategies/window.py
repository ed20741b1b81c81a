"""Sliding window: the last ``window_frames`` latent frames (Self-Forcing's rolling cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.cache import KeepBlocksStrategy
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
        if self.window_frames < 0:
            raise ValueError(f"window_frames={self.window_frames}: must be >= 0")

    def check(self, spec: ModelSpec) -> None:
        if self.window_frames % spec.block_frames:
            raise ValueError(f"window_frames={self.window_frames}: must be a multiple of the "
                             f"block size {spec.block_frames} (e.g. "
                             f"{self.window_frames // spec.block_frames * spec.block_frames})")

    def assign(self, index: int, upcoming: int) -> str | None:
        keep = self.window_frames // self.spec.block_frames
        return "recent" if index >= upcoming - keep else None
