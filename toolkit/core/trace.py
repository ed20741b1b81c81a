"""The Trace: what a rollout did, block by block (memory, positions, time)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BlockRecord:
    """One generated block.

    Attributes:
        index: block number; frames ``[index * block_frames, (index + 1) * block_frames)``.
        t0: temporal position the block was generated at.
        context_tokens: tokens of cached context attended (per layer).
        tokens: tokens held per partition after the block was committed.
        bytes: exact bytes held per partition after the block was committed.
        seconds: wall time per section (denoise, cache_update, compression, ...).
        info: strategy-specific facts (context blocks, selections, ...).
        start_bytes: bytes held when the block began.
        own_bytes: the block's own K/V (all layers), recorded in its cache-fill pass.
        peak_bytes: the most bytes the KV path had alive during the block (memory accounting
            with ``track=True``; None otherwise).
        attended: per layer, the finished blocks the block attended, in full or compressed
            form (``CacheStrategy.attended``); None when the strategy does not say.
    """

    index: int
    t0: float
    context_tokens: int
    tokens: dict[str, int]
    bytes: dict[str, int]
    seconds: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    start_bytes: int = 0
    own_bytes: int = 0
    peak_bytes: int | None = None
    attended: list[list[int]] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def needed_bytes(self) -> int:
        """The KV the block works with: held at its start plus its own K/V."""
        return self.start_bytes + self.own_bytes

    @property
    def ratio(self) -> float | None:
        """Peak working bytes over the KV the block needs (tracked accounting)."""
        if self.peak_bytes is None or not self.needed_bytes:
            return None
        return self.peak_bytes / self.needed_bytes


@dataclass
class Trace:
    """Per-block records of one rollout, plus what produced it (``strategy``: its registry
    name, or the ``module.Class`` path of an unregistered one)."""

    strategy: str
    block_frames: int
    blocks: list[BlockRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def curve(self, key: str) -> list[float]:
        """A per-block series: ``bytes``/``tokens`` (totals), ``context_tokens``, or a section."""
        if key in ("bytes", "tokens"):
            return [float(sum(getattr(b, key).values())) for b in self.blocks]
        if key == "context_tokens":
            return [float(b.context_tokens) for b in self.blocks]
        return [b.seconds.get(key, 0.0) for b in self.blocks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        data = json.loads(Path(path).read_text())
        data["blocks"] = [BlockRecord(**b) for b in data["blocks"]]
        return cls(**data)
