"""Attention sink + recent window (StreamingLLM; LongLive uses a 3-frame sink + 12 frames)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.core.cache import KeepBlocksStrategy, require_block_multiples, require_non_negative
from toolkit.core.spec import ModelSpec
from toolkit.registry import STRATEGIES


@STRATEGIES.register("sink")
@dataclass
class Sink(KeepBlocksStrategy):
    """Keep the first ``sink_frames`` and the last ``recent_frames`` finished latent frames.

    Attributes:
        sink_frames: frames at the start of the video never evicted (a multiple of the block).
        recent_frames: most recent finished frames kept (a multiple of the block; formerly
            ``window_frames``, still accepted).
    """

    sink_frames: int = 4
    recent_frames: int = 8
    partitions: ClassVar[tuple[str, ...]] = ("sink", "recent")
    renamed: ClassVar[dict[str, str]] = {"window_frames": "recent_frames"}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "sink_frames", "recent_frames")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")

    def assign(self, index: int, upcoming: int) -> str | None:
        return self.sink_recent(index, upcoming, self.sink_frames, self.recent_frames)
