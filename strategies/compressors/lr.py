"""The paper's LR branch (decode, pool in pixels, re-encode, patch-embed) and the dual sum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from strategies.compressors.base import COMPRESSORS, Compressor
from strategies.compressors.hr import HR
from toolkit.spec import ModelSpec


@COMPRESSORS.register("lr")
class LR(Compressor):
    """Training-free: ``vae.decode``, 3D average pool in pixel space, ``vae.encode``, then the
    model's own patch embedding.

    Pixel pooling: ``time`` latent frames' worth of decoded frames (x the VAE's temporal
    factor, measured on the decoded block) by ``space / patch`` pixels per side; the paper's
    2x time, 4x space at the default rate. Re-encoding then patch-embedding gives the same
    cells as ``hr`` (Wan: 832x480 -> 208x120 pixels -> 26x15 latents -> 13x7 tokens).

    On the world's 16x16 frames the default pools to 4x4 pixels, which the PixelVAE
    (pixel_unshuffle(2)) encodes to 2x2 latents and the patch embedding to one token per
    frame pair: pooled frames must stay divisible by the VAE's factor and encode to at least
    one patch, so compress_space=16 (2x2 pixels -> a 1x1 latent) cannot work there.
    """

    needs_vae = True

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        frames = model.vae.decode(latents)  # (B, F', 3, H', W')
        per_latent = frames.shape[1] / latents.shape[2]
        _, rh, rw = self.cells()
        kernel = (max(1, round(self.time * per_latent)), rh, rw)
        pooled = F.avg_pool3d(frames.transpose(1, 2).float(), kernel)  # (B, 3, f, h, w)
        if pooled.shape[-1] == 0 or pooled.shape[-2] == 0:
            raise ValueError(f"compressor 'lr': pooling frames {tuple(frames.shape[-2:])} by "
                             f"{kernel} leaves nothing to encode")
        z = model.vae.encode(pooled.transpose(1, 2).contiguous())  # (B, C, f', h', w')
        return self._checked(model.patch_embed(z), f"pooled frames {tuple(pooled.shape[-3:])} "
                             f"re-encoded to latents {tuple(z.shape[-3:])}")


@COMPRESSORS.register("dual")
class Dual(Compressor):
    """The paper's default: ``hr`` + ``lr`` tokens summed element-wise (same cells).

    Args: as ``HR``; ``weights`` are the ``hr`` branch's (``lr`` has none), so weights
    trained for ``hr`` alone or inside ``dual`` load into either.
    """

    needs_vae = True
    learned = True

    def __init__(self, spec: ModelSpec, time: int = 2, space: int | None = None,
                 channels: int = 16, weights: str | None = None, seed: int = 0) -> None:
        super().__init__(spec, time, space)
        self.hr = HR(spec, time, space, channels, weights, seed)
        self.lr = LR(spec, time, space)

    def save(self, path: str | Path) -> Path:
        """Write the ``hr`` branch's parameters (the same file ``hr`` loads)."""
        return self.hr.save(path)

    def load(self, path: str | Path) -> None:
        """Read ``hr`` branch parameters (from ``HR.save`` or ``Dual.save``)."""
        self.hr.load(path)

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        high, low = self.hr.compress(latents, model), self.lr.compress(latents, model)
        if high.shape != low.shape:  # both are checked against the same grid; belt and braces
            raise ValueError(f"dual: hr tokens {tuple(high.shape)} != lr {tuple(low.shape)}")
        return high + low.to(high.dtype)
