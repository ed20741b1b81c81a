"""Distance-aware consolidation: one bounded cache as a temporal hierarchy (after FadeMem, Lu et
al. 2026: new history enters fine-grained, older adjacent entries are merged step by step under
a power-law allocation of the age, dense near and sparse far, without training).

The cache holds, oldest first: an optional ``sink`` (the video's first frames at full
resolution, never merged), ``mid`` entries (each a run of consecutive finished blocks, stored
as a few pooled latent frames) and the ``recent`` blocks at full resolution. A block leaving
the recent window enters ``mid`` as an entry of its own, at full resolution. While the cache
holds more than ``budget_frames`` frames' worth of tokens, the two adjacent mid entries with
the highest ``density * age ** exponent`` are merged: their frames (spatially pooled to
``pool_space`` cells first, where set) are concatenated and pooled in time by two, each pooled
frame the average of the two it replaces weighted by the original frames they cover
(``density``: stored frames per original frame; ``age``: frames from the pair's centre to the
block being made). At equilibrium the density falls as a power of the age: ``exponent`` 0
coarsens the whole history evenly; larger values keep near history finer and far history
coarser.

Keys are pooled un-rotated (the rotation at their stored positions removed) and rotated again
at the merged entry's: consecutive frames in time, the centres of the pooled cells in space.
``positions``: ``repack`` (as PackForcing's repack: the recent blocks and the block being made
at their frame index, the mid entries packed contiguously backwards from the recent window,
each as many frames as it stores, and the sink before them) or ``absolute`` (each entry
centred on the frames it covers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.core.cache import (
    BlockKV,
    CacheStrategy,
    FinishedBlock,
    Usage,
    require_block_multiples,
    require_non_negative,
    usage,
)
from toolkit.core.rope import rotate_at
from toolkit.core.spec import ModelSpec
from toolkit.registry import STRATEGIES

POSITIONS = ("repack", "absolute")


@dataclass
class Entry:
    """A run of consecutive finished blocks ``first .. last`` held as ``len(spans)`` stored
    frames on a ``grid`` of token rows x columns (``cell``: the pooled cell side, 1 = full
    resolution); ``spans``: original frames each stored frame covers."""

    kv: BlockKV
    first: int
    last: int
    spans: list[float]
    cell: int = 1

    @property
    def frames(self) -> int:
        return len(self.spans)

    @property
    def span(self) -> float:
        return float(sum(self.spans))


def positions(spec: ModelSpec, t0: float, frames: int, cell: int) -> Tensor:
    """RoPE positions (frames * rows * cols, 3): consecutive frames from ``t0``; rows and
    columns at the centres of ``cell`` x ``cell`` token cells (the token grid when 1)."""
    gh, gw = spec.grid
    axes = [torch.arange(frames, dtype=torch.float64) + t0]
    for n in (gh // cell, gw // cell):
        axes.append(torch.arange(n, dtype=torch.float64) * cell + (cell - 1) / 2)
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


@STRATEGIES.register("fade")
@dataclass
class Fade(CacheStrategy):
    """A fixed token budget: sink + mid entries merged under a power-law of age + recent.

    Attributes:
        budget_frames: frames' worth of tokens (x tokens per frame, per layer) the cache may
            hold after each block: sink, mid and recent together; more than
            ``sink_frames + recent_frames``.
        sink_frames: first frames kept at full resolution, never merged (block multiple).
        recent_frames: newest finished frames kept at full resolution (block multiple).
        exponent: power of the age in the merge order (>= 0; 0: even coarsening).
        pool_space: side of the square token cell a merged entry is pooled to in space (1:
            time only); divides the token grid.
        positions: ``repack`` | ``absolute``.
    """

    budget_frames: int = 16
    sink_frames: int = 0
    recent_frames: int = 4
    exponent: float = 1.0
    pool_space: int = 1
    positions: str = "repack"
    partitions: ClassVar[tuple[str, ...]] = ("sink", "mid", "recent")

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}: allowed {list(POSITIONS)}")
        require_non_negative(self, "budget_frames", "sink_frames", "recent_frames", "exponent")
        if self.budget_frames <= self.sink_frames + self.recent_frames:
            raise ValueError(f"budget_frames={self.budget_frames}: must exceed sink_frames + "
                             f"recent_frames = {self.sink_frames + self.recent_frames} (room "
                             "for the merged history)")
        if self.pool_space < 1:
            raise ValueError(f"pool_space={self.pool_space}: must be >= 1")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")
        gh, gw = spec.grid
        if gh % self.pool_space or gw % self.pool_space:
            raise ValueError(f"pool_space={self.pool_space}: must divide the token grid "
                             f"{gh}x{gw}")

    def reset(self) -> None:
        self._sink, self._mid, self._recent = [], [], []
        self._merges, self._index = 0, -1

    @property
    def budget(self) -> int:
        """Tokens per layer the cache may hold."""
        return self.budget_frames * self.spec.tokens_per_frame

    # -- per block ------------------------------------------------------------------------
    def begin_block(self, index: int) -> float:
        self._index, bf = index, self.spec.block_frames
        for b in self._recent:
            b.move_to(float(b.index * bf))
        if self.positions == "absolute":
            for e in self._mid:
                e.kv.move_to(e.first * bf + (e.span - e.frames) / 2)
            for b in self._sink:
                b.move_to(float(b.index * bf))
        else:  # packed backwards from the recent window (or the block itself)
            end = (self._recent[0].index if self._recent else index) * bf
            for e in reversed(self._mid):
                end -= e.frames
                e.kv.move_to(float(end))
            for b in reversed(self._sink):
                end -= bf
                b.move_to(float(end))
        return float(index * bf)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        held = [*self._sink, *(e.kv for e in self._mid), *self._recent]
        return [b.layer_kv(layer, self.rope) for b in held]

    def commit(self, block: FinishedBlock) -> None:
        kv, bf = block.kv, self.spec.block_frames
        if block.index < self.blocks_of(self.sink_frames):
            kv.partition = "sink"
            self._sink.append(kv)
        else:
            kv.partition = "recent"
            self._recent.append(kv)
        while len(self._recent) > self.blocks_of(self.recent_frames):
            old = self._recent.pop(0)
            old.partition = "mid"
            self._mid.append(Entry(old, old.index, old.index, [1.0] * bf))
        self._consolidate(block.index + 1)

    def _held(self) -> int:
        return sum(b.tokens for b in (*self._sink, *(e.kv for e in self._mid), *self._recent))

    def _consolidate(self, upcoming: int) -> None:
        """Merge mid entries, highest ``density * age ** exponent`` first, until the cache fits
        the budget."""
        now = upcoming * self.spec.block_frames
        while self._held() > self.budget and self._mid:
            if len(self._mid) == 1:
                if self._mid[0].frames == 1 and self._mid[0].cell == self.pool_space:
                    break  # nothing left to merge (the budget check makes this unreachable)
                self._mid[0] = self._merge([self._mid[0]])
                continue
            scores = []
            for i in range(len(self._mid) - 1):
                a, b = self._mid[i], self._mid[i + 1]
                frames, span = a.frames + b.frames, a.span + b.span
                centre = a.first * self.spec.block_frames + span / 2
                scores.append(frames / span * max(now - centre, 1.0) ** self.exponent)
            i = max(range(len(scores)), key=lambda j: (scores[j], -j))  # ties: the oldest
            self._mid[i:i + 2] = [self._merge(self._mid[i:i + 2])]

    def _merge(self, entries: list[Entry]) -> Entry:
        """One entry of ``entries`` (adjacent, oldest first): spatially pooled to
        ``pool_space`` cells, frames concatenated and pooled in time by two (span-weighted)."""
        self._merges += 1
        spans = [s for e in entries for s in e.spans]
        out_spans = [sum(spans[i:i + 2]) for i in range(0, len(spans), 2)]
        first, cell = entries[0], self.pool_space
        t0 = first.kv.t0
        if first.kv.is_meta:  # accounting: the merged size, no values
            gh, gw = (n // cell for n in self.spec.grid)
            shape = (*first.kv.keys.shape[:3], len(out_spans) * gh * gw, self.spec.head_dim)
            keys = torch.empty(shape, dtype=first.kv.dtype, device="meta")
            kv = BlockKV(first.first, keys, torch.empty_like(keys), t0, "mid")
            return Entry(kv, first.first, entries[-1].last, out_spans, cell)
        weights = torch.tensor(spans, dtype=torch.float32)
        keys, values = [], []
        pos = positions(self.spec, t0, len(out_spans), cell)
        for layer in range(self.spec.num_layers):
            ks, vs = [], []
            for e in entries:
                k, v = e.kv.stored_layer(layer)  # (B, H, frames * rows * cols, D)
                k = rotate_at(k, self.rope, positions(self.spec, e.kv.rotated_at, e.frames,
                                                    e.cell), inverse=True)
                ks.append(self._cells(k.float(), e))
                vs.append(self._cells(v.float(), e))
            keys.append(rotate_at(_pool_time(torch.cat(ks, 2), weights), self.rope, pos))
            values.append(_pool_time(torch.cat(vs, 2), weights))
        dtype = first.kv.dtype
        kv = BlockKV(first.first, torch.stack(keys).to(dtype), torch.stack(values).to(dtype),
                     t0, "mid")
        return Entry(kv, first.first, entries[-1].last, out_spans, cell)

    def _cells(self, x: Tensor, e: Entry) -> Tensor:
        """x (B, H, frames * rows * cols, D) of entry e as (B, H, frames, rows', cols', D) on
        the ``pool_space`` cell grid."""
        gh, gw = self.spec.grid
        x = x.unflatten(2, (e.frames, gh // e.cell, gw // e.cell))
        r = self.pool_space // e.cell
        if r == 1:
            return x
        b, h, f, rows, cols, d = x.shape
        flat = x.permute(0, 1, 2, 5, 3, 4).reshape(-1, d, rows, cols)
        pooled = F.avg_pool2d(flat, r)  # (B * H * f, D, rows / r, cols / r)
        return pooled.reshape(b, h, f, d, rows // r, cols // r).permute(0, 1, 2, 4, 5, 3)

    # -- accounting -----------------------------------------------------------------------
    def footprint(self) -> dict[str, Usage]:
        return usage([*self._sink, *(e.kv for e in self._mid), *self._recent], self.partitions)

    def attended(self) -> list[list[int]] | None:
        covered = [b.index for b in self._sink]
        covered += [i for e in self._mid for i in range(e.first, e.last + 1)]
        covered += [b.index for b in self._recent]
        return [covered] * self.spec.num_layers

    def info(self) -> dict[str, Any]:
        return {"sink": [b.index for b in self._sink],
                "mid": [[e.first, e.last] for e in self._mid],
                "mid_frames": [e.frames for e in self._mid],
                "mid_t0": [e.kv.t0 for e in self._mid],
                "recent": [b.index for b in self._recent], "merges": self._merges}


def _pool_time(x: Tensor, weights: Tensor) -> Tensor:
    """Pool x (B, H, F, rows, cols, D) by two along F, each pair averaged with the weights
    (F,) of its frames (an odd last frame alone); flattened to (B, H, F' * rows * cols, D)."""
    f = x.shape[2]
    w = weights.to(x.device).view(1, 1, f, 1, 1, 1)
    if f % 2:
        x = torch.cat([x, torch.zeros_like(x[:, :, :1])], dim=2)
        w = torch.cat([w, torch.zeros_like(w[:, :, :1])], dim=2)
    num = (x * w).unflatten(2, (-1, 2)).sum(3)
    den = w.unflatten(2, (-1, 2)).sum(3)
    return (num / den).flatten(2, 4)
