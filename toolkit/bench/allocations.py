"""Live tensor bytes, counted op by op: peak working memory on any device, meta included.

``LiveBytes`` is a ``TorchDispatchMode``: every tensor an op returns whose storage is new is
counted until that storage is freed (a weak-reference finaliser), so ``peak`` is the most bytes
alive at once among the tensors made while the mode was on. Views, in-place results and
``out=`` writes share a storage already known and add nothing; tensors made before the mode,
or outside it, are never counted. On meta tensors it measures what a run would allocate
without allocating it (``toolkit.bench.kv`` drives a strategy at the real model's sizes so).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    """Bytes of storages made inside the mode: ``live`` now, ``peak`` since ``reset_peak``."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known: set[int] = set()  # storages seen: counted ones and outside ones

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for t in _tensors((*args, *kwargs.values())):
            storage = t.untyped_storage()
            if storage._cdata not in self._known:  # made outside: never counted
                self._known.add(storage._cdata)
                weakref.finalize(storage, self._known.discard, storage._cdata)
        out = func(*args, **kwargs)
        for t in _tensors(out if isinstance(out, tuple | list) else (out,)):
            self._count(t)
        return out

    def _count(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._known:
            return
        self._known.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._known.discard(key)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes alive now."""
        self.peak = self.live


def _tensors(items: tuple | list) -> Iterator[torch.Tensor]:
    """The tensors among an op's arguments or results (aten nests lists one level deep)."""
    for x in items:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, tuple | list):
            yield from (y for y in x if isinstance(y, torch.Tensor))
