"""Flow-matching samplers for one block, built on diffusers' FlowMatchEulerDiscreteScheduler.

``x_t = (1 - sigma) * x0 + sigma * noise``; timesteps are ``1000 * sigma``. Two update rules:
``euler`` (the ODE step of the scheduler) and ``renoise`` (Self-Forcing / CausVid few-step
sampling: predict x0, then noise it afresh to the next level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        timesteps: optional explicit timesteps in (0, 1000], one per step, before the shift
            (Self-Forcing's ``denoising_step_list`` [1000, 750, 500, 250]); step i runs at
            sigma = shift(t_i / 1000), as Self-Forcing's ``warp_denoising_step``. None: ``steps``
            evenly spaced steps chosen by the scheduler.
    """

    steps: int = 4
    shift: float = 5.0
    mode: str = "euler"
    timesteps: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sampler.mode={self.mode!r}: allowed {list(MODES)}")
        if self.steps < 1:
            raise ValueError(f"sampler.steps={self.steps}: must be >= 1")
        if self.timesteps is not None:
            self.timesteps = tuple(float(t) for t in self.timesteps)
            if len(self.timesteps) != self.steps:
                raise ValueError(f"sampler.timesteps={list(self.timesteps)} has "
                                 f"{len(self.timesteps)} entries but sampler.steps={self.steps}")
            if any(not 0.0 < t <= 1000.0 for t in self.timesteps):
                raise ValueError(f"sampler.timesteps={list(self.timesteps)}: each must be in "
                                 "(0, 1000]")

    def schedule(self) -> dict[str, Any]:
        """Keyword arguments of the scheduler's ``set_timesteps`` for this schedule."""
        if self.timesteps is None:
            return {"num_inference_steps": self.steps}
        return {"sigmas": [t / 1000.0 for t in self.timesteps]}  # the scheduler shifts them


class BlockSampler:
    """Runs the denoising steps of one block given an x0 predictor."""

    def __init__(self, cfg: SamplerConfig) -> None:
        self.cfg = cfg
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                                         shift=cfg.shift)
        self.scheduler.set_timesteps(**cfg.schedule())
        self.sigmas = [float(s) for s in self.scheduler.sigmas]  # steps + 1 values, last 0

    def sample(self, predict_x0, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Denoise ``noise`` with ``predict_x0(x_t, sigma, step) -> x0``; return the clean block."""
        self.scheduler.set_timesteps(**self.cfg.schedule())  # resets the step index
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
