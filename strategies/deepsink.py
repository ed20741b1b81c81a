"""Deep sink + participative pruning (Deep Forcing, training-free).

A deep sink (about half the window), a recent window, and in between a middle pool whose
tokens are pruned to a budget by their keys' summed affinity to the current queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolkit.cache import (
    BlockKV,
    FinishedBlock,
    KeepBlocksStrategy,
    require_block_multiples,
    require_non_negative,
)
from toolkit.registry import STRATEGIES
from toolkit.spec import ModelSpec


@STRATEGIES.register("deepsink")
@dataclass
class DeepSink(KeepBlocksStrategy):
    """Sink + recent window at full resolution; the middle kept as its most attended tokens.

    Scores are computed at the first denoising step of each block: for every middle token,
    the sum over the block's queries of the mean over batch and heads of q.k / sqrt(d), summed
    over layers (so every layer keeps the same tokens). At commit the middle pool is pruned to
    ``middle_tokens``; a block entering the middle is scored from the next block on, so the
    pool can exceed the budget by at most one block between two prunings.

    Attributes:
        sink_frames: deep sink frames (Deep Forcing: about half the window).
        window_frames: recent finished frames kept in full.
        middle_tokens: tokens (per layer) kept from the middle pool.
    """

    sink_frames: int = 4
    window_frames: int = 4
    middle_tokens: int = 32
    partitions: ClassVar[tuple[str, ...]] = ("sink", "middle", "recent")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(self, "sink_frames", "window_frames", "middle_tokens")

    def check(self, spec: ModelSpec) -> None:
        require_block_multiples(self, spec, "sink_frames", "window_frames")

    def reset(self) -> None:
        super().reset()
        self._scores: Tensor | None = None  # (middle tokens,) accumulated at step 0

    def assign(self, index: int, upcoming: int) -> str | None:
        bf = self.spec.block_frames
        if index < self.sink_frames // bf:
            return "sink"
        return "recent" if index >= upcoming - self.window_frames // bf else "middle"

    def begin_block(self, index: int) -> float:
        self._scores = None
        return super().begin_block(index)

    def context_parts(self, layer: int, q: Tensor, step: int) -> list[tuple[Tensor, Tensor]]:
        parts = super().context_parts(layer, q, step)
        middle = [k for b, (k, _) in zip(self.blocks, parts, strict=True)
                  if b.partition == "middle"]
        if step == 0 and middle:
            keys = torch.cat(middle, dim=2).to(q.dtype)  # (B, H, M, D)
            score = torch.einsum("bhnd,bhmd->m", q, keys) / (q.shape[0] * q.shape[1])
            score = score / math.sqrt(q.shape[-1])
            self._scores = score if self._scores is None else self._scores + score
        return parts

    def commit(self, block: FinishedBlock) -> None:
        scores, self._scores = self._scores, None
        middle = [b for b in self.blocks if b.partition == "middle"]
        if scores is not None and sum(b.tokens for b in middle) > self.middle_tokens:
            self._prune(middle, scores)
        super().commit(block)

    def _prune(self, middle: list[BlockKV], scores: Tensor) -> None:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.topk(self.middle_tokens).indices] = True
        offset, survivors = 0, []
        for b in middle:
            mask = keep[offset:offset + b.tokens]
            offset += b.tokens
            if mask.all():
                continue
            idx = mask.nonzero().flatten()
            b.keys = b.keys.index_select(3, idx.to(b.keys.device))
            b.values = b.values.index_select(3, idx.to(b.values.device))
        for b in self.blocks:
            if b.partition != "middle" or b.tokens > 0:
                survivors.append(b)
        self.blocks = survivors

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["middle_tokens"] = sum(b.tokens for b in self.blocks if b.partition == "middle")
        return out
