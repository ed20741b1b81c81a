"""The cache-strategy contract: what a strategy stores, answers and accounts for.

A strategy decides, for every layer, what the current block attends to and at which positions.
Keys are stored already rotated at the position their block was generated at; moving a block
(``BlockKV.move_to``) only records its new start ``t0``, and ``BlockKV.layer_kv`` rotates the
time dims by the difference when the layer is read: absolute, re-indexed and incrementally
shifted positions all work from the same storage, and a block moved a hundred times is still
rounded once (bf16 keys moved in place drift: ``toolkit.core.rope.shift_drift``).

``CacheStrategy`` is the full contract (five methods). ``KeepBlocksStrategy`` is the narrow
template for strategies that keep some finished blocks at full resolution: write ``assign``.
What a strategy holds (``BlockKV``, ``FinishedBlock``) and how it is counted (``Usage``,
``usage``) live in ``toolkit.core.blocks`` and are importable from here.
A strategy hands the harness its context as a list of parts (``context_parts``, views of what
it holds); the harness copies them, one layer at a time, into one reused buffer beside the
block's own K/V, so no strategy needs a concatenated copy of its cache.

Per block the harness (``toolkit.core.rollout.BlockDriver``) calls ``begin_block``; then
``context_parts(layer, q, step, fill)`` for every layer in every denoising step
(``step = 0 .. steps - 1``, ``fill=False``) and once more per layer in the cache-fill pass
(``fill=True``: the clean block at timestep 0, whose K/V are recorded; ``step`` is then
``steps``, the ``fill_step``); then ``commit`` and ``footprint``. Step 0 is always the block's
first request. A strategy written before the ``fill`` flag (``context(layer, q, step)``) still
runs, with a FutureWarning saying what to add (``toolkit.core.contract``).

Partition names, one vocabulary: ``sink`` (the video's first frames, never evicted; moved or
not), ``mid`` (between sink and recent: pruned, compressed or selected), ``recent`` (the last
finished frames at full resolution; their count is ``recent_frames``), ``pending``
(compressed copies of recent blocks); ``window`` keeps only ``recent``, sized by its span
``window_frames``. Hyperparameters renamed for this (``window_frames`` -> ``recent_frames``,
...) are listed in a strategy's ``renamed`` and still accepted, with a FutureWarning
(``toolkit.core.contract.renamed_params``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from toolkit.core.blocks import BlockKV, FinishedBlock, Usage, usage
from toolkit.core.contract import StrategyType, ask_context, check_contract
from toolkit.core.spec import ModelSpec
from toolkit.core.timing import Timer

POSITIONS = ("absolute", "reindex", "interpolate")
__all__ = ["POSITIONS", "BlockKV", "CacheStrategy", "FinishedBlock", "KeepBlocksStrategy",
           "Usage", "require_block_multiples", "require_non_negative", "usage"]


class CacheStrategy(ABC, metaclass=StrategyType):
    """Base of every cache strategy.

    The harness calls, per rollout: ``bind`` once; then per block ``begin_block``,
    ``context_parts`` (per layer, per denoising step ``0 .. steps - 1`` with ``fill=False``,
    then in the cache-fill pass with ``fill=True``), ``commit`` and ``footprint`` (see the
    module docstring). ``context_parts`` defaults to ``[context(...)]``: a strategy writes one
    of the two. Subclasses are dataclasses whose fields are the strategy's hyperparameters,
    validated in ``__post_init__`` (and against the model in ``check``).
    """

    name: ClassVar[str] = ""
    # not held state
    shared: ClassVar[tuple[str, ...]] = ("model", "spec", "rope", "timer", "schedules")
    renamed: ClassVar[dict[str, str]] = {}  # old hyperparameter name -> new (still accepted)
    #: the prompt schedule of each video of the rollout (``toolkit.core.schedule.PromptSchedule``),
    #: set by the harness before ``bind``. Only reference strategies that are allowed to know
    #: a world's truth (e.g. the memory world's oracle) read it; a contender must not.
    schedules: ClassVar[tuple[Any, ...]] = ()

    def bind(self, model: Any, timer: Timer | None = None) -> None:
        """Attach to a model for a new rollout and forget any previous state."""
        check_contract(self)
        self.check(model.spec)
        self.model, self.spec, self.rope = model, model.spec, model.rope
        self.timer = timer or Timer()
        self.reset()

    def check(self, spec: ModelSpec) -> None:
        """Raise ValueError if the hyperparameters cannot work with this model."""

    def attended(self) -> list[list[int]] | None:
        """Per layer, the finished blocks (indices) the block being made attends, in full or
        compressed form; recorded by the harness as a typed fact of the Trace
        (``BlockRecord.attended``) for selection measures. None: the strategy does not say."""
        return None

    def reset(self) -> None:
        """Clear per-rollout state (called by ``bind``)."""

    def blocks_of(self, frames: int) -> int:
        """Blocks holding ``frames`` latent frames (``ModelSpec.blocks_of``)."""
        return self.spec.blocks_of(frames)

    @abstractmethod
    def begin_block(self, index: int) -> float:
        """Prepare the context for block ``index``; return the block's temporal start position."""

    @property
    def fill_step(self) -> int:
        """The ``step`` the cache-fill pass carries (``steps``); tell that pass by ``fill``."""
        return self.model.sampler.steps

    def context(self, layer: int, q: Tensor, step: int, fill: bool = False
                ) -> tuple[Tensor, Tensor]:
        """K and V (B, H, M, D) attended by layer ``layer``.

        Default: the parts of ``context_parts`` concatenated (a copy; the harness reads the
        parts). A strategy writes one of the two.

        Args:
            layer: the transformer layer asking.
            q: the block's queries (B, H, N, D) at this layer.
            step: the denoising step, 0 .. steps - 1 (``fill_step`` in the cache-fill pass).
            fill: True in the cache-fill pass (the clean block at timestep 0; its K/V are
                recorded and handed to ``commit``), False in the denoising steps.
        """
        if type(self).context_parts is CacheStrategy.context_parts:
            raise NotImplementedError(f"{type(self).__name__} writes neither context nor "
                                      "context_parts: a strategy writes one of the two")
        parts = self.context_parts(layer, q, step, fill)
        if not parts:
            empty = q.new_zeros((q.shape[0], q.shape[1], 0, q.shape[3]))
            return empty, empty
        return torch.cat([k for k, _ in parts], dim=2), torch.cat([v for _, v in parts], dim=2)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        """The context as a list of (K, V) parts (B, H, M_i, D), attended in this order.

        Parts may be views of what the strategy holds (no copy): the harness copies them, one
        layer at a time, into its own buffer. Arguments as ``context``. Default:
        ``[context(layer, q, step, fill)]``.
        """
        return [ask_context(self.context, layer, q, step, fill)]

    @abstractmethod
    def commit(self, block: FinishedBlock) -> None:
        """Take in a finished block (its latents and cache-fill K/V)."""

    @abstractmethod
    def footprint(self) -> dict[str, Usage]:
        """Tokens and bytes held per partition, from the tensors actually held."""

    def info(self) -> dict[str, Any]:
        """Per-block facts for the Trace (context blocks, positions, selections...)."""
        return {}

    def reencode(self, held: BlockKV, block: FinishedBlock) -> BlockKV | None:
        """A held stand-in (compressed or pruned: fewer tokens than its block) made again from
        ``block`` (its latents, its full K/V rebuilt under ``block.cond``, rotated at
        ``held.rotated_at``), for the harness's re-cache at prompt switches
        (``toolkit.core.recache``); None (the default): the strategy cannot, the stand-in is
        kept as it is."""
        return None

    def provenance(self) -> dict[str, Any]:
        """Files the strategy's numbers depend on (e.g. trained weights and their sha256)."""
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
    """Raise ValueError naming the first field that is not a multiple of the block size
    (``ModelSpec.check_blocks``)."""
    for name in names:
        spec.check_blocks(name, getattr(obj, name))


@dataclass
class KeepBlocksStrategy(CacheStrategy):
    """Template: keep some finished blocks at full resolution, evict the rest.

    Subclasses write ``assign(index, upcoming)``: the partition name of finished block
    ``index`` while block ``upcoming`` is generated, or None to evict it (for good).

    Attributes:
        positions: ``absolute`` (each block at its frame index), ``reindex`` (kept blocks
            packed contiguously from 0, the current block right after them) or ``interpolate``
            (as ``reindex``, but once the packed history outgrows the training length its block
            starts are squeezed so that history and current block fit inside it: position
            interpolation, which keeps every position in the trained range whatever the
            context's length).
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

    def sink_recent(self, index: int, upcoming: int, sink_frames: int, recent_frames: int,
                    mid: str | None = None) -> str | None:
        """The sink + recent-window assignment the built-in templates share.

        ``sink`` for the blocks of the first ``sink_frames``; ``recent`` for the blocks
        holding the last ``recent_frames`` finished frames before block ``upcoming`` (a
        partly covered block counts); otherwise ``mid`` (None: evicted).
        """
        if index < self.blocks_of(sink_frames):
            return "sink"
        return "recent" if index >= upcoming - self.blocks_of(recent_frames) else mid

    def reset(self) -> None:
        self.blocks = []

    def begin_block(self, index: int) -> float:
        return self.place(index)

    def place(self, index: int) -> float:
        """Move kept blocks to their positions for block ``index``; return its start.

        ``absolute``: every block at its frame index. ``reindex``: kept blocks packed from 0
        in order (each as many frames as it holds), the current block right after them.
        ``interpolate``: the ``reindex`` starts scaled by ``(train - bf) / packed`` once the
        packed history is longer than ``train - bf`` frames (``train``: the spec's training
        length), so the current block starts at ``train - bf``.
        """
        if self.positions == "absolute":
            return float(index * self.spec.block_frames)
        starts, tpf = [0], self.spec.tokens_per_frame
        for b in self.blocks:
            starts.append(starts[-1] + b.tokens // tpf)
        room = self.spec.train_frames - self.spec.block_frames
        scale = room / starts[-1] if self.positions == "interpolate" and starts[-1] > room else 1
        for b, start in zip(self.blocks, starts, strict=False):
            b.move_to(float(start * scale))
        return float(starts[-1] * scale)

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        if type(self).context is not KeepBlocksStrategy.context:  # a subclass's own context
            return [ask_context(self.context, layer, q, step, fill)]
        return self._block_parts(layer, q)

    def _block_parts(self, layer: int, q: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each kept block's K/V of one layer, rotated where it sits, in block order."""
        parts = []
        for b in self.blocks:
            k, v = b.layer_kv(layer, self.rope)
            if k.shape[0] != q.shape[0]:
                k, v = k.expand(q.shape[0], *k.shape[1:]), v.expand(q.shape[0], *v.shape[1:])
            parts.append((k, v))
        return parts

    def context(self, layer: int, q: Tensor, step: int, fill: bool = False
                ) -> tuple[Tensor, Tensor]:
        """The context of one layer concatenated (a copy; the harness reads the parts)."""
        own = type(self).context is not KeepBlocksStrategy.context  # called as super().context
        parts = self._block_parts(layer, q) if own else \
            ask_context(self.context_parts, layer, q, step, fill)
        if not parts:
            empty = q.new_zeros((q.shape[0], q.shape[1], 0, q.shape[3]),
                                dtype=self.spec.torch_dtype)
            return empty, empty
        return torch.cat([k for k, _ in parts], dim=2), torch.cat([v for _, v in parts], dim=2)

    def commit(self, block: FinishedBlock) -> None:
        self.blocks.append(block.kv)
        kept = []
        for b in self.blocks:
            b.partition = self.assign(b.index, block.index + 1)
            if b.partition is not None:
                kept.append(b)
        self.blocks = kept

    def footprint(self) -> dict[str, Usage]:
        return usage(self.blocks, self.partitions)

    def attended(self) -> list[list[int]] | None:
        return [[b.index for b in self.blocks]] * self.spec.num_layers

    def info(self) -> dict[str, Any]:
        return {"context_blocks": [b.index for b in self.blocks],
                "context_t0": [b.t0 for b in self.blocks]}

