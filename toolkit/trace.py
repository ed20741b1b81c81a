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
    """

    index: int
    t0: float
    context_tokens: int
    tokens: dict[str, int]
    bytes: dict[str, int]
    seconds: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass
class Trace:
    """Per-block records of one rollout, plus what produced it."""

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
