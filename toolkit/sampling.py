"""Flow-matching samplers for one block, built on diffusers' FlowMatchEulerDiscreteScheduler.

``x_t = (1 - sigma) * x0 + sigma * noise``; timesteps are ``1000 * sigma``. Two update rules:
``euler`` (the ODE step of the scheduler) and ``renoise`` (Self-Forcing / CausVid few-step
sampling: predict x0, then noise it afresh to the next level).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

MODES = ("euler", "renoise")


@dataclass
class SamplerConfig:
    """Denoising schedule of one block.

    Attributes:
        steps: denoising steps per block.
        shift: timestep shift of the flow-matching schedule (Wan / Self-Forcing: 5.0).
        mode: ``euler`` or ``renoise``.
    """

    steps: int = 4
    shift: float = 5.0
    mode: str = "euler"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sampler.mode={self.mode!r}: allowed {list(MODES)}")
        if self.steps < 1:
            raise ValueError(f"sampler.steps={self.steps}: must be >= 1")


class BlockSampler:
    """Runs the denoising steps of one block given an x0 predictor."""

    def __init__(self, cfg: SamplerConfig) -> None:
        self.cfg = cfg
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                         shift=cfg.shift)
        self.scheduler.set_timesteps(cfg.steps)
        self.sigmas = [float(s) for s in self.scheduler.sigmas]  # steps + 1 values, last 0

    def sample(self, predict_x0, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Denoise ``noise`` with ``predict_x0(x_t, sigma, step) -> x0``; return the clean block."""
        self.scheduler.set_timesteps(self.cfg.steps)  # resets the scheduler's step index
        x = noise
        for i, t in enumerate(self.scheduler.timesteps):
            sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
            x0 = predict_x0(x, sigma, i)
            if sigma_next == 0.0:
                return x0
            if self.cfg.mode == "euler":
                velocity = (x - x0) / sigma
                x = self.scheduler.step(velocity, t, x, return_dict=False)[0]
            else:
                fresh = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                x = (1.0 - sigma_next) * x0 + sigma_next * fresh
        return x
