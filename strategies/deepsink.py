"""Deep sink + participative pruning (Deep Forcing, training-free).

A deep sink (about half the window), a recent window, and in between a mid pool whose
tokens are pruned to a budget by their keys' summed affinity to the current queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolkit.core.cache import (
    BlockKV,
    FinishedBlock,
    KeepBlocksStrategy,
    require_block_multiples,
    require_non_negative,
)
from toolkit.core.spec import ModelSpec
from toolkit.registry import STRATEGIES


@STRATEGIES.register("deepsink")
@dataclass
class DeepSink(KeepBlocksStrategy):
    """Sink + recent window at full resolution; the mid pool kept as its most attended tokens.

    Scores are computed at the first denoising step (step 0) of each block: for every mid
    token, the sum over the block's queries of the mean over batch and heads of
    q.k / sqrt(d), summed over layers (so every layer keeps the same tokens). At commit the mid
    pool is pruned to ``mid_tokens``; a block entering the mid pool is scored from the next
    block on, so the pool can exceed the budget by at most one block between two prunings.

    Attributes:
        sink_frames: deep sink frames (Deep Forcing: about half the window).
        recent_frames: recent finished frames kept in full (formerly ``window_frames``).
        mid_tokens: tokens (per layer) kept from the mid pool (formerly ``middle_tokens``).
    """

    sink_frames: int = 4
    recent_frames: int = 4
    mid_tokens: int = 32
    partitions: ClassVar[tuple[str, ...]] = ("sink", "mid", "recent")
    renamed: ClassVar[dict[str, str]] = {"window_frames": "recent_frames",
                                         "middle_tokens": "mid_tokens"}

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "sink_frames", "recent_frames", "mid_tokens")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "recent_frames")

    def reset(self) -> None:
        super().reset()
        self._scores: Tensor | None = None  # (mid tokens,) accumulated at step 0

    def assign(self, index: int, upcoming: int) -> str | None:
        return self.sink_recent(index, upcoming, self.sink_frames, self.recent_frames, "mid")

    def begin_block(self, index: int) -> float:
        self._scores = None
        return super().begin_block(index)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        parts = super().context_parts(layer, q, step, fill)
        mid = [k for b, (k, _) in zip(self.blocks, parts, strict=True) if b.partition == "mid"]
        if step == 0 and not fill and mid:
            keys = torch.cat(mid, dim=2).to(q.dtype)  # (B, H, M, D)
            score = torch.einsum("bhnd,bhmd->m", q, keys) / (q.shape[0] * q.shape[1])
            score = score / math.sqrt(q.shape[-1])
            self._scores = score if self._scores is None else self._scores + score
        return parts

    def commit(self, block: FinishedBlock) -> None:
        scores, self._scores = self._scores, None
        mid = [b for b in self.blocks if b.partition == "mid"]
        if scores is not None and sum(b.tokens for b in mid) > self.mid_tokens:
            self._prune(mid, scores)
        super().commit(block)

    def _prune(self, mid: list[BlockKV], scores: Tensor) -> None:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.topk(self.mid_tokens).indices] = True
        offset, survivors = 0, []
        for b in mid:
            mask = keep[offset:offset + b.tokens]
            offset += b.tokens
            if mask.all():
                continue
            idx = mask.nonzero().flatten()
            b.keys = b.keys.index_select(3, idx.to(b.keys.device))
            b.values = b.values.index_select(3, idx.to(b.values.device))
        for b in self.blocks:
            if b.partition != "mid" or b.tokens > 0:
                survivors.append(b)
        self.blocks = survivors

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["mid_tokens"] = sum(b.tokens for b in self.blocks if b.partition == "mid")
        return out
