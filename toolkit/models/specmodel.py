"""Spec-only models: a real model's sizes and RoPE, no weights (memory accounting).

A ``SpecModel`` has what ``toolkit.bench.kv`` drives a strategy with: ``spec``, ``rope``,
``sampler``, ``vae = None`` and ``device = meta``. Strategies bound to it see meta tensors of
the true sizes: nothing is allocated, nothing is computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from toolkit.core.rope import Rope
from toolkit.core.sampling import SamplerConfig
from toolkit.core.spec import ModelSpec
from toolkit.models.zoo import wan_t2v_1_3b_spec

WAN_VAE_TIME = 4  # Wan's VAE: 4 video frames per latent frame


@dataclass
class SpecModel:
    """Sizes without weights.

    Attributes:
        spec: the model's sizes.
        sampler: its denoising schedule (how many context requests a block makes).
        name: what to call it in reports.
    """

    spec: ModelSpec
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    name: str = "spec-only model"
    rope: Rope = field(init=False, repr=False)
    vae: Any = field(default=None, init=False)
    device: torch.device = field(default=torch.device("meta"), init=False)

    def __post_init__(self) -> None:
        self.rope = Rope(self.spec)

    @classmethod
    def of(cls, model: Any) -> SpecModel:
        """The spec-only twin of any model (a ``SpecModel`` is returned as it is)."""
        if isinstance(model, SpecModel):
            return model
        return cls(model.spec, getattr(model, "sampler", None) or SamplerConfig(),
                   type(model).__name__)


def wan_spec_model(height: int = 480, width: int = 832, fps: float = 16.0,
                   block_frames: int = 4, dtype: str = "bfloat16", steps: int = 4) -> SpecModel:
    """Wan2.1-T2V-1.3B's sizes (30 layers, 12 x 128 heads, 16-channel latents at 1/8 size,
    patch 1x2x2) at any resolution and frame rate; 4 video frames per latent frame.

    Args:
        height: video height in pixels (a multiple of 16; paper 480).
        width: video width in pixels (a multiple of 16; paper 832).
        fps: video frames per second (paper 16: 4 latent frames per second).
        block_frames: latent frames per block (paper 4).
        dtype: cache dtype (paper bfloat16).
        steps: denoising steps per block (Self-Forcing 4).
    """
    if fps <= 0:
        raise ValueError(f"fps={fps}: must be > 0")
    spec = wan_t2v_1_3b_spec(height=height, width=width, block_frames=block_frames, dtype=dtype)
    spec = dataclasses.replace(spec, latent_fps=fps / WAN_VAE_TIME)
    return SpecModel(spec, SamplerConfig(steps=steps), f"wan-t2v-1.3b {width}x{height} @{fps:g}fps")
