"""The paper's LR branch (decode, pool in pixels, re-encode, patch-embed) and the dual sum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from strategies.compressors.base import COMPRESSORS, Compressor
from strategies.compressors.hr import HR
from toolkit.core.spec import ModelSpec

DECODES = ("stream", "block")


def latent_pixels(latents: int, pixels: int, start: bool) -> list[tuple[int, int]]:
    """Pixel-frame range [a, b) each of ``latents`` latent frames decoded to (``pixels`` total).

    In a stream every latent frame gives ``r`` pixel frames (``pixels = r * latents``); a
    block decoded as a video's ``start`` gives its first latent frame 1 pixel frame, as a
    causal VAE (Wan's) does (``pixels = 1 + r * (latents - 1)``; r = 1 for a frame-wise VAE).
    """
    if start and latents == 1 and pixels == 1:
        return [(0, 1)]
    if start and latents > 1 and (pixels - 1) % (latents - 1) == 0:
        r = (pixels - 1) // (latents - 1)
        return [(0, 1)] + [(1 + (j - 1) * r, 1 + j * r) for j in range(1, latents)]
    if pixels % latents == 0:  # in a stream, or a VAE without a causal first frame
        r = pixels // latents
        return [(j * r, (j + 1) * r) for j in range(latents)]
    raise ValueError(f"compressor 'lr': {latents} latent frames decoded to {pixels} pixel "
                     "frames, neither r per latent frame nor 1 + r per later one")


def pool_time(frames: Tensor, latents: int, time: int, start: bool) -> Tensor:
    """Pixel frames (B, F, 3, H, W) of a block pooled so that a causal VAE re-encodes them to
    exactly ``latents // time`` latent frames: 1 + r * (cells - 1) frames.

    Cell c covers latent frames [c * time, (c + 1) * time) and so their pixel frames
    (``latent_pixels``; ``start``: the block was decoded as a video's start). The first cell
    becomes 1 frame (the mean of its pixel frames): a causal VAE encodes its first latent
    frame from one pixel frame. Every later cell becomes r frames, the means of ``time``
    consecutive pixel frames each (r = the VAE's pixel frames per latent frame).
    """
    spans = latent_pixels(latents, frames.shape[1], start)
    out = []
    for c in range(latents // time):
        a, b = spans[c * time][0], spans[(c + 1) * time - 1][1]
        cell = frames[:, a:b].float()
        if c == 0:
            out.append(cell.mean(1, keepdim=True))
        else:
            out.append(cell.unflatten(1, (-1, time)).mean(2))  # (B, r, 3, H, W)
    return torch.cat(out, dim=1)


@COMPRESSORS.register("lr")
class LR(Compressor):
    """Training-free: decode, average-pool in pixel space, re-encode with the frozen VAE, then
    the model's own patch embedding.

    Pixels: ``space / patch`` per side (the paper's 4x at the default rate: Wan 832x480 ->
    208x120 pixels -> 26x15 latents -> 13x7 tokens, the cells of ``hr``). Time: pooled so that
    the VAE re-encodes exactly the declared latent frames (``pool_time``): with Wan's causal
    VAE a cell of ``time`` latent frames becomes 1 pixel frame when it is the block's first
    (re-encoded as a video start) and 4 otherwise; with a frame-wise VAE (the world's
    pixel-unshuffle) 1 each. Blocks of 3 and 4 latent frames both work at every rate that
    divides the block.

    Decoding (``decode``): ``stream`` decodes every finished block of the video in order in a
    stream of its own (``observe``; the VAE's ``stream()``, e.g. ``StreamingWanVAE``), so a
    block in the middle of the video is decoded with its temporal context, exactly as the
    final decode of the whole video decodes it: each latent frame gives 4 pixel frames and the
    causal convolutions see the frames before it. The stream holds the VAE's causal feature
    cache while the rollout runs (the memory of one streaming decode, e.g. StreamingWanVAE's
    at 832x480) and decodes each block once more than the final decode. ``block`` decodes
    each block on its own as if it were a video's first (its first latent frame gives 1 pixel
    frame, no history): no extra memory, different pixels. A VAE without ``stream()``
    decodes block by block either way; for a frame-wise VAE the two are the same.

    Args:
        spec: model sizes.
        time: temporal reduction (latent frames per cell; divides the block).
        space: spatial reduction of the latent grid.
        decode: ``stream`` or ``block``.
    """

    needs_vae = True

    def __init__(self, spec: ModelSpec, time: int = 2, space: int | None = None,
                 decode: str = "stream") -> None:
        super().__init__(spec, time, space)
        if decode not in DECODES:
            raise ValueError(f"lr_decode={decode!r}: allowed {list(DECODES)}")
        self.decode = decode
        self.reset()

    def reset(self) -> None:
        # a plain dict: the stream wraps the model's VAE, which must not become a submodule
        self._state: dict[str, Any] = {"stream": None, "last": None}

    def observe(self, latents: Tensor, model: Any) -> None:
        """Decode the video's next block in the compressor's own stream (``stream`` mode)."""
        if self.decode != "stream" or not hasattr(model.vae, "stream"):
            return
        start = self._state["stream"] is None
        if start:
            self._state["stream"] = model.vae.stream()
        frames = self._state["stream"].decode_block(latents)
        self._state["last"] = (latents, frames, start)

    def pixels(self, latents: Tensor, model: Any) -> tuple[Tensor, bool]:
        """Decoded frames (B, F', 3, H', W') of a block, and whether they were decoded as a
        video's start: from the stream when it is the block last observed, else the block
        decoded on its own (a start)."""
        last, self._state["last"] = self._state["last"], None
        if last is not None and last[0] is latents:
            return last[1], last[2]
        return model.vae.decode(latents), True

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        frames, start = self.pixels(latents, model)
        pooled = pool_time(frames, latents.shape[2], self.time, start)  # (B, f, 3, H', W')
        _, rh, rw = self.cells()
        b, f = pooled.shape[:2]
        pooled = F.avg_pool2d(pooled.flatten(0, 1), (rh, rw)).unflatten(0, (b, f))
        if pooled.shape[-1] == 0 or pooled.shape[-2] == 0:
            raise ValueError(f"compressor 'lr': pooling frames {tuple(frames.shape[-2:])} by "
                             f"{(rh, rw)} leaves nothing to encode")
        z = model.vae.encode(pooled.to(frames.device))  # (B, C, f', h', w')
        return self._checked(model.patch_embed(z.to(latents.device)),
                             f"pooled frames {tuple(pooled.shape[1:])} re-encoded to latents "
                             f"{tuple(z.shape[-3:])}")


@COMPRESSORS.register("dual")
class Dual(Compressor):
    """The paper's default: ``hr`` + ``lr`` tokens summed element-wise (same cells).

    Args: as ``HR``, plus ``decode`` of ``LR``; ``weights`` are the ``hr`` branch's (``lr`` has
    none), so weights trained for ``hr`` alone or inside ``dual`` load into either.
    """

    needs_vae = True
    learned = True

    def __init__(self, spec: ModelSpec, time: int = 2, space: int | None = None,
                 channels: int = 16, weights: str | None = None, seed: int = 0,
                 decode: str = "stream") -> None:
        super().__init__(spec, time, space)
        self.hr = HR(spec, time, space, channels, weights, seed)
        self.lr = LR(spec, time, space, decode)
        self._share_weights_info()

    def save(self, path: str | Path) -> Path:
        """Write the ``hr`` branch's parameters (the same file ``hr`` loads)."""
        return self.hr.save(path)

    def load(self, path: str | Path) -> None:
        """Read ``hr`` branch parameters (from ``HR.save`` or ``Dual.save``)."""
        self.hr.load(path)
        self._share_weights_info()

    def _share_weights_info(self) -> None:
        self.weights_file, self.weights_sha256 = self.hr.weights_file, self.hr.weights_sha256
        self.card = self.hr.card

    def reset(self) -> None:
        self.lr.reset()

    def observe(self, latents: Tensor, model: Any) -> None:
        self.lr.observe(latents, model)

    def compress(self, latents: Tensor, model: Any) -> Tensor:
        high, low = self.hr.compress(latents, model), self.lr.compress(latents, model)
        if high.shape != low.shape:  # both are checked against the same grid; belt and braces
            raise ValueError(f"dual: hr tokens {tuple(high.shape)} != lr {tuple(low.shape)}")
        return high + low.to(high.dtype)
