"""Rolling anchor (Rolling Forcing): the first block(s) re-positioned just before the window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from toolkit.cache import KeepBlocksStrategy, require_block_multiples, require_non_negative
from toolkit.registry import STRATEGIES
from toolkit.spec import ModelSpec


@STRATEGIES.register("rolling_anchor")
@dataclass
class RollingAnchor(KeepBlocksStrategy):
    """A working window at absolute positions plus an anchor that rolls along with it.

    The anchor (the first ``anchor_frames`` of the video) is never evicted; before each block
    its keys are moved (one time-dim rotation) to sit right before the oldest window block, so
    its distance to the current block stays constant however long the video gets.

    Attributes:
        anchor_frames: frames of the anchor (a multiple of the block size).
        window_frames: most recent finished frames kept (a multiple of the block size).
        positions: ``absolute`` for the window (the anchor always rolls).
    """

    anchor_frames: int = 4
    window_frames: int = 8
    partitions: ClassVar[tuple[str, ...]] = ("anchor", "recent")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "anchor_frames", "window_frames")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "anchor_frames", "window_frames")

    def assign(self, index: int, upcoming: int) -> str | None:
        bf = self.spec.block_frames
        if index < self.anchor_frames // bf:
            return "anchor"
        return "recent" if index >= upcoming - self.window_frames // bf else None

    def place(self, index: int) -> float:
        start = super().place(index)
        bf = self.spec.block_frames
        anchors = [b for b in self.blocks if b.partition == "anchor"]
        window = [b for b in self.blocks if b.partition == "recent"]
        front = min((b.t0 for b in window), default=start)
        for i, b in enumerate(anchors):
            b.move_to(front - (len(anchors) - i) * bf, self.rope)
        return start
