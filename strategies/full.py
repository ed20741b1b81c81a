"""Full history: every finished block stays in the cache (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.core.cache import KeepBlocksStrategy
from toolkit.registry import STRATEGIES


@STRATEGIES.register("full")
@dataclass
class Full(KeepBlocksStrategy):
    """Attend to the whole history; KV memory grows linearly with the video."""

    def assign(self, index: int, upcoming: int) -> str | None:
        return "cache"
