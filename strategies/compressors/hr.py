"""The paper's HR branch: progressive strided 3D convolutions on the latents (learned)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from strategies.compressors.base import COMPRESSORS, Compressor
from toolkit.core.spec import ModelSpec


@COMPRESSORS.register("hr")
class HR(Compressor):
    """Strided 3D convs with SiLU, then a 1x1x1 projection to the model width.

    The paper (Wan, 16 latent channels, width 1536): 16->32 stride (2,1,1); 32->128, 128->512,
    512->2048 stride (1,2,2); kernel = stride; 1x1x1 -> 1536: 4x60x104 latents -> 2x7x13 = 182
    tokens. Here: one temporal stage of stride ``time`` (none if 1), then log2(``space``)
    spatial stride-2 stages, so the token grid is (F / time, H // space, W // space), the same
    cells as every other compressor. Stage widths follow the paper's progression (x2 after the
    temporal stage, x4 after each spatial one) capped at ``channels``: 2048 gives the paper's
    widths; the default 16 keeps it at a few thousand parameters on the world model.

    A plain ``nn.Module``: train it end-to-end inside the base model's objective, ``save`` its
    weights and pass them back as ``weights``. Randomly initialised (seeded) until then.

    Args:
        spec: model sizes.
        time: temporal stride.
        space: spatial reduction of the latent grid (a power of two).
        channels: cap on the stage widths.
        weights: safetensors file from ``save`` to load.
        seed: seeds the random initialisation.
    """

    learned = True

    def __init__(self, spec: ModelSpec, time: int = 2, space: int | None = None,
                 channels: int = 16, weights: str | None = None, seed: int = 0) -> None:
        super().__init__(spec, time, space)
        if channels < 1:
            raise ValueError(f"hr_channels={channels}: must be >= 1")
        self.channels = channels
        layers: list[nn.Module] = []
        width = spec.latent_channels
        strides = [(self.time, 1, 1)] if self.time > 1 else []
        strides += [(1, 2, 2)] * (self.space.bit_length() - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for stride in strides:
                grow = 2 if stride[0] > 1 else 4
                out = min(width * grow, channels)
                layers += [nn.Conv3d(width, out, stride, stride=stride), nn.SiLU()]
                width = out
            layers.append(nn.Conv3d(width, spec.width, 1))
        self.net = nn.Sequential(*layers)
        if weights is not None:
            self.load(weights)

    def compress(self, latents: Tensor, model: Any = None) -> Tensor:
        dtype = next(self.parameters()).dtype
        out = self.net(latents.to(dtype))  # (B, width, t, h, w)
        return self._checked(out.flatten(2).transpose(1, 2), f"latents {tuple(latents.shape)}")
