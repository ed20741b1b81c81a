"""Wan's 3D rotary embedding at arbitrary (also fractional) positions.

The head dim is split into time / height / width parts (``ModelSpec.rope_split``); each part
rotates channel pairs (0,1), (2,3), ... by ``position * theta ** (-2i / dim)``, exactly as
diffusers' ``WanRotaryPosEmbed`` + ``WanAttnProcessor`` do at integer positions. A rotation is
applied as one complex multiplication of the channel pairs by a table ``cos + i sin`` (the same
products as diffusers' real form, bit for bit). Because rotations compose, keys already
rotated at time ``p`` move to ``p + d`` by one more rotation of the time dims by ``d``
(``shift_time``): the shift PackForcing uses. In bf16 every such rotation rounds the keys once
more, so strategies that move a block many times rotate its stored keys on read
(``BlockKV.layer_kv``) rather than in place: one rounding however often it moves
(``shift_drift`` measures the difference).
"""

from __future__ import annotations

import torch

from toolkit.core.spec import ModelSpec


class Rope:
    """RoPE tables for one model spec. Positions are (N, 3) float tensors: (t, h, w)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.split = spec.rope_split
        self.inv_freq = [  # one (dim/2,) float64 table per axis
            1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
            for d in self.split
        ]
        self._shifts: dict[float, torch.Tensor] = {}

    def _angles(self, pos: torch.Tensor) -> torch.Tensor:
        pos = pos.to(torch.float64).cpu()
        return torch.cat([torch.outer(pos[:, i], f) for i, f in enumerate(self.inv_freq)], 1)

    def cos_sin(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation tables for positions (N, 3), in diffusers' layout (1, N, 1, head_dim)."""
        angles = self._angles(pos)
        cos = angles.cos().repeat_interleave(2, dim=1).float()
        sin = angles.sin().repeat_interleave(2, dim=1).float()
        return cos[None, :, None, :], sin[None, :, None, :]

    def table(self, pos: torch.Tensor) -> torch.Tensor:
        """The same rotation as one complex table (1, N, 1, head_dim / 2) for ``rotate``."""
        angles = self._angles(pos)
        return torch.complex(angles.cos().float(), angles.sin().float())[None, :, None, :]

    def shift_table(self, delta: float) -> torch.Tensor:
        """Complex table (time dims / 2,) rotating the time dims by ``delta`` (cached)."""
        table = self._shifts.get(delta)
        if table is None:
            if len(self._shifts) >= 256:
                self._shifts.clear()
            t = self.split[0]
            pos = torch.tensor([[float(delta), 0.0, 0.0]])
            table = self._shifts[delta] = self.table(pos)[0, 0, 0, : t // 2]
        return table

    def time_shift_table(self, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables rotating the time dims by ``delta`` and leaving height / width untouched."""
        pos = torch.tensor([[float(delta), 0.0, 0.0]])
        return self.cos_sin(pos)


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., D) by a complex table broadcastable to (..., D / 2).

    On meta tensors (memory accounting) it makes the same allocations without the arithmetic
    (torch's meta complex kernels are slow).
    """
    if x.is_meta:
        work = x if x.dtype == torch.float32 else torch.empty(x.shape, device="meta")
        out = torch.empty_like(work)  # the complex product: the same bytes
        return out if x.dtype == torch.float32 else out.to(x.dtype)
    pairs = (x if x.dtype == torch.float32 else x.float()).unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.stride(-2) != 2:
        pairs = pairs.contiguous()
    out = torch.view_as_real(torch.view_as_complex(pairs) * table).flatten(-2)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def rotate_at(x: torch.Tensor, rope: Rope, pos: torch.Tensor, inverse: bool = False
              ) -> torch.Tensor:
    """Rotate x (..., N, D) at positions pos (N, 3); ``inverse`` removes that rotation."""
    table = rope.table(pos)[0].transpose(0, 1).to(x.device)  # (1, N, D / 2)
    return rotate(x, table.conj() if inverse else table)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., N, D) by tables broadcastable to it (diffusers' rule)."""
    return rotate(x, torch.complex(cos[..., 0::2], sin[..., 1::2]))


def shift_time(keys: torch.Tensor, rope: Rope, delta: float) -> torch.Tensor:
    """Move keys (..., H, N, D) already rotated at time p to time p + delta (time dims only).

    Only the time dims are rotated; the height / width dims are copied unchanged.
    """
    if delta == 0:
        return keys
    t = rope.split[0]
    out = keys.clone()
    out[..., :t] = rotate(keys[..., :t], rope.shift_table(float(delta)).to(keys.device))
    return out


def grid_positions(spec: ModelSpec, t0: float, frames: int) -> torch.Tensor:
    """Positions (frames * tokens_per_frame, 3) of a block starting at temporal position t0."""
    gh, gw = spec.grid
    t = torch.arange(frames, dtype=torch.float64) + t0
    tt, hh, ww = torch.meshgrid(t, torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def shift_drift(spec: ModelSpec, shifts: int, delta: float, tokens: int | None = None,
                dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict[str, float]:
    """Error of ``shifts`` incremental time shifts by ``delta`` of keys stored in ``dtype``.

    Random unit-RMS keys (one frame of ``tokens`` tokens, all heads) are rotated at time 0 in
    fp32 and stored in ``dtype``; they are then moved ``shifts`` times by ``delta`` (each move
    rounds to ``dtype``), or once by ``shifts * delta`` from the stored keys (one rounding, what
    a rotation on read does). Both are compared with the fp32 rotation of the same keys.

    Returns:
        ``incremental`` / ``once``: max abs error in ulps of ``dtype`` at 1.0 (the keys' scale);
        ``incremental_rel`` / ``once_rel``: RMS error relative to the keys' RMS.
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = tokens or spec.tokens_per_frame
    raw = torch.randn(1, spec.num_heads, tokens, spec.head_dim, generator=gen)
    rope = Rope(spec)
    gh, gw = spec.grid
    pos = grid_positions(spec, 0.0, 1)[:tokens] if tokens <= gh * gw else \
        torch.zeros(tokens, 3, dtype=torch.float64)
    stored = rotate(raw, rope.table(pos)[0].transpose(0, 1)).to(dtype)
    moved = stored
    for _ in range(shifts):
        moved = shift_time(moved, rope, delta)
    once = shift_time(stored, rope, shifts * delta)
    end = pos.clone()
    end[:, 0] += shifts * delta
    exact = rotate(raw, rope.table(end)[0].transpose(0, 1))
    ulp = torch.finfo(dtype).eps  # spacing at 1.0

    def errors(x: torch.Tensor) -> tuple[float, float]:
        diff = x.float() - exact
        return diff.abs().max().item() / ulp, (diff.norm() / exact.norm()).item()

    inc, inc_rel = errors(moved)
    one, one_rel = errors(once)
    return {"incremental": inc, "once": one, "incremental_rel": inc_rel, "once_rel": one_rel}
