"""Rolling anchor (Rolling Forcing): the sink re-positioned just before the recent window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from strategies.sink import Sink
from toolkit.registry import STRATEGIES


@STRATEGIES.register("rolling_anchor")
@dataclass
class RollingAnchor(Sink):
    """A recent window at absolute positions plus a sink (Rolling Forcing's anchor) that rolls
    along with it: ``Sink`` with another placement.

    The sink (the first ``sink_frames`` of the video) is never evicted; before each block its
    keys are moved (one time-dim rotation) to sit right before the oldest recent block, so its
    distance to the current block stays constant however long the video gets.

    Attributes:
        sink_frames: frames of the rolling sink (a multiple of the block size; formerly
            ``anchor_frames``, still accepted).
        recent_frames: most recent finished frames kept (a multiple of the block size;
            formerly ``window_frames``, still accepted).
        positions: ``absolute`` for the recent window (the sink always rolls).
    """

    renamed: ClassVar[dict[str, str]] = {"anchor_frames": "sink_frames",
                                         "window_frames": "recent_frames"}

    def place(self, index: int) -> float:
        start = super().place(index)
        bf = self.spec.block_frames
        sink = [b for b in self.blocks if b.partition == "sink"]
        recent = [b for b in self.blocks if b.partition == "recent"]
        front = min((b.t0 for b in recent), default=start)
        for i, b in enumerate(sink):
            b.move_to(front - (len(sink) - i) * bf, self.rope)
        return start
