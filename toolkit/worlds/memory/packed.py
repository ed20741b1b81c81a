"""Layout-matched training and validation contexts of the memory world.

What a bounded strategy shows the model at 24x is not a contiguous clip but a *packed* one: the
sink block, a few chosen mid blocks and the recent block, re-indexed to the trained positions,
then the block being made. A model trained only on contiguous 5-block clips learns "copy what I
drew two blocks back" (two returns in three are two blocks back there). Here a training context
is packed from a long schedule exactly as a bounded strategy packs it, with the block that last
showed the returning sprite at a random mid slot whatever its true age, and blocks that did not
show it (other scenes, stale sprites of the same scene) at the other slots, so that distance
carries no information and only content does.

A context block gets a loss only when its answer is in view: a new shot (its prompt names the
sprite), or a block whose sprite's previous block sits in an earlier slot (trial 6: training
blocks whose answer is not in the context taught the model to ignore its context).

Validation contexts (``layout_contexts``) fix the layouts the gates read: ``oracle`` (sink, the
last needed blocks, recent), ``wrong`` (the same with blocks that did not show the sprite),
``swap`` (needed at distance 3, a wrong block of another colour at distance 2) and ``mirror``
(the wrong block first). ``layout_recall`` samples the returning block with the model's own
sampler from rendered contexts and reads its colour with the analysers.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core.attention import MaskedPlan
from toolkit.core.rope import grid_positions
from toolkit.core.sampling import BlockSampler
from toolkit.worlds.memory.scenes import (
    EVAL_PROCESS,
    ClipMix,
    Process,
    Schedule,
    Shot,
    draw_schedule,
    render,
    return_moments,
    sample_clips,
)
from toolkit.worlds.sprites.sim import SPLIT_SEEDS, split_seed

LAYOUTS = ("oracle", "wrong", "swap", "mirror")


@dataclass(frozen=True)
class PackedMix:
    """How training contexts are drawn.

    Attributes:
        share: share of packed contexts; the rest are contiguous clips of the plain recipe
            (``ClipMix``), so 1x behaviour is kept.
        min_blocks, max_blocks: length range of the long schedules contexts are packed from.
        two_needed: chance that a mid slot before the last needed block holds an earlier
            needed block (the oracle layout) rather than a wrong one.
        hard_negative: chance that a wrong block placed before the needed one is a stale block
            of the returning scene (its older sprite) when the schedule has one.
        window_share: share of the packed draws that are a contiguous window ending at the
            return (what ``window`` shows), packed and weighted by the same rule.
    """

    share: float = 0.8
    min_blocks: int = 24
    max_blocks: int = 96
    two_needed: float = 0.3
    hard_negative: float = 0.5
    window_share: float = 0.15
    process: Process = EVAL_PROCESS

    def __post_init__(self) -> None:
        for name in ("share", "two_needed", "hard_negative", "window_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"packed.{name}={v}: must be in [0, 1]")
        if not 8 <= self.min_blocks <= self.max_blocks:
            raise ValueError(f"packed blocks {self.min_blocks}..{self.max_blocks}: need "
                             "8 <= min_blocks <= max_blocks")


def previous_shown(sched: Schedule, block: int) -> int | None:
    """The last block before ``block`` that showed the same sprite (None: a new sprite)."""
    i = sched.instance[block]
    earlier = [b for b in sched.instances[i].blocks if b < block]
    return earlier[-1] if earlier else None


def slot_weights(sched: Schedule, slots: list[int], return_weight: float) -> list[float]:
    """Loss weight per slot: 0 where the block's answer is not in view, ``return_weight`` on
    cuts back to a sprite whose previous block is in view, 1 otherwise."""
    out = []
    for j, b in enumerate(slots):
        if sched.shots[b].new:
            out.append(1.0)
            continue
        prev = previous_shown(sched, b)
        if prev not in slots[:j]:
            out.append(0.0)
        elif prev != b - 1:  # a cut back to this sprite: a memory block
            out.append(return_weight)
        else:
            out.append(1.0)
    return out


def mid_returns(sched: Schedule, first: int = 3) -> list:
    """Returns at block >= ``first`` whose needed blocks are all mid (not block 0, not the
    block before)."""
    return [m for m in return_moments(sched)
            if m.block >= first and m.needed_in(1, 1) == "mid"]


def _wrong(sched: Schedule, m, lo: int, hi: int, rng: np.random.Generator,
           hard: float = 0.0, avoid: tuple[int, ...] = ()) -> int | None:
    """A block in [lo, hi) that did not show the returning sprite (a stale block of its scene
    with chance ``hard`` when there is one)."""
    pool = [b for b in range(lo, hi) if b not in m.shown and b not in avoid]
    if not pool:
        return None
    stale = [b for b in pool if b in m.stale]
    if stale and rng.random() < hard:
        return int(rng.choice(stale))
    return int(rng.choice(pool))


def pack_slots(sched: Schedule, m, mids: int, after: int, rng: np.random.Generator,
               mix: PackedMix) -> list[int] | None:
    """Slots [0, mid..., m.block - 1, m.block] of one training context for return ``m``, with
    the last needed block followed by ``after`` wrong mid blocks (so it sits ``after + 2``
    slots before the return). None when the schedule cannot fill the layout."""
    if m.gap - 2 < after:
        return None
    pool = np.arange(m.last + 1, m.block - 1)
    late = sorted(rng.choice(pool, size=after, replace=False).tolist())
    chosen = [m.last, *late]
    earlier = [b for b in m.shown if 1 <= b < m.last]
    while len(chosen) < mids:
        if earlier and rng.random() < mix.two_needed:
            w: int | None = earlier.pop()
        else:
            w = _wrong(sched, m, 1, m.last, rng, mix.hard_negative, tuple(chosen))
        if w is None:
            return None
        chosen.append(w)
    return [0, *sorted(chosen), m.block - 1, m.block]


@dataclass
class Context:
    """One packed context: its schedule, the blocks at its slots and their loss weights."""

    sched: Schedule
    slots: list[int]
    weights: list[float]

    @property
    def shots(self) -> list[Shot]:
        return [self.sched.shots[b] for b in self.slots]

    def frames(self) -> torch.Tensor:
        """Frames (slots x block, 3, H, W) of the context's blocks, in slot order."""
        video = render(self.sched)
        bf = self.sched.block_frames
        return torch.cat([video[b * bf:(b + 1) * bf] for b in self.slots])


def packed_context(rng: np.random.Generator, blocks: int, block_frames: int, mix: PackedMix,
                   return_weight: float) -> Context:
    """Draw one training context of ``blocks`` slots (the last the return being made)."""
    while True:
        length = int(rng.integers(mix.min_blocks, mix.max_blocks + 1))
        sched = draw_schedule(rng, length, block_frames, mix.process)
        moments = mid_returns(sched, first=blocks - 1)
        if not moments:
            continue
        after = int(rng.integers(blocks - 3))  # the needed block's slot: uniform over mids
        if rng.random() < mix.window_share:
            m = moments[int(rng.integers(len(moments)))]
            slots: list[int] | None = list(range(m.block - blocks + 1, m.block + 1))
        else:
            fits = [x for x in moments if x.gap - 2 >= after]
            if not fits:
                continue
            m = fits[int(rng.integers(len(fits)))]
            slots = pack_slots(sched, m, blocks - 3, after, rng, mix)
        if slots is None:
            continue
        return Context(sched, slots, slot_weights(sched, slots, return_weight))


def sample_packed(batch: int, frames: int, block_frames: int, generator_seed: int,
                  split: str, mix: PackedMix, clip_mix: ClipMix, return_weight: float
                  ) -> tuple[torch.Tensor, list[list[Shot]], torch.Tensor]:
    """A training batch mixing packed contexts and plain clips.

    Returns:
        videos (batch, frames, 3, H, W), per clip its shots (one per block), and loss weights
        per block (batch, blocks): plain clips weigh returns ``return_weight`` as the plain
        recipe does.
    """
    blocks = frames // block_frames
    local = np.random.default_rng(generator_seed).integers(0, SPLIT_SEEDS, size=batch)
    videos, shots, weights = [], [], []
    for s in local:
        rng = np.random.default_rng([split_seed(int(s), split), 5])
        if rng.random() < mix.share:
            ctx = packed_context(rng, blocks, block_frames, mix, return_weight)
            videos.append(ctx.frames())
            shots.append(ctx.shots)
            weights.append(ctx.weights)
        else:
            v, sh, sc = sample_clips(1, frames, block_frames, int(rng.integers(2**31)), split,
                                     clip_mix)
            videos.append(v[0])
            shots.append(sh[0])
            w = [1.0] * blocks
            for mo in return_moments(sc[0]):
                w[mo.block] = return_weight
            weights.append(w)
    return torch.stack(videos), shots, torch.tensor(weights)


# -- validation layouts ------------------------------------------------------------------------
def layout_slots(sched: Schedule, m, layout: str, rng: np.random.Generator,
                 needed: int = 2) -> list[int] | None:
    """Slots of one validation context of return ``m`` (None: the layout does not apply).

    ``oracle``: sink, the last ``needed`` blocks that showed the sprite, recent, return.
    ``wrong``: the same number of mid blocks that did not show it. ``swap``: the needed block
    and, after it, a wrong block whose sprite has another colour (distance 3 and 2).
    ``mirror``: the wrong block (of another colour, before the needed one) first.
    """
    shown = [b for b in m.shown if 1 <= b <= m.block - 2]
    mid = range(1, m.block - 1)
    colour = m.sprite.colour

    def other_colour(b: int) -> bool:
        return sched.instances[sched.instance[b]].sprite.colour != colour

    if layout == "oracle":
        chosen = shown[-needed:]
    elif layout == "wrong":
        pool = [b for b in mid if b not in m.shown]
        if len(pool) < min(needed, len(shown)):
            return None
        chosen = sorted(rng.choice(pool, size=min(needed, len(shown)), replace=False).tolist())
    elif layout in ("swap", "mirror"):
        side = range(m.last + 1, m.block - 1) if layout == "swap" else range(1, m.last)
        pool = [b for b in side if other_colour(b)]
        if not pool:
            return None
        chosen = sorted([m.last, int(rng.choice(pool))])
    else:
        raise ValueError(f"layout={layout!r}: allowed {list(LAYOUTS)}")
    return [0, *chosen, m.block - 1, m.block]


def layout_contexts(n: int, layout: str, split: str = "val", seed: int = 0,
                    blocks: int = 96, block_frames: int = 4) -> list[Context]:
    """``n`` validation contexts of one layout, one return per schedule (deterministic)."""
    out: list[Context] = []
    k = 0
    while len(out) < n:
        rng = np.random.default_rng([split_seed((seed * 7919 + k) % SPLIT_SEEDS, split), 6])
        k += 1
        sched = draw_schedule(rng, blocks, block_frames, EVAL_PROCESS)
        moments = mid_returns(sched)
        if not moments:
            continue
        m = moments[int(rng.integers(len(moments)))]
        slots = layout_slots(sched, m, layout, rng)
        if slots is not None:
            out.append(Context(sched, slots, [0.0] * len(slots)))
        if k > 50 * n:
            raise ValueError(f"no {layout} contexts in {k} schedules")
    return out


def sample_last(model, contexts: list[Context], seed: int = 0) -> torch.Tensor:
    """The last block of each context generated by the model's sampler from the clean
    (rendered) earlier blocks; contexts of one length. Returns frames (B, bf, 3, H, W)."""
    spec = model.spec
    bf, tpf = spec.block_frames, spec.tokens_per_frame
    nb = len(contexts[0].slots)
    clean = model.vae.encode(torch.stack([c.frames()[:-bf] for c in contexts]).to(model.device))
    shots = [s for c in contexts for s in c.shots]
    cond = model.encode_prompt(shots).unflatten(0, (len(contexts), nb))
    pos = grid_positions(spec, 0.0, nb * bf)
    block = torch.arange(nb * bf).repeat_interleave(tpf) // bf
    mask = block[:, None] >= block[None, :]  # block-causal: the last block sees all and itself
    gen = torch.Generator().manual_seed(seed)
    shape = (len(contexts), spec.latent_channels, bf, spec.latent_height, spec.latent_width)
    noise = torch.randn(shape, generator=gen).to(model.device)
    n_clean = clean.shape[2] * tpf

    def predict(x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        t = torch.cat([torch.zeros(len(contexts), n_clean),
                       torch.full((len(contexts), bf * tpf), 1000.0 * sigma)], 1)
        out = model.forward_tokens(torch.cat([clean, x], 2), t.to(model.device), pos, cond,
                                   plan=MaskedPlan(mask.to(model.device)))
        return model.to_x0(out[:, :, -bf:].float(), x, sigma)

    attached = model._slot is not None  # inside a training loop's attach(): keep its slot
    with torch.no_grad(), contextlib.nullcontext() if attached else model.attach():
        x0 = BlockSampler(model.sampler).sample(predict, noise, gen)
        return model.vae.decode(x0)


def read_colours(frames: torch.Tensor) -> list[str | None]:
    """The modal sprite colour of each block (B, bf, 3, H, W) read by the analysers."""
    from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS
    from toolkit.worlds.sprites.analyse import analyse_video

    out = []
    for video in frames:
        obs = analyse_video(video, SCENE_BACKGROUNDS)
        read = Counter(max(o.sprites, key=lambda s: s.area).colour for o in obs if o.sprites)
        out.append(read.most_common(1)[0][0] if read else None)
    return out


def layout_recall(model, n: int = 96, split: str = "val", seed: int = 0,
                  batch: int = 48) -> dict[str, float]:
    """Colour recall of the returning block per validation layout (read from the model's own
    samples). ``swap_needed`` / ``swap_wrong``: share of swap returns showing the needed
    block's colour / the wrong block's (likewise ``mirror_*``); ``*_unread``: no sprite read."""
    out: dict[str, float] = {}
    for layout in LAYOUTS:
        ctxs = layout_contexts(n, layout, split, seed, block_frames=model.spec.block_frames)
        by_len: dict[int, list[Context]] = {}
        for c in ctxs:
            by_len.setdefault(len(c.slots), []).append(c)
        hit, wrong, unread = 0, 0, 0
        for group in by_len.values():
            for i in range(0, len(group), batch):
                part = group[i:i + batch]
                for c, col in zip(part, read_colours(sample_last(model, part, seed)), strict=True):
                    m = next(x for x in return_moments(c.sched) if x.block == c.slots[-1])
                    if col is None:
                        unread += 1
                    elif col == m.sprite.colour:
                        hit += 1
                    elif layout in ("swap", "mirror"):
                        other = next(b for b in c.slots[1:-2] if b not in m.shown)
                        wrong += col == c.sched.instances[c.sched.instance[other]].sprite.colour
        out[layout] = hit / len(ctxs)
        out[f"{layout}_unread"] = unread / len(ctxs)
        if layout in ("swap", "mirror"):
            out[f"{layout}_wrong"] = wrong / len(ctxs)
    return out
