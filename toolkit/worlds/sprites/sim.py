"""Procedural sprite world: structured prompts and a vectorised simulator.

A clip shows 1 to 3 sprites (circle, square or triangle, one palette colour each) moving at
constant speed on a dark background and bouncing off the walls. A clip is a pure function of
its :class:`Prompt` and an integer seed: the seed fixes each sprite's start position and
direction; the prompt fixes everything else.

Geometry: pixel ``(i, j)`` has its centre at ``(y, x) = (i, j)``; a sprite covers the pixels
whose centres fall inside its continuous shape (hard edges, no antialiasing). A sprite's
position is the centre of its bounding box, kept inside ``[h - 0.5, FRAME_SIZE - 0.5 - h]``
per axis (``h`` its half-extent), so the whole shape stays inside the frame. Bounces are exact:
the free path ``x0 + v t`` is folded into that interval with a triangle wave.

Seeds and splits: split-local seeds are integers in ``[0, SPLIT_SEEDS)``; split ``k`` of
:data:`SPLITS` maps local seed ``s`` to the global seed ``k * SPLIT_SEEDS + s``
(:func:`split_seed`). Global seeds of different splits never coincide, and both the prompt and
the start state of a clip are drawn from streams keyed by the global seed, so the splits are
disjoint sets of clips. Use ``simulate(prompts, [split_seed(s, split)], frames)`` to render a
split's clip; :func:`sample_batch` does this for you.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

FRAME_SIZE = 16
MAX_SPRITES = 3
PROMPT_TOKENS = 8

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.12, 0.80, 0.18),
    "blue": (0.20, 0.42, 1.00),
    "yellow": (0.96, 0.88, 0.12),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "navy": (0.04, 0.05, 0.36),
    "charcoal": (0.24, 0.24, 0.24),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SPEEDS: dict[str, float] = {"slow": 0.5, "fast": 1.0}
SPLITS: tuple[str, ...] = ("train", "val", "heldout")
SPLIT_SEEDS = 2**32

CIRCLE_RADIUS = 3.5
SQUARE_HALF = 3.5  # a half-open 7 x 7 pixel square at any position ("half-size 3" in pixels)
TRIANGLE_BASE = 8.0
TRIANGLE_HEIGHT = 7.0
#: Half-extents (y, x) of each shape's continuous outline around its position.
HALF_EXTENT: dict[str, tuple[float, float]] = {
    "circle": (CIRCLE_RADIUS, CIRCLE_RADIUS),
    "square": (SQUARE_HALF, SQUARE_HALF),
    "triangle": (TRIANGLE_HEIGHT / 2, TRIANGLE_BASE / 2),
}
#: Directions are 45 degrees plus or minus this many degrees, in a random quadrant.
DIRECTION_JITTER_DEG = 20.0

COLOURS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
SPEED_NAMES: tuple[str, ...] = tuple(SPEEDS)

PAD_TOKEN = 0


def check_name(kind: str, value: object, allowed: Sequence[str]) -> None:
    """ValueError naming ``value`` and what is allowed unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


def play_bounds(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (y, x) position of a ``shape`` whose outline stays in the frame."""
    half = np.array(HALF_EXTENT[shape])
    return half - 0.5, FRAME_SIZE - 0.5 - half


def heading(jitter: np.ndarray | float, quadrant: np.ndarray | int) -> np.ndarray | float:
    """A direction in radians: 45 degrees plus ``jitter`` degrees, in ``quadrant`` (0..3)."""
    return np.deg2rad(45.0 + jitter + 90.0 * quadrant)


def velocity(speed: str, angle: float) -> np.ndarray:
    """(y, x) pixels per frame of a sprite moving at ``speed`` (a :data:`SPEEDS` name)."""
    return SPEEDS[speed] * np.array([np.sin(angle), np.cos(angle)])


@dataclass(frozen=True)
class TokenLayout:
    """Prompt token ids: PAD, count (1..MAX_SPRITES), background, speed, one per (shape,
    colour), in that order; a world with other backgrounds (the memory world's scenes) keeps the
    layout with its own background names.

    Attributes:
        backgrounds: the background names, in token order.
    """

    backgrounds: tuple[str, ...] = BACKGROUND_NAMES

    count0: ClassVar[int] = PAD_TOKEN + 1

    @property
    def background0(self) -> int:
        return self.count0 + MAX_SPRITES

    @property
    def speed0(self) -> int:
        return self.background0 + len(self.backgrounds)

    @property
    def sprite0(self) -> int:
        return self.speed0 + len(SPEED_NAMES)

    @property
    def size(self) -> int:
        """Tokens in the vocabulary."""
        return self.sprite0 + len(SHAPES) * len(COLOURS)

    def head(self, count: int, background: str, speed: str) -> list[int]:
        """The count, background and speed tokens."""
        return [self.count0 + count - 1, self.background0 + self.backgrounds.index(background),
                self.speed0 + SPEED_NAMES.index(speed)]

    def sprite(self, shape: str, colour: str) -> int:
        """The token of a (shape, colour) sprite."""
        return self.sprite0 + SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)

    def pad(self, tokens: list[int]) -> list[int]:
        """``tokens`` padded to :data:`PROMPT_TOKENS`."""
        return tokens + [PAD_TOKEN] * (PROMPT_TOKENS - len(tokens))


TOKENS = TokenLayout()
VOCAB_SIZE = TOKENS.size


@dataclass(frozen=True)
class SpriteSpec:
    """One sprite of a prompt.

    Attributes:
        shape: One of :data:`SHAPES`.
        colour: One of the :data:`PALETTE` names.
    """

    shape: str
    colour: str

    def __post_init__(self) -> None:
        check_name("shape", self.shape, SHAPES)
        check_name("colour", self.colour, COLOURS)


@dataclass(frozen=True)
class Prompt:
    """A scene description: sprites (drawn in order, later on top), background and speed.

    Attributes:
        sprites: 1 to :data:`MAX_SPRITES` sprite specs (a list is converted to a tuple).
        background: One of the :data:`BACKGROUNDS` names.
        speed: One of the :data:`SPEEDS` names.
    """

    sprites: tuple[SpriteSpec, ...]
    background: str
    speed: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "sprites", tuple(self.sprites))
        if not 1 <= len(self.sprites) <= MAX_SPRITES:
            raise ValueError(f"a prompt needs 1 to {MAX_SPRITES} sprites, got {len(self.sprites)}")
        for s in self.sprites:
            if not isinstance(s, SpriteSpec):
                raise ValueError(f"sprites must be SpriteSpec instances, got {s!r}")
        check_name("background", self.background, BACKGROUND_NAMES)
        check_name("speed", self.speed, SPEED_NAMES)

    def tokens(self) -> list[int]:
        """Fixed-length token ids: count, background, speed, one per sprite, then PAD."""
        out = TOKENS.head(len(self.sprites), self.background, self.speed)
        return TOKENS.pad(out + [TOKENS.sprite(s.shape, s.colour) for s in self.sprites])

    @classmethod
    def from_tokens(cls, tokens: Sequence[int]) -> Prompt:
        """Inverse of :meth:`tokens`.

        Raises:
            ValueError: If a token is out of place (e.g. a speed token where the count goes).
        """

        def pick(v: int, base: int, names: Sequence[str]) -> str:
            if not 0 <= v - base < len(names):
                raise ValueError(f"token {v} out of place in {list(tokens)}")
            return names[v - base]

        t = [int(v) for v in tokens]
        count = int(pick(t[0], TOKENS.count0, [str(c) for c in range(1, MAX_SPRITES + 1)]))
        names = [f"{sh} {co}" for sh in SHAPES for co in COLOURS]  # sprite tokens, in order
        sprites = [SpriteSpec(*pick(v, TOKENS.sprite0, names).split()) for v in t[3 : 3 + count]]
        return cls(tuple(sprites), pick(t[1], TOKENS.background0, BACKGROUND_NAMES),
                   pick(t[2], TOKENS.speed0, SPEED_NAMES))

    def text(self) -> str:
        """English rendering, e.g. ``"a red circle and a blue square on navy, slow"``."""
        parts = [f"a {s.colour} {s.shape}" for s in self.sprites]
        body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{body} on {self.background}, {self.speed}"

    @classmethod
    def from_text(cls, text: str) -> Prompt:
        """Parse the output of :meth:`text` back into a prompt.

        Raises:
            ValueError: If the text does not follow the format or names an unknown value.
        """
        m = re.fullmatch(r"\s*(.+?) on (\w+), (\w+)\s*", text)
        if m is None:
            raise ValueError(f"cannot parse prompt text {text!r}")
        sprites = []
        for part in re.split(r", | and ", m.group(1)):
            sm = re.fullmatch(r"an? (\w+) (\w+)", part.strip())
            if sm is None:
                raise ValueError(f"cannot parse sprite {part!r} in {text!r}")
            sprites.append(SpriteSpec(shape=sm.group(2), colour=sm.group(1)))
        return cls(tuple(sprites), m.group(2), m.group(3))

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        max_sprites: int = 1,
        shapes: Sequence[str] = SHAPES,
        colours: Sequence[str] = COLOURS,
        backgrounds: Sequence[str] = BACKGROUND_NAMES,
        speeds: Sequence[str] = SPEED_NAMES,
    ) -> Prompt:
        """Draw a prompt: 1..max_sprites sprites of distinct colours, uniform attributes."""
        if not 1 <= max_sprites <= min(MAX_SPRITES, len(colours)):
            raise ValueError(f"max_sprites must be in 1..{min(MAX_SPRITES, len(colours))}")
        n = int(rng.integers(1, max_sprites + 1))
        cols = rng.choice(len(colours), size=n, replace=False)
        sprites = tuple(
            SpriteSpec(shapes[int(rng.integers(len(shapes)))], colours[int(c)]) for c in cols
        )
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        return cls(sprites, bg, speeds[int(rng.integers(len(speeds)))])


def split_seed(seed: int, split: str = "train") -> int:
    """Global seed of a split-local seed: ``SPLITS.index(split) * SPLIT_SEEDS + seed``."""
    check_name("split", split, SPLITS)
    if not 0 <= int(seed) < SPLIT_SEEDS:
        raise ValueError(f"seed must be in [0, {SPLIT_SEEDS}), got {seed}")
    return SPLITS.index(split) * SPLIT_SEEDS + int(seed)


def prompt_for_seed(seed: int, split: str = "train", max_sprites: int = 1) -> Prompt:
    """Deterministic prompt of a split's clip (drawn from the global seed's prompt stream)."""
    rng = np.random.default_rng([split_seed(seed, split), 0])
    return Prompt.random(rng, max_sprites=max_sprites)


def prompt_tokens(prompts: Sequence[Prompt]) -> torch.Tensor:
    """Token ids of the prompts as a LongTensor of shape (N, PROMPT_TOKENS)."""
    return torch.tensor([p.tokens() for p in prompts], dtype=torch.long)


def row_bounds(shape: str, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covered x-offsets ``lo <= dx <= hi`` of each pixel row at offset ``dy`` (empty: lo > hi).

    Every shape is convex along rows, so a row bound describes it exactly. The square is
    half-open (``-h <= d < h``, exactly 7 x 7 pixels anywhere): its upper bound is the largest
    float below ``h`` in the array's dtype.
    """
    check_name("shape", shape, SHAPES)
    f = dy.dtype.type
    if shape == "circle":
        inside = np.abs(dy) <= CIRCLE_RADIUS
        hw = np.sqrt(np.clip(f(CIRCLE_RADIUS**2) - dy * dy, 0, None))
        lo, hi = -hw, hw
    elif shape == "square":
        top = np.nextafter(f(SQUARE_HALF), f(0))
        inside = (dy >= -SQUARE_HALF) & (dy <= top)
        lo, hi = np.full_like(dy, -SQUARE_HALF), np.full_like(dy, top)
    else:
        rel = dy + f(TRIANGLE_HEIGHT / 2)  # 0 at the apex, TRIANGLE_HEIGHT at the base
        inside = (rel >= 0) & (dy <= TRIANGLE_HEIGHT / 2)
        hw = rel * f(TRIANGLE_BASE / 2 / TRIANGLE_HEIGHT)
        lo, hi = -hw, hw
    return np.where(inside, lo, f(np.inf)), np.where(inside, hi, f(-np.inf))


def shape_mask(
    shape: str, dy: torch.Tensor | np.ndarray, dx: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """Boolean coverage of a shape at pixel offsets (dy, dx) from its position (broadcasts)."""
    dy = dy.numpy() if isinstance(dy, torch.Tensor) else np.asarray(dy)
    dx = dx.numpy() if isinstance(dx, torch.Tensor) else np.asarray(dx)
    lo, hi = row_bounds(shape, dy)
    return torch.from_numpy((dx >= lo) & (dx <= hi))


def _reflect(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold free positions into [lo, hi] (elastic bounces): a triangle wave of period 2L."""
    span = hi - lo
    return lo + span - np.abs(np.mod(p - lo, 2 * span) - span)


def trajectories(prompts: Sequence[Prompt], seeds: Sequence[int], frames: int) -> torch.Tensor:
    """True sprite positions (y, x), float64, shape (N, frames, K, 2), K = most sprites.

    Missing sprites (a clip with fewer than K) are NaN.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    n, k = len(prompts), max((len(p.sprites) for p in prompts), default=1)
    start = np.full((n, k, 2), np.nan)
    vel = np.zeros((n, k, 2))
    half = np.ones((n, k, 2))
    for i, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
        rng = np.random.default_rng([int(s), 1])
        u = rng.random((MAX_SPRITES, 2))
        jitter = rng.uniform(-DIRECTION_JITTER_DEG, DIRECTION_JITTER_DEG, MAX_SPRITES)
        ang = heading(jitter, rng.integers(0, 4, MAX_SPRITES))
        for j, sp in enumerate(p.sprites):
            half[i, j] = HALF_EXTENT[sp.shape]
            lo, hi = play_bounds(sp.shape)
            start[i, j] = lo + u[j] * (hi - lo)
            vel[i, j] = velocity(p.speed, ang[j])
    t = np.arange(frames, dtype=np.float64)[None, :, None, None]
    free = start[:, None] + vel[:, None] * t
    h = half[:, None]
    return torch.from_numpy(_reflect(free, h - 0.5, FRAME_SIZE - 0.5 - h))


def simulate(
    prompts: Sequence[Prompt], seeds: Sequence[int], frames: int, chunk: int = 512
) -> torch.Tensor:
    """Render clips as float32 videos of shape (N, frames, 3, FRAME_SIZE, FRAME_SIZE) in [0, 1].

    Args:
        prompts: One prompt per clip.
        seeds: One integer seed per clip (start positions and directions).
        frames: Number of frames per clip.
        chunk: Clips rendered at once (bounds the memory of intermediate masks).

    Returns:
        The videos; identical inputs give identical tensors. Rendering runs in NumPy (one
        thread): torch's intra-op threads made it 5-10x slower on a busy 2-core machine.
    """
    pos = trajectories(prompts, seeds, frames).to(torch.float32).numpy()
    n, k = len(prompts), pos.shape[2]
    grid = np.arange(FRAME_SIZE, dtype=np.float32)
    table = np.zeros((n, k + 1, 3), np.float32)  # per clip: background, then sprite colours
    shape_id = np.full((n, k), -1)
    for i, p in enumerate(prompts):
        table[i, 0] = BACKGROUNDS[p.background]
        for j, s in enumerate(p.sprites):
            table[i, j + 1] = PALETTE[s.colour]
            shape_id[i, j] = SHAPES.index(s.shape)
    flat = table.reshape(-1, 3)
    out = np.empty((n, frames, 3, FRAME_SIZE, FRAME_SIZE), np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        label = np.zeros((b - a, frames, FRAME_SIZE, FRAME_SIZE), np.intp)
        for j in range(k):
            dy = grid[None, None, :, None] - pos[a:b, :, j, 0, None, None]
            dx = grid[None, None, None, :] - pos[a:b, :, j, 1, None, None]
            lo = np.full(dy.shape, np.inf, np.float32)
            hi = np.full(dy.shape, -np.inf, np.float32)
            for si, shape in enumerate(SHAPES):
                m = shape_id[a:b, j] == si
                if m.any():
                    lo[m], hi[m] = row_bounds(shape, dy[m])
            label[(dx >= lo) & (dx <= hi)] = j + 1  # later sprites on top
        label += (np.arange(a, b) * (k + 1))[:, None, None, None]
        for c in range(3):
            out[a:b, :, c] = flat[:, c][label]
    return torch.from_numpy(out)


def sample_batch(
    batch: int,
    frames: int,
    generator_seed: int,
    split: str = "train",
    max_sprites: int = 1,
) -> tuple[torch.Tensor, list[Prompt]]:
    """Draw ``batch`` clips of a split: local seeds from ``generator_seed``, then render.

    Returns:
        Videos of shape (batch, frames, 3, FRAME_SIZE, FRAME_SIZE) and their prompts.
    """
    check_name("split", split, SPLITS)
    local = np.random.default_rng(generator_seed).integers(0, SPLIT_SEEDS, size=batch)
    prompts = [prompt_for_seed(int(s), split, max_sprites) for s in local]
    seeds = [split_seed(int(s), split) for s in local]
    return simulate(prompts, seeds, frames), prompts
