"""Training-free compressors: pooled latents, pooled K/V, and identity (no compression)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from strategies.compressors.base import COMPRESSORS, Compressor


@COMPRESSORS.register("pool")
class Pool(Compressor):
    """Average-pool the latents by (time, space / patch, space / patch), then patch-embed.

    Wan at the default rate: 4x60x104 latents -> 2x15x26 -> 2x7x13 = 182 tokens, the cells of
    ``hr`` and ``lr``.
    """

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        rt, rh, rw = self.cells()
        pooled = F.avg_pool3d(latents.float(), (rt, rh, rw))  # (B, C, F / rt, H / rh, W / rw)
        return self._checked(model.patch_embed(pooled), f"pooled latents {tuple(pooled.shape)}")


def _pool_tokens(x: Tensor, frames: int, grid: tuple[int, int], cells: tuple[int, int, int]
                 ) -> Tensor:
    """Average-pool tokens (..., N, D) laid out as (frames, rows, cols) over cells."""
    lead, d = x.shape[:-2], x.shape[-1]
    vol = x.reshape(-1, frames, *grid, d).permute(0, 4, 1, 2, 3)  # (*, D, F, h, w)
    pooled = F.avg_pool3d(vol.float(), cells).type_as(x)  # (*, D, f, h', w')
    return pooled.flatten(2).transpose(1, 2).reshape(*lead, -1, d)


@COMPRESSORS.register("pool_kv")
class PoolKV(Compressor):
    """Average-pool each layer's full-resolution K and V over the cells (no hidden tokens).

    Keys are pooled un-rotated (the strategy removes the block's rotation first and rotates the
    pooled keys at the cells' positions), so no mixing of different rotations.
    """

    kind = "kv"

    def check_model(self, model: Any) -> None:
        """Needs nothing beyond the cached K/V."""

    def compress_kv(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        spec = self.spec
        return (_pool_tokens(keys, spec.block_frames, spec.grid, self.cells()),
                _pool_tokens(values, spec.block_frames, spec.grid, self.cells()))


@COMPRESSORS.register("identity")
class Identity(Compressor):
    """No compression: the block's own K/V (copies) at its own positions. For invariants."""

    kind = "kv"
    fixed_rate = True

    def check_model(self, model: Any) -> None:
        """Needs nothing beyond the cached K/V."""

    def compress_kv(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return keys.clone(), values.clone()
