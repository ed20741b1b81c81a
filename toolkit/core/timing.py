"""Exclusive section timing: a nested section's time is not counted in its parent."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Timer:
    """Accumulates wall time per named section; nested sections are exclusive.

    Args:
        cuda: synchronise CUDA before reading the clock (true timings on a GPU).
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [start, child time]

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        frame = [self._now(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = self._now() - frame[0]
            self.totals[name] += elapsed - frame[1]
            if self._stack:
                self._stack[-1][1] += elapsed

    def take(self) -> dict[str, float]:
        """Return the totals so far and start again from zero."""
        out, self.totals = dict(self.totals), defaultdict(float)
        return out
