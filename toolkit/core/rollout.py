"""The rollout harness: one strategy-agnostic loop over blocks and denoising steps.

``BlockDriver`` is the per-block protocol of the cache contract, written once: the rollout
drives real blocks through it, ``toolkit.bench.kv`` drives meta-tensor blocks through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from toolkit.core.cache import BlockKV, CacheStrategy, FinishedBlock
from toolkit.core.codecs import KVCodec, storing
from toolkit.core.contract import ask_context
from toolkit.core.recache import check_mode
from toolkit.core.recache import recache as rebuild
from toolkit.core.rope import grid_positions
from toolkit.core.sampling import BlockSampler
from toolkit.core.schedule import Conditioning
from toolkit.core.timing import Timer
from toolkit.core.trace import BlockRecord, Trace
from toolkit.registry import strategy_name


class RolloutError(RuntimeError):
    """A rollout stopped early; ``trace`` holds the blocks finished before it."""

    def __init__(self, message: str, trace: Trace) -> None:
        super().__init__(message)
        self.trace = trace


@dataclass
class Rollout:
    """What a rollout returns: latents (B, C, F, H, W), frames (B, F, 3, H, W) or None, Trace."""

    latents: Tensor
    frames: Tensor | None
    trace: Trace


class CachePlan:
    """Attention plan of a rollout: the strategy's context, then the block itself.

    Per layer, the strategy's context parts and the block's own K/V are copied into one
    buffer reused by every layer and pass (a new one only when the context's size changes),
    and attention reads it: the only working copy of the cache is one layer's context. While
    ``recording`` (the cache-fill pass; the strategy is asked with ``fill=True``) each layer's
    K/V of the block is written into the block's (L, B, H, N, D) tensors, which ``take_kv``
    hands to the strategy. ``context_tokens``: the most cached tokens any layer attended since
    it was last set to 0.
    """

    def __init__(self, strategy: CacheStrategy, num_layers: int) -> None:
        self.strategy, self.step, self.recording = strategy, 0, False
        self.num_layers = num_layers
        self.context_tokens = 0
        self._buffer: tuple[Tensor, Tensor] | None = None  # (B, H, capacity, D) each
        self._block: tuple[Tensor, Tensor] | None = None  # (L, B, H, N, D) each
        self.attention = F.scaled_dot_product_attention  # the kernel (memory accounting swaps)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.recording:
            self._record(layer, k, v)
        parts = ask_context(self.strategy.context_parts, layer, q, self.step, self.recording)
        cached = sum(pk.shape[2] for pk, _ in parts)
        self.context_tokens = max(self.context_tokens, cached)
        if not cached:
            return self.attention(q, k, v)
        bk, bv = self._room(k, cached + k.shape[2])
        if not bk.is_meta:  # meta tensors (memory accounting): the buffer's size is all
            torch.cat([_as(pk, k.dtype) for pk, _ in parts] + [k], dim=2, out=bk)
            torch.cat([_as(pv, v.dtype) for _, pv in parts] + [v], dim=2, out=bv)
        return self.attention(q, bk, bv)

    def _room(self, k: Tensor, tokens: int) -> tuple[Tensor, Tensor]:
        """The reused buffer of exactly ``tokens``; a new one when the size or kind changes."""
        shape = (*k.shape[:2], tokens, k.shape[3])
        have = self._buffer[0] if self._buffer is not None else None
        if have is None or have.shape != shape or have.dtype != k.dtype or \
                have.device != k.device:
            have = self._buffer = None  # free the old one before allocating the new one
            self._buffer = (k.new_empty(shape), k.new_empty(shape))
        return self._buffer

    def _record(self, layer: int, k: Tensor, v: Tensor) -> None:
        if self._block is None:
            shape = (self.num_layers, *k.shape)
            self._block = (k.new_empty(shape), k.new_empty(shape))
        self._block[0][layer].copy_(k)
        self._block[1][layer].copy_(v)

    def take_kv(self, index: int, t0: float) -> BlockKV:
        keys, values = self._block
        self._block = None
        return BlockKV(index, keys, values, t0)


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)


class BlockDriver:
    """The per-block protocol of the cache contract, in one place.

    Per block: ``begin(index)`` (the strategy's ``begin_block``: the block's start); then
    ``step(s)`` before each denoising step s = 0 .. steps - 1 and ``filling()`` around the
    cache-fill pass, every attention call in between asking the strategy for its context
    through ``plan`` (install it in the model's slot); ``commit(latents, cond)`` hands the
    strategy the block with its recorded K/V; ``record(...)`` is the block's ``BlockRecord``
    from the strategy's ``footprint``.
    """

    def __init__(self, strategy: CacheStrategy, num_layers: int, steps: int) -> None:
        self.strategy, self.steps = strategy, steps
        self.plan = CachePlan(strategy, num_layers)
        self.index, self.t0, self.start_bytes, self.own_bytes = -1, 0.0, 0, 0

    def begin(self, index: int) -> float:
        """Start block ``index``; its temporal start, as the strategy places it."""
        self.start_bytes = sum(u.bytes for u in self.strategy.footprint().values())
        self.plan.context_tokens, self.own_bytes = 0, 0
        self.index, self.t0 = index, float(self.strategy.begin_block(index))
        return self.t0

    def step(self, step: int) -> None:
        """The next attention calls are denoising step ``step``."""
        self.plan.step, self.plan.recording = step, False

    @contextmanager
    def filling(self) -> Iterator[None]:
        """The attention calls inside are the cache-fill pass (the block's K/V recorded)."""
        self.plan.step, self.plan.recording = self.steps, True
        try:
            yield
        finally:
            self.plan.recording = False

    def commit(self, latents: Tensor, cond: Tensor | None = None) -> None:
        """Hand the strategy the finished block: clean latents, recorded K/V, conditioning."""
        kv = self.plan.take_kv(self.index, self.t0)
        self.own_bytes = kv.nbytes
        self.strategy.commit(FinishedBlock(self.index, latents, kv, cond))

    def record(self, seconds: dict[str, float] | None = None,
               info: dict[str, Any] | None = None,
               attended: list[list[int]] | None = None) -> BlockRecord:
        """The committed block's record: what the strategy holds now, what it attended."""
        held = self.strategy.footprint()
        return BlockRecord(index=self.index, t0=self.t0, context_tokens=self.plan.context_tokens,
                           tokens={k: u.tokens for k, u in held.items()},
                           bytes={k: u.bytes for k, u in held.items()},
                           seconds=seconds or {}, info=info or {},
                           start_bytes=self.start_bytes, own_bytes=self.own_bytes,
                           attended=attended)


BlockCallback = Callable[[BlockRecord], None]


@torch.no_grad()
def rollout(model: Any, strategy: CacheStrategy, prompts: Sequence[Any], latent_frames: int,
            seed: int = 0, progress: bool = False, decode: bool = True,
            callbacks: Sequence[BlockCallback] = (), recache: str = "none",
            codec: Any = None) -> Rollout:
    """Generate ``latent_frames`` latent frames block by block under a cache strategy.

    Args:
        model: a ``VideoModel``.
        strategy: decides the attention context of every block.
        prompts: per video in the batch, one prompt or a prompt schedule (a
            ``PromptSchedule``, or ``[frame, prompt]`` pairs) switching at block boundaries.
        latent_frames: length of the video; a multiple of the model's block size.
        seed: seeds all noise (same seed, same numbers).
        progress: show a progress bar.
        decode: decode frames with the model's VAE when it has one.
        callbacks: called with each block's record as soon as it is finished.
        recache: ``none`` (the cache is kept across prompt switches) or ``switch``: at each
            switch the K/V of every block the strategy holds are rebuilt under the new prompt
            (``toolkit.core.recache``; each rebuild recorded in ``trace.meta["recache"]``).
        codec: how cached blocks are stored (``toolkit.core.codecs``: a ``KVCodec``, a name
            such as ``int4``, a run config's ``kv`` options); None / ``none``: as made.
    """
    # 1. sizes, noise, prompt conditioning (each distinct prompt encoded once, up front)
    spec, device = model.spec, model.device
    bf = spec.block_frames
    blocks = spec.check_blocks("video.latent_frames", latent_frames, positive=True)
    timer = Timer(cuda=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    sampler = BlockSampler(model.sampler)
    conditioning = Conditioning(model.encode_prompt, prompts, bf, latent_frames)
    rebuild_at = set(conditioning.switches()) if check_mode(recache) == "switch" else set()
    shape = (len(prompts), spec.latent_channels, bf, spec.latent_height, spec.latent_width)
    strategy.schedules = tuple(conditioning.schedules)
    strategy.bind(model, timer)
    driver = BlockDriver(strategy, spec.num_layers, model.sampler.steps)
    trace = Trace(strategy=strategy_name(strategy), block_frames=bf,
                  meta={"hparams": strategy.hparams(), "latent_frames": latent_frames,
                        "seed": seed, "provenance": strategy.provenance(),
                        "switches": conditioning.switches()})
    if trace.meta["switches"]:
        trace.meta["schedule"] = conditioning.describe()
    if rebuild_at:
        trace.meta["recache"] = []
    store = KVCodec.of(codec)
    if store is not None:
        store.check(spec.head_dim)
        trace.meta["kv_codec"] = store.label()
    out: list[Tensor] = []
    with model.attach() as slot, storing(store):
        slot.plan = driver.plan
        for index in tqdm(range(blocks), disable=not progress, desc=trace.strategy,
                          unit="block"):
            # 2. the strategy prepares the context and says where this block sits
            cond = conditioning.at(index * bf)
            if index * bf in rebuild_at:  # at a switch: the held K/V under the new prompt
                with timer.section("recache"):
                    done = rebuild(model, strategy, slot, out, cond, index * bf, CachePlan)
                trace.meta["recache"].append(done.to_dict())
            with timer.section("cache_update"):
                t0 = driver.begin(index)
                pos = grid_positions(spec, t0, bf)
            # 3. denoise the block
            noise = torch.randn(shape, generator=generator).to(device)
            with timer.section("denoise"):
                def predict(x: Tensor, sigma: float, step: int, pos: Tensor = pos,
                            cond: Tensor = cond) -> Tensor:
                    driver.step(step)
                    return model.predict_x0(x, sigma, pos, cond)

                x0 = sampler.sample(predict, noise, generator)
            info, attended = strategy.info(), strategy.attended()
            if not torch.isfinite(x0).all():
                raise RolloutError(f"block {index} of strategy {trace.strategy} is not finite "
                                   f"(NaN or inf); {len(trace.blocks)} blocks were finished",
                                   trace)
            # 4. cache-fill pass at timestep 0, then the strategy takes the block
            with timer.section("cache_update"):
                with driver.filling():
                    model.fill(x0, pos, cond)
                driver.commit(x0, cond)
            out.append(x0)
            # 5. record the block
            record = driver.record(timer.take(), info, attended)
            trace.blocks.append(record)
            for callback in callbacks:
                callback(record)
    # 6. decode
    latents = torch.cat(out, dim=2)
    frames = model.vae.decode(latents) if decode and model.vae is not None else None
    return Rollout(latents=latents, frames=frames, trace=trace)
