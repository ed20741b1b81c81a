"""PackForcing's partitions inside one training clip, as one masked teacher-forced pass.

``contexts`` lists, per block, the (sink, mid, recent) blocks the cached rollout would give it;
``pack_layout`` turns that into positions and a mask over [clean clip | noisy clip] queries and
[clean | noisy | compressed mid] keys; ``compressed_kv`` computes the mid blocks' K/V through
the strategy's own code path; ``predict`` runs the pass. The world's PackForcing recipe
(``toolkit.worlds.sprites.pf_train``) trains through it; its tests pin it to a cached PackForcing
rollout. Any ``WanCausalModel`` works (nothing here knows a concrete model).

Conditioning ``cond`` is (B, L, C), one prompt for the clip, or (B, blocks, L, C), each block
under its own prompt (a prompt schedule): a compressed mid block then runs under its own
block's prompt, as ``FinishedBlock.cond`` gives it at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from strategies.compressors import Compressor
from toolkit.core.model import WanCausalModel
from toolkit.core.rope import grid_positions


# -- partitions and layout ---------------------------------------------------------------------
def contexts(blocks: int, sink_blocks: int, recent_blocks: int
             ) -> list[tuple[list[int], list[int], list[int]]]:
    """(sink, mid, recent) block indices the cached rollout gives each block of a clip.

    The strategy's bookkeeping without evictions or top-k drops: the first ``sink_blocks``
    blocks enter the sink; every later one enters recent, and ages into the (compressed) mid
    once more than ``recent_blocks`` newer non-sink blocks exist.
    """
    out = []
    for b in range(blocks):
        if b < sink_blocks:
            out.append((list(range(b)), [], []))
            continue
        first_recent = max(sink_blocks, b - recent_blocks)
        out.append((list(range(sink_blocks)), list(range(sink_blocks, first_recent)),
                    list(range(first_recent, b))))
    return out


@dataclass
class Layout:
    """Token layout of one packforcing teacher-forcing pass.

    Queries: [clean clip (N) | noisy clip (N)] at ``pos`` (2N, 3). Keys: the same, then the
    compressed tokens of the ``mid_blocks`` (``per_block`` each, at ``mid_pos``). ``mask``
    (2N, 2N + M): True = may attend.
    """

    pos: Tensor
    mask: Tensor
    mid_blocks: list[int]
    mid_pos: list[Tensor]  # per mid block: (per_block, 3)
    per_block: int
    has_mid: Tensor  # (blocks,) bool: the block's history holds compressed mid blocks
    ctx: list[tuple[list[int], list[int], list[int]]]

    def without_mid(self) -> Tensor:
        """The mask with every compressed column hidden (the context-use ablation)."""
        n = self.pos.shape[0]
        mask = self.mask.clone()
        mask[:, n:] = False
        return mask


def pack_layout(spec, compressor: Compressor, frames: int, sink_frames: int,
                recent_frames: int, spatial: str = "centres",
                clean_context: str = "strategy") -> Layout:
    """Positions and mask of [clean | noisy | compressed-mid] for a clip of ``frames``."""
    bf, tpb = spec.block_frames, spec.tokens_per_block
    nb = spec.blocks_of(frames)
    ctx = contexts(nb, spec.blocks_of(sink_frames), spec.blocks_of(recent_frames))
    mid_blocks = sorted({m for _, mid, _ in ctx for m in mid})
    per = compressor.tokens(spec)
    n = nb * tpb
    mask = torch.zeros(2 * n, 2 * n + per * len(mid_blocks), dtype=torch.bool)

    def cols(blocks: list[int], offset: int = 0) -> list[int]:
        return [offset + i for b in blocks for i in range(b * tpb, (b + 1) * tpb)]

    def mid_cols(blocks: list[int]) -> list[int]:
        return [2 * n + mid_blocks.index(m) * per + i for m in blocks for i in range(per)]

    for b, (sink, mid, recent) in enumerate(ctx):
        clean_rows = slice(b * tpb, (b + 1) * tpb)
        noisy_rows = slice(n + b * tpb, n + (b + 1) * tpb)
        full = sink + recent
        mask[noisy_rows, cols(full) + cols([b], n) + mid_cols(mid)] = True
        if clean_context == "strategy":
            mask[clean_rows, cols([*full, b]) + mid_cols(mid)] = True
        else:
            mask[clean_rows, cols(list(range(b + 1)))] = True
    pos = grid_positions(spec, 0.0, frames)
    cell = compressor.positions(spatial)
    mid_pos = []
    for m in mid_blocks:
        p = cell.clone()
        p[:, 0] += m * bf  # the block's generation position (shift/repack/absolute agree here)
        mid_pos.append(p)
    has_mid = torch.tensor([len(mid) > 0 for _, mid, _ in ctx])
    return Layout(torch.cat([pos, pos]), mask, mid_blocks, mid_pos, per, has_mid, ctx)


class PackPlan:
    """Masked attention over the pass's own tokens plus per-layer compressed K/V."""

    def __init__(self, mask: Tensor, keys: Tensor | None, values: Tensor | None) -> None:
        self.mask, self.keys, self.values = mask, keys, values

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.keys is not None and self.keys.shape[-2]:
            k = torch.cat([k, self.keys[layer].to(k.dtype)], dim=2)
            v = torch.cat([v, self.values[layer].to(v.dtype)], dim=2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask.to(q.device))


def block_cond(cond: Tensor, block: int) -> Tensor:
    """The (B, L, C) conditioning of one block (see the module docstring)."""
    return cond[:, block] if cond.ndim == 4 else cond


def compressed_kv(model: WanCausalModel, compressor: Compressor, layout: Layout, x0: Tensor,
                  cond: Tensor, kv: str) -> tuple[Tensor | None, Tensor | None]:
    """Per-layer K/V (L, B, H, M, D) of the mid blocks' compressed tokens, as the strategy
    makes them at commit (``PackForcing._compress``): compress the clean latents, then
    ``token_kv`` (timestep 0, attending only to themselves) or ``project_kv``."""
    if not layout.mid_blocks:
        return None, None
    bf = model.spec.block_frames
    keys, values = [], []
    for m, pos in zip(layout.mid_blocks, layout.mid_pos, strict=True):
        tokens = compressor.compress(x0[:, :, m * bf:(m + 1) * bf], model)
        k, v = (model.token_kv(tokens, pos, block_cond(cond, m)) if kv == "transformer"
                else model.project_kv(tokens, pos))
        keys.append(k)
        values.append(v)
    return torch.cat(keys, dim=3), torch.cat(values, dim=3)


# -- one pass ----------------------------------------------------------------------------------
def predict(model: WanCausalModel, compressor: Compressor, layout: Layout, x0: Tensor,
            xt: Tensor, sigma: Tensor, cond: Tensor, kv: str = "transformer",
            mask: Tensor | None = None) -> Tensor:
    """x0 predictions (B, C, F, H, W) of the noisy clip in one packforcing-masked pass."""
    spec = model.spec
    b = x0.shape[0]
    keys, values = compressed_kv(model, compressor, layout, x0, cond, kv)
    t_clean = torch.zeros(b, x0.shape[2] * spec.tokens_per_frame, device=x0.device)
    t_noisy = (1000 * sigma).repeat_interleave(spec.tokens_per_block, 1)
    plan = PackPlan(layout.mask if mask is None else mask, keys, values)
    segments = torch.cat([cond, cond], 1) if cond.ndim == 4 else cond  # clean, then noisy
    out = model.forward_tokens(torch.cat([x0, xt], 2), torch.cat([t_clean, t_noisy], 1),
                               layout.pos, segments, plan=plan)
    pred = out[:, :, x0.shape[2]:].float()
    return model.to_x0(pred, xt, _sigma_frames(sigma, spec.block_frames))


def _sigma_frames(sigma: Tensor, block_frames: int) -> Tensor:
    """Per-block sigmas (B, blocks) broadcast over latents (B, 1, F, 1, 1)."""
    return sigma.repeat_interleave(block_frames, 1)[:, None, :, None, None]


def block_errors(model: WanCausalModel, pred: Tensor, x0: Tensor) -> Tensor:
    """Per-sample-per-block x0 errors (B, blocks)."""
    err = (pred - x0).pow(2).mean(1)  # (B, F, h, w)
    return err.unflatten(1, (-1, model.spec.block_frames)).mean((2, 3, 4))
