"""PackForcing's placer: where the sink and the selected mid blocks sit in time.

The block being denoised and the recent window always sit at their absolute frames. A placer
moves the rest (``PackForcing.positions``):

- ``shift``: mid blocks stay where they were generated; the sink moves (time dims only) to end
  where the oldest kept block begins, closing the gap evictions open;
- ``repack``: the selected mid blocks sit contiguously backwards from the recent window (in
  index order), the sink right before them, every block (per layer under per-layer selection);
- ``absolute``: nothing moves.

Moved keys are rotated from their stored (generation) rotation when read (one rounding,
``toolkit.core.rope.shift_drift``). A placer holds no state: it reads the partitions as
:class:`Held` gives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from toolkit.core.cache import BlockKV
from toolkit.core.rope import Rope, shift_time


@dataclass(frozen=True)
class Held:
    """PackForcing's partitions as the block ``index`` (being made) sees them.

    Attributes:
        sink: sink blocks, oldest first.
        mid: the compressed archive, oldest first.
        recent: recent blocks at full resolution, oldest first.
        index: the block being made.
        block_frames: latent frames per block.
    """

    sink: Sequence[BlockKV]
    mid: Sequence[BlockKV]
    recent: Sequence[BlockKV]
    index: int
    block_frames: int

    @property
    def anchor(self) -> int:
        """The frame where the recent window (or, without one, the current block) begins."""
        return (self.recent[0].index if self.recent else self.index) * self.block_frames


class Placer:
    """Positions of the sink and of the selected mid blocks (``absolute``: nothing moves)."""

    name: ClassVar[str] = "absolute"

    def sink_end(self, held: Held, selected: int) -> int | None:
        """The frame the sink ends at before this block, ``selected`` mid blocks attended
        (None: the sink stays where it is)."""
        return None

    def place_sink(self, held: Held, selected: int) -> None:
        """Move the sink blocks, contiguous, to end at :meth:`sink_end` (moved keys are
        rotated when read)."""
        end = self.sink_end(held, selected) if held.sink else None
        if end is None:
            return
        bf = held.block_frames
        start = end - len(held.sink) * bf  # the blocks in it: it may still fill
        for j, b in enumerate(held.sink):
            b.move_to(float(start + j * bf))

    def mid_parts(self, held: Held, layer: int, chosen: Sequence[BlockKV], rope: Rope
                  ) -> list[tuple[Tensor, Tensor]]:
        """One layer's K/V (B, H, N, D) of the chosen mid blocks, keys rotated where they sit."""
        return [b.layer_kv(layer, rope) for b in chosen]


class Shift(Placer):
    """The sink ends where the oldest kept (mid or recent) block begins; mid blocks stay."""

    name = "shift"

    def sink_end(self, held: Held, selected: int) -> int:
        kept = [*held.mid, *held.recent]
        return (kept[0].index if kept else held.index) * held.block_frames


class Repack(Placer):
    """Selected mid blocks contiguous before the recent window, the sink before them."""

    name = "repack"

    def sink_end(self, held: Held, selected: int) -> int:
        return held.anchor - selected * held.block_frames

    def mid_parts(self, held: Held, layer: int, chosen: Sequence[BlockKV], rope: Rope
                  ) -> list[tuple[Tensor, Tensor]]:
        bf = held.block_frames
        start = held.anchor - len(chosen) * bf
        parts = []
        for j, b in enumerate(chosen):
            k, v = b.stored_layer(layer)  # (a view, or decoded from the stored form)
            parts.append((shift_time(k, rope, start + j * bf - b.t0), v))
        return parts


PLACERS: dict[str, type[Placer]] = {p.name: p for p in (Shift, Repack, Placer)}
POSITIONS = tuple(PLACERS)  # ("shift", "repack", "absolute")
