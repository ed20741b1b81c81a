"""The cache-strategy contract: what a strategy stores, answers and accounts for.

A strategy decides, for every layer, what the current block attends to and at which positions.
Keys are stored already rotated at their block's temporal start ``t0``; moving a block to a new
position is one more rotation of the time dims (``BlockKV.move_to``), so absolute, re-indexed
and incrementally shifted positions all work from the same storage.

``CacheStrategy`` is the full contract (five methods). ``KeepBlocksStrategy`` is the narrow
template for strategies that keep some finished blocks at full resolution: write ``assign``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolkit.rope import Rope
from toolkit.spec import ModelSpec
from toolkit.timing import Timer

POSITIONS = ("absolute", "reindex")


@dataclass
class BlockKV:
    """Per-layer K/V of one cached block (or of a compressed stand-in for one).

    Attributes:
        index: the block's number in the video.
        keys: (L, B, H, N, D), rotated at temporal start ``t0``.
        values: (L, B, H, N, D).
        t0: temporal position (in latent frames) the keys are rotated at.
        partition: name of the partition holding it (for accounting).
    """

    index: int
    keys: Tensor
    values: Tensor
    t0: float
    partition: str = "cache"

    @property
    def tokens(self) -> int:
        return self.keys.shape[-2]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def move_to(self, t0: float, rope: Rope) -> None:
        """Re-position the block at temporal start t0 by rotating its keys' time dims."""
        from toolkit.rope import shift_time

        if t0 != self.t0:
            self.keys = shift_time(self.keys, rope, t0 - self.t0)
            self.t0 = t0


@dataclass
class FinishedBlock:
    """A block the harness has finished: its clean latents and its cache-fill K/V.

    ``cond`` is the conditioning the block was made under (``model.encode_prompt`` of the
    prompt in force at its first frame, see ``toolkit.schedule``), for strategies that run more
    tokens through the model (e.g. compressed stand-ins); None when unknown.
    """

    index: int
    latents: Tensor  # (B, C, F, H, W) clean
    kv: BlockKV  # rotated at the position it was generated at
    cond: Tensor | None = None  # (B, L, C)


@dataclass
class Usage:
    """Tokens and exact bytes held by one partition."""

    tokens: int = 0
    bytes: int = 0


class CacheStrategy(ABC):
    """Base of every cache strategy.

    The harness calls, per rollout: ``bind`` once; then per block ``begin_block``,
    ``context`` (per layer, per denoising step and in the cache-fill pass), ``commit`` and
    ``footprint``. Subclasses are dataclasses whose fields are the strategy's hyperparameters,
    validated in ``__post_init__`` (and against the model in ``check``).
    """

    name: ClassVar[str] = ""
    shared: ClassVar[tuple[str, ...]] = ("model", "spec", "rope", "timer")  # not held state

    def bind(self, model: Any, timer: Timer | None = None) -> None:
        """Attach to a model for a new rollout and forget any previous state."""
        self.check(model.spec)
        self.model, self.spec, self.rope = model, model.spec, model.rope
        self.timer = timer or Timer()
        self.reset()

    def check(self, spec: ModelSpec) -> None:
        """Raise ValueError if the hyperparameters cannot work with this model."""

    def reset(self) -> None:
        """Clear per-rollout state (called by ``bind``)."""

    @abstractmethod
    def begin_block(self, index: int) -> float:
        """Prepare the context for block ``index``; return the block's temporal start position."""

    @abstractmethod
    def context(self, layer: int, q: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """K and V (B, H, M, D) attended by layer ``layer``; q (B, H, N, D) is the block's query."""

    @abstractmethod
    def commit(self, block: FinishedBlock) -> None:
        """Take in a finished block (its latents and cache-fill K/V)."""

    @abstractmethod
    def footprint(self) -> dict[str, Usage]:
        """Tokens and bytes held per partition, from the tensors actually held."""

    def info(self) -> dict[str, Any]:
        """Per-block facts for the Trace (context blocks, positions, selections...)."""
        return {}

    def hparams(self) -> dict[str, Any]:
        """The strategy's hyperparameters (its dataclass fields)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def require_non_negative(obj: Any, *names: str) -> None:
    """Raise ValueError naming the first of the fields ``names`` that is negative."""
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ValueError(f"{name}={value}: must be >= 0")


def require_block_multiples(obj: Any, spec: ModelSpec, *names: str) -> None:
    """Raise ValueError naming the first field that is not a multiple of the block size."""
    bf = spec.block_frames
    for name in names:
        value = getattr(obj, name)
        if value % bf:
            raise ValueError(f"{name}={value}: must be a multiple of the block size {bf} "
                             f"(e.g. {value // bf * bf} or {(value // bf + 1) * bf})")


def gather(blocks: Iterable[BlockKV], like: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Concatenate blocks' K/V along tokens: (L, B, H, sum N, D) each."""
    blocks = list(blocks)
    if not blocks:
        if like is None:
            raise ValueError("gather of no blocks needs a template tensor")
        empty = like.new_zeros((*like.shape[:3], 0, like.shape[-1]))
        return empty, empty
    if len(blocks) == 1:
        return blocks[0].keys, blocks[0].values
    return (torch.cat([b.keys for b in blocks], dim=3),
            torch.cat([b.values for b in blocks], dim=3))


def usage(blocks: Iterable[BlockKV], partitions: Iterable[str] = ()) -> dict[str, Usage]:
    """Per-partition usage of blocks; listed partitions appear even when empty."""
    out = {p: Usage() for p in partitions}
    for b in blocks:
        u = out.setdefault(b.partition, Usage())
        u.tokens += b.tokens
        u.bytes += b.nbytes
    return out


@dataclass
class KeepBlocksStrategy(CacheStrategy):
    """Template: keep some finished blocks at full resolution, evict the rest.

    Subclasses write ``assign(index, upcoming)``: the partition name of finished block
    ``index`` while block ``upcoming`` is generated, or None to evict it (for good).

    Attributes:
        positions: ``absolute`` (each block at its frame index) or ``reindex`` (kept blocks
            packed contiguously from 0, the current block right after them).
    """

    positions: str = "absolute"
    blocks: list[BlockKV] = field(default_factory=list, init=False, repr=False, compare=False)
    partitions: ClassVar[tuple[str, ...]] = ("cache",)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}: allowed {list(POSITIONS)}")

    @abstractmethod
    def assign(self, index: int, upcoming: int) -> str | None:
        """Partition of finished block ``index`` while block ``upcoming`` is generated."""

    def reset(self) -> None:
        self.blocks, self._k, self._v = [], None, None

    def begin_block(self, index: int) -> float:
        start = self.place(index)
        self._k, self._v = gather(self.blocks, like=self._template())
        return start

    def place(self, index: int) -> float:
        """Move kept blocks to their positions for block ``index``; return its start.

        ``absolute``: every block at its frame index. ``reindex``: kept blocks packed from 0
        (moved incrementally, one time-dim rotation per change), the current block after them.
        """
        bf = self.spec.block_frames
        if self.positions == "absolute":
            return float(index * bf)
        for i, b in enumerate(self.blocks):
            b.move_to(float(i * bf), self.rope)
        return float(len(self.blocks) * bf)

    def _template(self) -> Tensor:
        s = self.spec
        return torch.empty((s.num_layers, 1, s.num_heads, 0, s.head_dim), dtype=s.torch_dtype)

    def context(self, layer: int, q: Tensor, step: int) -> tuple[Tensor, Tensor]:
        k, v = self._k[layer], self._v[layer]
        if k.shape[0] != q.shape[0] or k.device != q.device:  # empty template: match the batch
            k = k.expand(q.shape[0], *k.shape[1:]).to(q.device)
            v = v.expand(q.shape[0], *v.shape[1:]).to(q.device)
        return k, v

    def commit(self, block: FinishedBlock) -> None:
        self._k = self._v = None  # release the gathered copy
        self.blocks.append(block.kv)
        kept = []
        for b in self.blocks:
            b.partition = self.assign(b.index, block.index + 1)
            if b.partition is not None:
                kept.append(b)
        self.blocks = kept

    def footprint(self) -> dict[str, Usage]:
        return usage(self.blocks, self.partitions)

    def info(self) -> dict[str, Any]:
        return {"context_blocks": [b.index for b in self.blocks],
                "context_t0": [b.t0 for b in self.blocks]}
