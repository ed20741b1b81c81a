"""Sliding window: the last ``window_frames`` latent frames (Self-Forcing's rolling cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.core.cache import (
    FinishedBlock,
    KeepBlocksStrategy,
    require_block_multiples,
    require_non_negative,
)
from toolkit.core.spec import ModelSpec
from toolkit.registry import STRATEGIES


@STRATEGIES.register("window")
@dataclass
class Window(KeepBlocksStrategy):
    """Keep the last ``window_frames`` latent frames.

    Self-Forcing's ``local_attn_size`` (its ``CausalWanSelfAttention``: the keys of the last
    ``local_attn_size`` frames of its rolling cache, the block being generated included; -1,
    the released default, means a fixed 21-frame cache that cannot roll) is
    ``include_current=True``: the block attends to the last ``window_frames`` latent frames,
    itself among them, so it sees ``window_frames - block_frames`` finished frames, cut at a
    frame boundary inside the oldest kept block when that is not a whole number of blocks.

    Its one partition is ``recent``; ``window_frames`` is the window's span (with
    ``include_current`` it counts the block itself, so it is not the finished ``recent_frames``
    of the multi-partition strategies).

    Attributes:
        window_frames: latent frames in the window.
        include_current: False: ``window_frames`` finished frames (a multiple of the block
            size) plus the block itself; True: ``window_frames`` (>= the block size) counting
            the block itself, Self-Forcing's span.
    """

    window_frames: int = 12
    include_current: bool = False
    partitions: ClassVar[tuple[str, ...]] = ("recent",)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "window_frames")

    def check(self, spec: ModelSpec) -> None:
        if not self.include_current:
            require_block_multiples(self, spec, "window_frames")
        elif self.window_frames < spec.block_frames:
            raise ValueError(f"window_frames={self.window_frames} with include_current=true: "
                             f"must be >= the block size {spec.block_frames} (the block "
                             "itself is in the window)")

    def _finished_frames(self) -> int:
        """Finished frames the next block attends to."""
        return self.window_frames - (self.spec.block_frames if self.include_current else 0)

    def assign(self, index: int, upcoming: int) -> str | None:
        return self.sink_recent(index, upcoming, 0, self._finished_frames())

    def commit(self, block: FinishedBlock) -> None:
        super().commit(block)
        bf, tpf = self.spec.block_frames, self.spec.tokens_per_frame
        first = (block.index + 1) * bf - self._finished_frames()  # first frame still attended
        for b in self.blocks:  # the oldest kept block may hold frames before it: drop them
            b.drop_frames(first - ((b.index + 1) * bf - b.tokens // tpf), tpf)
