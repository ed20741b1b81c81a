"""The memory world: scenes that come back.

A video cuts, block by block, between *scenes*. A scene is a background colour holding one
sprite. The sprite's identity (colour and shape) is named only in the prompt of the block that
introduces it (a *new* shot); every later shot of that scene says only which scene it is
("the sprite on maroon"), so when the video cuts back to a scene, what the sprite looks like and
where it was exist only in the blocks that showed it. A scene's clock runs only while it is on
screen: a sprite that comes back resumes exactly where it was last seen, moving on as before.
Scenes are re-introduced now and then with a new sprite, so old blocks go stale.

Per block the schedule holds one :class:`Shot` (the block's prompt). ``simulate_shots`` renders
a schedule; ``return_moments`` lists, for every cut back to a scene, what was shown, when, and
what the returning block needs: the simulator's truth for the recall measures.

Design (decided by the experiments in the memory model's card, see toolkit/worlds/memory/weights/):
- the needed information (colour, shape, position) is never in the prompt of the block that
  needs it; it lies in the scene's earlier blocks, which under the memory configs' partitions
  (sink = first block, recent = last block) are often only in the mid history;
- returns recur (about one block in three of a long rollout) and scenes are re-introduced with a
  new sprite, so a fixed sink goes stale;
- with several scenes alive, a scene's blocks are often older than the newest mid blocks, so
  keeping only the most recent mid blocks is not enough; the returning block's prompt names the
  scene's background, which its blocks show: selection by content can find them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from toolkit.worlds.sprites.sim import (
    BACKGROUNDS,
    COLOURS,
    DIRECTION_JITTER_DEG,
    FRAME_SIZE,
    PALETTE,
    SHAPES,
    SPEED_NAMES,
    SPLIT_SEEDS,
    SPLITS,
    SpriteSpec,
    TokenLayout,
    _reflect,
    check_name,
    heading,
    play_bounds,
    row_bounds,
    split_seed,
    velocity,
)

#: Scene backgrounds: the world's two, and two more dark colours far from every sprite colour.
SCENE_BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    **BACKGROUNDS,
    "maroon": (0.40, 0.05, 0.10),
    "forest": (0.03, 0.30, 0.10),
}
SCENE_NAMES: tuple[str, ...] = tuple(SCENE_BACKGROUNDS)

#: Token vocabulary: the world's layout with the four scene backgrounds. A shot's tokens: count
#: 1, background, speed, the sprite's token on a new shot only (PAD otherwise).
SCENE_TOKENS = TokenLayout(SCENE_NAMES)
SCENE_VOCAB_SIZE = SCENE_TOKENS.size


@dataclass(frozen=True)
class Shot:
    """The prompt of one block of the memory world.

    Attributes:
        scene: the scene's background, one of :data:`SCENE_NAMES`.
        speed: one of the world's speeds (the whole video's).
        sprite: the sprite a *new* shot introduces; None on every other shot of the scene.
    """

    scene: str
    speed: str
    sprite: SpriteSpec | None = None

    def __post_init__(self) -> None:
        check_name("scene", self.scene, SCENE_NAMES)
        check_name("speed", self.speed, SPEED_NAMES)
        if self.sprite is not None and not isinstance(self.sprite, SpriteSpec):
            raise ValueError(f"sprite must be a SpriteSpec or None, got {self.sprite!r}")

    @property
    def new(self) -> bool:
        return self.sprite is not None

    def tokens(self) -> list[int]:
        out = SCENE_TOKENS.head(1, self.scene, self.speed)
        if self.sprite is not None:
            out.append(SCENE_TOKENS.sprite(self.sprite.shape, self.sprite.colour))
        return SCENE_TOKENS.pad(out)

    def text(self) -> str:
        """``"a red circle on maroon, slow"`` (new) or ``"the sprite on maroon, slow"``."""
        who = "the sprite" if self.sprite is None else f"a {self.sprite.colour} {self.sprite.shape}"
        return f"{who} on {self.scene}, {self.speed}"

    @classmethod
    def from_text(cls, text: str) -> Shot:
        """Parse :meth:`text` back. Raises ValueError naming what does not fit."""
        m = re.fullmatch(r"\s*(the sprite|an? (\w+) (\w+)) on (\w+), (\w+)\s*", text)
        if m is None:
            raise ValueError(f"cannot parse memory-world shot {text!r}; expected 'a <colour> "
                             "<shape> on <scene>, <speed>' or 'the sprite on <scene>, <speed>'")
        sprite = None if m.group(1) == "the sprite" else SpriteSpec(m.group(3), m.group(2))
        return cls(m.group(4), m.group(5), sprite)

    def __str__(self) -> str:
        return self.text()


# -- schedules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """How a schedule of shots is drawn, block by block.

    After each block the video stays on its scene with ``p_stay``; otherwise it cuts: back to
    another scene already introduced (``p_return``, when there is one), else to a new shot of a
    background other than the current one (a scene seen before then gets a new sprite).
    """

    p_stay: float = 0.25
    p_return: float = 0.65


#: The process of evaluation rollouts (about 40 returns per 120 blocks, see tests).
EVAL_PROCESS = Process()


@dataclass
class Instance:
    """One sprite of one scene, from its introduction until the scene is re-introduced."""

    ident: int
    scene: str
    sprite: SpriteSpec
    start: np.ndarray  # (2,) position at scene time 0
    velocity: np.ndarray  # (2,) pixels per frame
    blocks: list[int] = field(default_factory=list)  # blocks that showed it, in order

    def position(self, scene_time: np.ndarray) -> np.ndarray:
        """Positions (T, 2) at the instance's own clock (frames it has been on screen)."""
        free = self.start[None] + self.velocity[None] * scene_time[:, None]
        return _reflect(free, *play_bounds(self.sprite.shape))


@dataclass
class Schedule:
    """A drawn memory-world video: per block its shot and the instance it shows.

    Attributes:
        shots: one prompt per block.
        instance: per block, the index into ``instances`` of the sprite on screen.
        instances: every sprite introduced, in order.
        clock: per block, the instance's scene time at the block's first frame.
        block_frames: latent (= pixel) frames per block.
    """

    shots: list[Shot]
    instance: list[int]
    instances: list[Instance]
    clock: list[int]
    block_frames: int

    @property
    def blocks(self) -> int:
        return len(self.shots)

    def positions(self) -> np.ndarray:
        """True sprite positions (frames, 2)."""
        out = []
        for b in range(self.blocks):
            t = self.clock[b] + np.arange(self.block_frames, dtype=np.float64)
            out.append(self.instances[self.instance[b]].position(t))
        return np.concatenate(out)


def _new_instance(rng: np.random.Generator, ident: int, scene: str, speed: str) -> Instance:
    sprite = SpriteSpec(SHAPES[int(rng.integers(len(SHAPES)))],
                        COLOURS[int(rng.integers(len(COLOURS)))])
    lo, hi = play_bounds(sprite.shape)
    start = lo + rng.random(2) * (hi - lo)
    jitter = rng.uniform(-DIRECTION_JITTER_DEG, DIRECTION_JITTER_DEG)
    ang = heading(jitter, int(rng.integers(0, 4)))
    return Instance(ident, scene, sprite, start, velocity(speed, ang))


def draw_schedule(rng: np.random.Generator, blocks: int, block_frames: int,
                  process: Process = EVAL_PROCESS, speed: str | None = None) -> Schedule:
    """Draw a schedule of ``blocks`` shots (block 0 is always a new shot)."""
    speed = speed or SPEED_NAMES[int(rng.integers(len(SPEED_NAMES)))]
    live: dict[str, int] = {}  # scene -> its current instance
    instances: list[Instance] = []
    shots, inst, clock, shown = [], [], [], []  # shown: frames each instance has been on screen
    current: str | None = None
    for b in range(blocks):
        u = rng.random()
        others = [s for s in live if s != current]
        if current is not None and u < process.p_stay:
            scene, new = current, False
        elif others and rng.random() < process.p_return:
            scene, new = others[int(rng.integers(len(others)))], False
        else:
            choices = [s for s in SCENE_NAMES if s != current]
            scene, new = choices[int(rng.integers(len(choices)))], True
        if new:
            live[scene] = len(instances)
            instances.append(_new_instance(rng, len(instances), scene, speed))
            shown.append(0)
        i = live[scene]
        shots.append(Shot(scene, speed, instances[i].sprite if new else None))
        inst.append(i)
        clock.append(shown[i])
        shown[i] += block_frames
        instances[i].blocks.append(b)
        current = scene
    return Schedule(shots, inst, instances, clock, block_frames)


def schedule_for_seed(seed: int, blocks: int, block_frames: int = 4, split: str = "heldout",
                      process: Process = EVAL_PROCESS) -> Schedule:
    """The deterministic schedule of a split's local seed (evaluation rollouts)."""
    rng = np.random.default_rng([split_seed(seed, split), 2])
    return draw_schedule(rng, blocks, block_frames, process)


# -- truth of the return moments ---------------------------------------------------------------
@dataclass(frozen=True)
class ReturnMoment:
    """A cut back to a scene: block ``block`` shows again the sprite of earlier blocks.

    Attributes:
        block: the returning block.
        scene: its scene.
        sprite: the sprite it must show (named only in the prompt of block ``intro``).
        intro: the block that introduced this sprite.
        shown: every earlier block that showed this sprite (the needed blocks).
        last: the last of them (it holds the position the sprite resumes from).
        gap: blocks since ``last`` (``block - last``; at least 2: a return is a cut back).
        position: the true position (y, x) at the returning block's first frame (None when
            only the prompts are known).
        stale: earlier blocks that showed this scene with an older sprite.
    """

    block: int
    scene: str
    sprite: SpriteSpec
    intro: int
    shown: tuple[int, ...]
    last: int
    gap: int
    position: tuple[float, float] | None
    stale: tuple[int, ...] = ()

    def needed_in(self, sink_blocks: int, recent_blocks: int) -> str:
        """Where the needed blocks sit under a sink + recent partition: ``sink`` or
        ``recent`` (some needed block is there), else ``mid`` (only in the mid history)."""
        if any(b < sink_blocks for b in self.shown):
            return "sink"
        if any(b >= self.block - recent_blocks for b in self.shown):
            return "recent"
        return "mid"

    def stale_in(self, sink_blocks: int) -> bool:
        """The sink shows this scene with an older sprite: a wrong answer in plain view."""
        return any(b < sink_blocks for b in self.stale)


def instances_of(shots: Sequence[Shot]) -> list[int]:
    """Per block, which sprite it shows: a new shot starts one, later shots of its scene
    continue it (the schedule's own ``instance`` list, recovered from the prompts alone)."""
    live: dict[str, int] = {}
    out, count = [], 0
    for b, shot in enumerate(shots):
        if shot.new:
            live[shot.scene], count = count, count + 1
        elif shot.scene not in live:
            raise ValueError(f"block {b}: shot {shot.text()!r} returns to a scene never "
                             "introduced (its first shot must name the sprite)")
        out.append(live[shot.scene])
    return out


def batch_shots(schedules: Sequence, upto: int, block_frames: int, who: str) -> list[Shot]:
    """The shots of blocks ``0 .. upto`` of a batch's prompt schedules (``PromptSchedule``s
    of memory-world shots or their text), which must be one schedule: ``who`` keeps one set
    of blocks for the whole batch. Raises ValueError naming ``who`` otherwise."""
    if not schedules:
        raise ValueError(f"{who} reads the memory world's prompt schedule: run it through the "
                         "harness with memory-world prompts")
    per_video = [[s.at(b * block_frames) for b in range(upto + 1)] for s in schedules]
    if any(p != per_video[0] for p in per_video[1:]):
        raise ValueError(f"{who} keeps one set of blocks for the batch: every video must have "
                         "the same schedule")
    return [p if isinstance(p, Shot) else Shot.from_text(str(p)) for p in per_video[0]]


def return_moments(shots: Schedule | Sequence[Shot]) -> list[ReturnMoment]:
    """Every cut back to a scene (a block whose sprite was not on screen in the block before).

    From a ``Schedule`` the moments carry the true position; from shots alone (a schedule
    given as prompts) ``position`` is None.
    """
    sched = shots if isinstance(shots, Schedule) else None
    shots = sched.shots if sched else list(shots)
    inst = instances_of(shots)
    intro = {i: b for b, i in reversed(list(enumerate(inst)))}
    pos = sched.positions() if sched else None
    out = []
    for b in range(1, len(shots)):
        i = inst[b]
        if shots[b].new or inst[b - 1] == i:
            continue
        shown = tuple(x for x in range(b) if inst[x] == i)
        stale = tuple(x for x in range(b) if shots[x].scene == shots[b].scene and inst[x] != i)
        where = None if pos is None else tuple(float(v) for v in pos[b * sched.block_frames])
        out.append(ReturnMoment(b, shots[b].scene, shots[intro[i]].sprite, intro[i], shown,
                                shown[-1], b - shown[-1], where, stale))
    return out


# -- rendering ---------------------------------------------------------------------------------
def render(schedule: Schedule) -> torch.Tensor:
    """Frames (T, 3, FRAME_SIZE, FRAME_SIZE) in [0, 1] of a schedule (T = blocks x block)."""
    pos = schedule.positions().astype(np.float32)
    bf = schedule.block_frames
    t_len = schedule.blocks * bf
    grid = np.arange(FRAME_SIZE, dtype=np.float32)
    out = np.empty((t_len, FRAME_SIZE, FRAME_SIZE, 3), np.float32)
    for b in range(schedule.blocks):
        inst = schedule.instances[schedule.instance[b]]
        sl = slice(b * bf, (b + 1) * bf)
        dy = grid[None, :, None] - pos[sl, 0, None, None]
        dx = grid[None, None, :] - pos[sl, 1, None, None]
        lo, hi = row_bounds(inst.sprite.shape, np.broadcast_to(dy, (bf, FRAME_SIZE, FRAME_SIZE)))
        inside = (dx >= lo) & (dx <= hi)
        out[sl] = np.where(inside[..., None], np.array(PALETTE[inst.sprite.colour], np.float32),
                           np.array(SCENE_BACKGROUNDS[inst.scene], np.float32))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


# -- training clips ----------------------------------------------------------------------------
def mid_return_clip(rng: np.random.Generator, blocks: int, block_frames: int, sink_blocks: int,
                    recent_blocks: int, process: Process, tries: int = 1000) -> Schedule:
    """A schedule whose last block is a return needing only mid blocks (rejection sampling)."""
    for _ in range(tries):
        sched = draw_schedule(rng, blocks, block_frames, process)
        moments = [m for m in return_moments(sched) if m.block == blocks - 1]
        if moments and moments[0].needed_in(sink_blocks, recent_blocks) == "mid":
            return sched
    raise ValueError(f"no {blocks}-block schedule with a mid-only return at its end in {tries} "
                     f"tries (sink {sink_blocks}, recent {recent_blocks} blocks)")


@dataclass(frozen=True)
class ClipMix:
    """Training clips: a share whose last block is a mid-only return, the rest plain draws.

    The in-clip layout (sink = ``sink_blocks``, recent = ``recent_blocks``) is the one the
    PackForcing fine-tune uses, so its compressed mid blocks hold what the last block needs.
    """

    memory_share: float = 0.7
    sink_blocks: int = 1
    recent_blocks: int = 1
    process: Process = Process(p_stay=0.3, p_return=0.6)


def sample_clips(batch: int, frames: int, block_frames: int, generator_seed: int,
                 split: str = "train", mix: ClipMix = ClipMix()
                 ) -> tuple[torch.Tensor, list[list[Shot]], list[Schedule]]:
    """Draw ``batch`` training clips.

    Returns:
        videos (batch, frames, 3, H, W), per clip its shots (one per block), and the schedules.
    """
    check_name("split", split, SPLITS)
    if frames % block_frames:
        raise ValueError(f"frames={frames}: must be a multiple of the block size {block_frames}")
    blocks = frames // block_frames
    local = np.random.default_rng(generator_seed).integers(0, SPLIT_SEEDS, size=batch)
    scheds = []
    for s in local:
        rng = np.random.default_rng([split_seed(int(s), split), 3])
        if rng.random() < mix.memory_share:
            scheds.append(mid_return_clip(rng, blocks, block_frames, mix.sink_blocks,
                                          mix.recent_blocks, mix.process))
        else:
            scheds.append(draw_schedule(rng, blocks, block_frames, mix.process))
    videos = torch.stack([render(s) for s in scheds])
    return videos, [s.shots for s in scheds], scheds
