"""Attention processors that let a cache strategy, not the model, decide the context.

Two processors are installed on a diffusers ``WanTransformer3DModel`` (reversibly, with
``install``): ``SelfAttention`` on every ``attn1`` and ``CrossAttention`` on every ``attn2``.
``SelfAttention`` computes this block's rotated q / k / v exactly as diffusers' Wan processor
does, then hands them to an *attention plan*, which owns the policy:

- ``MaskedPlan``: one pass over a whole sequence with a boolean mask (the block-causal reference
  and teacher-forced training);
- ``CachePlan`` (in ``toolkit.core.rollout``): context K/V from a cache strategy, plus recording of
  the block's own K/V for the cache-fill pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from toolkit.core.rope import rotate


class AttentionPlan(Protocol):
    """Decides what the tokens of one forward pass attend to, layer by layer."""

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v: (B, H, N, D), already rotated. Returns (B, H, N, D)."""


class MaskedPlan:
    """Plain attention over the pass's own tokens with an optional boolean mask (N, N)."""

    def __init__(self, mask: Tensor | None = None) -> None:
        self.mask = mask  # True = may attend

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


class SelfAttention:
    """Self-attention processor for one layer; the installed plan supplies the context."""

    def __init__(self, layer: int, slot: PlanSlot) -> None:
        self.layer, self.slot = layer, slot
        self._attn = None  # the attention module whose submodules ``_mods`` holds
        self._mods: tuple = ()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None,
                 attention_mask=None, rotary_emb=None) -> Tensor:
        if attn is not self._attn:  # look the submodules up once (ModuleList indexing is slow)
            drop = attn.to_out[1]
            self._attn, self._mods = attn, (attn.to_q, attn.norm_q, attn.to_k, attn.norm_k,
                                            attn.to_v, attn.to_out[0], drop)
        to_q, norm_q, to_k, norm_k, to_v, out, drop = self._mods
        # 1. projections and q/k RMS-norm across heads, as diffusers' WanAttnProcessor (its
        #    Linear / RMSNorm modules' own functional forms, without the module-call overhead)
        q = _project(to_q, norm_q, hidden_states).unflatten(2, (attn.heads, -1))  # (B, N, H, D)
        k = _project(to_k, norm_k, hidden_states).unflatten(2, (attn.heads, -1))
        v = F.linear(hidden_states, to_v.weight, to_v.bias).unflatten(2, (attn.heads, -1))
        # 2. rotary embedding at the positions the caller chose: a complex table (1, N, 1, D/2)
        #    (WanCausalModel) or diffusers' (cos, sin) tables (1, N, 1, D)
        if rotary_emb is not None:
            table = rotary_emb if isinstance(rotary_emb, Tensor) else \
                torch.complex(rotary_emb[0][..., 0::2], rotary_emb[1][..., 1::2])
            q, k = rotate(q, table), rotate(k, table)
        # 3. the plan attends: (B, H, N, D) in and out
        out_h = self.slot.plan.attend(self.layer, q.transpose(1, 2), k.transpose(1, 2),
                                      v.transpose(1, 2))
        out_h = out_h.transpose(1, 2).flatten(2, 3)
        out_h = F.linear(out_h if out_h.dtype == q.dtype else out_h.to(q.dtype), out.weight,
                         out.bias)
        return drop(out_h) if drop.p else out_h


def _project(linear: torch.nn.Linear, norm: torch.nn.Module, x: Tensor) -> Tensor:
    """``norm(linear(x))`` for a Linear and a torch RMSNorm, as their forwards compute it."""
    out = F.linear(x, linear.weight, linear.bias)
    if isinstance(norm, torch.nn.RMSNorm):
        return F.rms_norm(out, norm.normalized_shape, norm.weight, norm.eps)
    return norm(out)


class CrossAttention:
    """Cross-attention to the prompt; K/V are computed once per prompt tensor and reused.

    The conditioning is (B, L, C) for the whole pass, or (B, S, L, C): S prompts for S equal
    consecutive segments of the tokens (one per block in a teacher-forced pass over a prompt
    schedule). Cross-attention is per token, so segments are attended independently.
    """

    def __init__(self) -> None:
        self._source: Tensor | None = None
        self._kv: tuple[Tensor, Tensor] | None = None

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor,
                 attention_mask=None, rotary_emb=None) -> Tensor:
        b, n, _ = hidden_states.shape
        segments = encoder_hidden_states.shape[1] if encoder_hidden_states.ndim == 4 else 1
        if self._source is not encoder_hidden_states:  # a new prompt: project it once
            cond = encoder_hidden_states.flatten(0, 1) if segments > 1 else encoder_hidden_states
            cond = cond.squeeze(1) if cond.ndim == 4 else cond  # (B [* S], L, C)
            k = attn.norm_k(attn.to_k(cond)).unflatten(2, (attn.heads, -1))
            v = attn.to_v(cond).unflatten(2, (attn.heads, -1))
            self._source, self._kv = encoder_hidden_states, (k.transpose(1, 2), v.transpose(1, 2))
        if n % segments:
            raise ValueError(f"{n} tokens cannot be split into {segments} equal prompt segments")
        x = hidden_states.reshape(b * segments, n // segments, -1)
        q = attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *self._kv)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


class PlanSlot:
    """The mutable place the installed processors read their current plan from."""

    def __init__(self) -> None:
        self.plan: AttentionPlan = MaskedPlan()


@contextmanager
def install(transformer: torch.nn.Module) -> Iterator[PlanSlot]:
    """Install rollbench's processors on a Wan transformer; restore the originals on exit."""
    blocks = transformer.blocks
    originals = [(b.attn1.processor, b.attn2.processor) for b in blocks]
    slot = PlanSlot()
    try:
        for i, b in enumerate(blocks):
            b.attn1.set_processor(SelfAttention(i, slot))
            b.attn2.set_processor(CrossAttention())
        yield slot
    finally:
        for b, (p1, p2) in zip(blocks, originals, strict=True):
            b.attn1.set_processor(p1)
            b.attn2.set_processor(p2)
