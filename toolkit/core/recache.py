"""KV re-cache at prompt switches (LongLive's re-cache), run by the harness for any strategy.

With ``recache="switch"`` the rollout rebuilds, at every prompt switch and before the first
block under the new prompt begins, the K/V of every block the strategy holds from the clean
latents the harness kept, under the NEW prompt's conditioning; the strategy is not edited and
does not know:

1. the held blocks are the ``BlockKV`` objects reachable from the strategy's own state (lists,
   tuples, dicts; its shared ``model``, ``rope``... skipped), each once;
2. in block order, a block held at full resolution (a block's tokens) runs through the model's
   cache-fill pass (timestep 0) at the position it holds (``t0``), attending to the blocks
   rebuilt before it (lower index) as they are held (the full one where the strategy keeps
   one, else its stand-in), where they sit; its keys and values are replaced in place,
   rotated at ``t0``;
3. a stand-in (fewer tokens: compressed or pruned) is re-encoded by the strategy's own path,
   ``CacheStrategy.reencode(held, block)``, from its block's full K/V rebuilt as in 2 at the
   position the stand-in was made at (``rotated_at``); a strategy without that path keeps the
   stand-in as it is (counted ``stale``).

So the rebuilt cache is a fresh cache fill of the same blocks under the new prompt (checked in
``tests/test_recache.py``). Its cost goes into the Trace: the seconds (timer section
``recache``, inside the block's ``seconds``) and, per switch, a :class:`Recached` record
(``trace.meta["recache"]``) with the bytes of K/V rewritten and the working bytes the rebuild
needed beyond the cache (one block's K/V of every layer and the largest attention buffer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from toolkit.core.cache import BlockKV, CacheStrategy, FinishedBlock
from toolkit.core.rope import grid_positions

MODES = ("none", "switch")


def check_mode(recache: str) -> str:
    """``recache`` when it is one of :data:`MODES`, else ValueError naming it."""
    if recache not in MODES:
        raise ValueError(f"recache={recache!r}: allowed {list(MODES)} (none: the cache is kept "
                         "across prompt switches; switch: rebuilt under the new prompt)")
    return recache


@dataclass
class Recached:
    """What one re-cache did, at latent frame ``frame``.

    Attributes:
        blocks: full-resolution blocks recomputed.
        reencoded: stand-ins re-encoded by the strategy's own path.
        stale: stand-ins kept as they were (the strategy has no ``reencode``).
        bytes: bytes of K/V rewritten (the new tensors held).
        work_bytes: working bytes beyond the cache: one block's K/V of every layer plus the
            largest attention buffer (context and the block's own K/V of one layer).
        seconds: wall time of the rebuild.
    """

    frame: int
    blocks: int = 0
    reencoded: int = 0
    stale: int = 0
    bytes: int = 0
    work_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_blocks(strategy: CacheStrategy) -> list[BlockKV]:
    """Every ``BlockKV`` reachable from the strategy's own state, each once, in block order
    (a block's full-resolution copy before its stand-ins)."""
    skip, seen, found = set(type(strategy).shared), set(), []

    def walk(x: Any) -> None:
        if id(x) in seen or isinstance(x, Tensor | torch.nn.Module):
            return
        seen.add(id(x))
        if isinstance(x, BlockKV):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple | set):
            for v in x:
                walk(v)

    for name, value in vars(strategy).items():
        if name not in skip:
            walk(value)
    full = strategy.spec.tokens_per_frame * strategy.spec.block_frames
    return sorted(found, key=lambda b: (b.index, b.tokens != full))


class _Rebuilt:
    """The context of a block being rebuilt: the blocks rebuilt before it, where they sit."""

    def __init__(self, rope: Any) -> None:
        self.rope, self.blocks, self.before = rope, [], 0

    def context_parts(self, layer: int, q: Tensor, step: int, fill: bool = False
                      ) -> list[tuple[Tensor, Tensor]]:
        parts = []
        for b in self.blocks:
            if b.index >= self.before:
                continue
            k, v = b.layer_kv(layer, self.rope)
            if k.shape[0] != q.shape[0]:
                k, v = k.expand(q.shape[0], *k.shape[1:]), v.expand(q.shape[0], *v.shape[1:])
            parts.append((k, v))
        return parts


def recache(model: Any, strategy: CacheStrategy, slot: Any, latents: Sequence[Tensor],
            cond: Tensor, frame: int, plan_class: Callable[[Any, int], Any]) -> Recached:
    """Rebuild every block the strategy holds under ``cond`` (see the module docstring).

    Args:
        model: the rollout's model (its processors attached; ``slot`` is their plan slot).
        strategy: the bound strategy, between two blocks.
        slot: the ``PlanSlot`` the model's attention reads its plan from (restored after).
        latents: the clean latents (B, C, F, H, W) of every finished block, by index.
        cond: the new prompt's conditioning (B, L, C).
        frame: the latent frame of the switch (recorded).
        plan_class: the harness's attention plan (``toolkit.core.rollout.CachePlan``), made
            here over the rebuilt blocks.
    """

    spec, out = model.spec, Recached(frame)
    start = _clock(cond)
    rebuilt = _Rebuilt(model.rope)
    plan = plan_class(rebuilt, spec.num_layers)
    full = spec.tokens_per_frame * spec.block_frames
    previous, slot.plan = slot.plan, plan

    def refill(index: int, t0: float) -> BlockKV:
        rebuilt.before = index
        plan.step, plan.recording = model.sampler.steps, True
        try:
            model.fill(latents[index], grid_positions(spec, t0, spec.block_frames), cond)
        finally:
            plan.recording = False
        kv = plan.take_kv(index, t0)
        buffer = sum(t.nbytes for t in plan._buffer) if plan._buffer is not None else 0
        out.work_bytes = max(out.work_bytes, kv.nbytes + buffer)
        return kv

    try:
        for held in held_blocks(strategy):
            if held.tokens == full:
                kv = refill(held.index, held.t0)
                held.keys, held.values, held.rotated_at = kv.keys, kv.values, held.t0
                out.blocks += 1
                out.bytes += held.nbytes
            else:
                kv = refill(held.index, held.rotated_at)
                new = strategy.reencode(held, FinishedBlock(held.index, latents[held.index],
                                                            kv, cond))
                if new is None:
                    out.stale += 1
                else:
                    held.keys, held.values = new.keys, new.values
                    held.rotated_at = new.rotated_at
                    out.reencoded += 1
                    out.bytes += held.nbytes
            if not any(b.index == held.index for b in rebuilt.blocks):
                rebuilt.blocks.append(held)
    finally:
        slot.plan = previous
    out.seconds = _clock(cond) - start
    return out


def _clock(like: Tensor) -> float:
    if like.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter()
