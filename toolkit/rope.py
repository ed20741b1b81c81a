"""Wan's 3D rotary embedding at arbitrary (also fractional) positions.

The head dim is split into time / height / width parts (``ModelSpec.rope_split``); each part
rotates channel pairs (0,1), (2,3), ... by ``position * theta ** (-2i / dim)``, exactly as
diffusers' ``WanRotaryPosEmbed`` + ``WanAttnProcessor`` do at integer positions. Because
rotations compose, keys already rotated at time ``p`` move to ``p + d`` by one more rotation of
the time dims by ``d`` (``shift_time``): the incremental shift PackForcing uses.
"""

from __future__ import annotations

import torch

from toolkit.spec import ModelSpec


class Rope:
    """RoPE tables for one model spec. Positions are (N, 3) float tensors: (t, h, w)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.split = spec.rope_split
        self.inv_freq = [  # one (dim/2,) float64 table per axis
            1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
            for d in self.split
        ]

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation tables for positions (N, 3), in diffusers' layout (1, N, 1, head_dim)."""
        pos = pos.to(torch.float64).cpu()
        angles = torch.cat([torch.outer(pos[:, i], f) for i, f in enumerate(self.inv_freq)], 1)
        cos = angles.cos().repeat_interleave(2, dim=1).float()
        sin = angles.sin().repeat_interleave(2, dim=1).float()
        return cos[None, :, None, :], sin[None, :, None, :]

    def time_shift_table(self, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables rotating the time dims by ``delta`` and leaving height / width untouched."""
        pos = torch.tensor([[float(delta), 0.0, 0.0]])
        return self.cos_sin(pos)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., N, D) by tables broadcastable to it (diffusers' rule)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.type_as(x)


def shift_time(keys: torch.Tensor, rope: Rope, delta: float) -> torch.Tensor:
    """Move keys (..., H, N, D) already rotated at time p to time p + delta (time dims only)."""
    if delta == 0:
        return keys
    cos, sin = rope.time_shift_table(delta)  # (1, 1, 1, D)
    cos, sin = cos.to(keys.device)[0], sin.to(keys.device)[0]  # (1, 1, D) over (H, N, D)
    return apply_rope(keys, cos, sin)


def grid_positions(spec: ModelSpec, t0: float, frames: int) -> torch.Tensor:
    """Positions (frames * tokens_per_frame, 3) of a block starting at temporal position t0."""
    gh, gw = spec.grid
    t = torch.arange(frames, dtype=torch.float64) + t0
    tt, hh, ww = torch.meshgrid(t, torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)
