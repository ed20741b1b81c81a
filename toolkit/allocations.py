"""Live tensor bytes, counted op by op: peak working memory on any device, meta included.

``LiveBytes`` is a ``TorchDispatchMode``: every tensor an op returns whose storage is new is
counted until that storage is freed (a weak-reference finaliser), so ``peak`` is the most bytes
alive at once among the tensors made while the mode was on. Views, in-place results and
``out=`` writes share a storage already known and add nothing; tensors made before the mode,
or outside it, are never counted. On meta tensors it measures what a run would allocate
without allocating it (``toolkit.memory`` drives a strategy at the real model's sizes so).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self._known:  # made outside: never counted
                    self._known.add(storage._cdata)
                    weakref.finalize(storage, self._known.discard, storage._cdata)
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
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
