"""Reference strategies of the memory world: the bracket every memory result is read against.

They read the world's truth (the prompt schedule the harness hands every strategy as
``schedules``), which no real strategy may do, so they are references, not contenders:

- ``oracle`` (``pick=needed``): sink + recent + the last ``needed`` mid blocks that showed the
  sprite of the block being made, re-packed: what a perfect selector keeps (the ceiling);
- ``oracle-wrong`` (``pick=wrong``): the same layout and token count with mid blocks that did
  NOT show it (the floor: what the model draws with the right amount of the wrong history);
- ``swap`` (``pick=swap``): the last needed block followed by a wrong block of another colour,
  so the needed block sits 3 blocks back and the wrong one 2 (``swap_partner``): does the model
  read content or distance?

Every finished block is archived (reported as the ``archive`` partition: a reference holds the
whole history); each block attends the chosen ones only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from toolkit.core.cache import (
    BlockKV,
    FinishedBlock,
    KeepBlocksStrategy,
    Usage,
    require_block_multiples,
    require_non_negative,
    usage,
)
from toolkit.core.spec import ModelSpec
from toolkit.worlds.memory.scenes import Shot, batch_shots, instances_of

PICKS = ("needed", "wrong", "swap")


def swap_partner(shots: list[Shot], block: int, sink_blocks: int = 1,
                 recent_blocks: int = 1) -> tuple[int, int] | None:
    """(needed, wrong) of the swap layout for ``block``: the last mid block that showed its
    sprite and the latest mid block after it whose sprite has another colour; None when the
    block shows a new sprite, has no needed mid block or no such wrong block."""
    inst = instances_of(shots[:block + 1])
    if shots[block].new:
        return None
    colour = _colours(shots[:block + 1], inst)
    mid = range(sink_blocks, block - recent_blocks)
    shown = [b for b in mid if inst[b] == inst[block]]
    if not shown:
        return None
    after = [b for b in range(shown[-1] + 1, block - recent_blocks)
             if colour[inst[b]] != colour[inst[block]]]
    return (shown[-1], after[-1]) if after else None


def _colours(shots: list[Shot], inst: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for s, i in zip(shots, inst, strict=True):
        if s.new:
            out[i] = s.sprite.colour
    return out


@dataclass
class Oracle(KeepBlocksStrategy):
    """Sink + recent + mid blocks chosen from the truth (see the module docstring).

    Attributes:
        sink_frames: the video's first frames, always attended (a multiple of the block).
        recent_frames: the last finished frames, always attended (a multiple of the block).
        needed: mid blocks chosen per block (the last ones that showed its sprite).
        pick: ``needed`` (oracle), ``wrong`` (oracle-wrong) or ``swap``.
        seed: draws the wrong blocks of ``pick=wrong`` (same seed, same blocks).
    """

    sink_frames: int = 4
    recent_frames: int = 4
    needed: int = 2
    pick: str = "needed"
    seed: int = 0
    positions: str = "reindex"
    archive: list[BlockKV] = field(default_factory=list, init=False, repr=False, compare=False)
    partitions: ClassVar[tuple[str, ...]] = ("sink", "mid", "recent", "archive")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "sink_frames", "recent_frames")
        if self.pick not in PICKS:
            raise ValueError(f"pick={self.pick!r}: allowed {list(PICKS)}")
        if self.needed < 1:
            raise ValueError(f"needed={self.needed}: must be >= 1")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")

    def reset(self) -> None:
        super().reset()
        self.archive = []

    def assign(self, index: int, upcoming: int) -> str | None:
        return self.sink_recent(index, upcoming, self.sink_frames, self.recent_frames, "mid")

    def _shots(self, upto: int) -> list[Shot]:
        return batch_shots(self.schedules, upto, self.spec.block_frames, type(self).__name__)

    def chosen(self, index: int) -> list[int]:
        """The mid blocks block ``index`` attends."""
        sink, recent = self.blocks_of(self.sink_frames), self.blocks_of(self.recent_frames)
        mid = list(range(sink, index - recent))
        if not mid:
            return []
        shots = self._shots(index)
        inst = instances_of(shots)
        shown = [b for b in mid if inst[b] == inst[index]][-self.needed:]
        if self.pick == "needed":
            return shown
        if self.pick == "swap":
            pair = swap_partner(shots, index, sink, recent)
            return list(pair) if pair else shown[-1:]
        pool = [b for b in mid if inst[b] != inst[index]]
        rng = np.random.default_rng([self.seed, index])
        k = min(len(shown), len(pool))
        return sorted(rng.choice(pool, size=k, replace=False).tolist()) if k else []

    def begin_block(self, index: int) -> float:
        sink, recent = self.blocks_of(self.sink_frames), self.blocks_of(self.recent_frames)
        keep = set(self.chosen(index))
        self.blocks = []
        for b in self.archive:
            if b.index < sink:
                b.partition = "sink"
            elif b.index >= index - recent:
                b.partition = "recent"
            else:
                b.partition = "mid" if b.index in keep else None
            if b.partition is not None:
                self.blocks.append(b)
        return self.place(index)

    def commit(self, block: FinishedBlock) -> None:
        self.archive.append(block.kv)
        block.kv.partition = "recent"
        self.blocks.append(block.kv)

    def footprint(self) -> dict[str, Usage]:
        held = usage(self.blocks, self.partitions)
        rest = [b for b in self.archive if all(b is not k for k in self.blocks)]
        held["archive"] = Usage(sum(b.tokens for b in rest), sum(b.nbytes for b in rest))
        return held

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pick": self.pick}
