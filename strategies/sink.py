"""Attention sink + recent window (StreamingLLM; LongLive uses a 3-frame sink + 12 frames)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.cache import KeepBlocksStrategy
from toolkit.registry import STRATEGIES
from toolkit.spec import ModelSpec


@STRATEGIES.register("sink")
@dataclass
class Sink(KeepBlocksStrategy):
    """Keep the first ``sink_frames`` and the last ``window_frames`` finished latent frames.

    Attributes:
        sink_frames: frames at the start of the video never evicted (a multiple of the block).
        window_frames: most recent finished frames kept (a multiple of the block).
    """

    sink_frames: int = 4
    window_frames: int = 8
    partitions: ClassVar[tuple[str, ...]] = ("sink", "recent")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("sink_frames", "window_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")

    def check(self, spec: ModelSpec) -> None:
        for name in ("sink_frames", "window_frames"):
            value = getattr(self, name)
            if value % spec.block_frames:
                raise ValueError(f"{name}={value}: must be a multiple of the block size "
                                 f"{spec.block_frames}")

    def assign(self, index: int, upcoming: int) -> str | None:
        bf = self.spec.block_frames
        if index < self.sink_frames // bf:
            return "sink"
        return "recent" if index >= upcoming - self.window_frames // bf else None
