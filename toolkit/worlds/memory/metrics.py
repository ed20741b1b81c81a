"""Recall measures of the memory world: did the sprite that comes back match the one shown?

The run's prompt is a schedule of memory-world shots (``toolkit.worlds.memory.scenes``); from
the shots alone follow the return moments (every cut back to a scene). The analysers read every
frame of the GENERATED video (with the memory world's backgrounds); a block's sprite is the
colour read in most of the frames where a sprite is read, with the shape read most often
(``unknown`` when no frame's shape is readable); a block in which no frame shows a sprite has
none. For each return moment the sprite of the returning block is compared with the sprite the
model itself drew in the last block that showed that scene's sprite (``drawn``): memory of what
it made, not of the simulator's truth. Moments where that earlier block shows no readable sprite
cannot test recall and are left out (counted in ``recall_moments/unreadable``). Against the
prompt's truth, ``recall_truth`` compares with the sprite the introducing shot named.

Chance: colours are drawn uniformly from 4 and shapes from 3, so a model that redraws a random
sprite scores 0.25 (colour), 0.33 (shape), 0.083 (both). ``recall_chance`` measures the
chance level of the run itself: the identity recall when every return is compared with what
was drawn for the OTHER sprites' moments (all such pairs), which also absorbs a model's bias
toward some colours or shapes.

Motion (``scene_speed_ratio``, ``scene_frozen``): inside each block (a cut moves the view to
another scene, so speeds never span a boundary), the speed of the largest sprite read in frame
t is its centroid's displacement from frame ``t - w`` over w, ``w = min(3, frames since the
block began)``, for w >= 2 only (a slow sprite moves in whole-pixel jumps); the ratio is that
over the shot's speed (the simulator's pixels per frame), and a frame is frozen under 0.1
px/frame. Rendered schedules read 0.9-1.02 and under 1% frozen.

Moments are split by where the needed blocks lie under the memory world's default partitions
(sink = first block, recent = last block; ``ReturnMoment.needed_in``): ``mid`` moments can
only be answered from the mid history. Position: the centroid in the returning block's first
frame against the last centroid the model drew for that sprite (it resumes where it was;
chance for uniformly placed sprites is about 4 px).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from toolkit.core.bins import bin_label, in_bin
from toolkit.metrics.base import MetricInput, Unavailable, metric

SINK_BLOCKS, RECENT_BLOCKS = 1, 1  # the memory world's default partitions (memory configs)
POSITION_PX = 2.0  # a position within this many pixels of the last one drawn counts as recalled
GAP_BINS = ((2, 3), (3, 4), (4, 9), (9, None))  # blocks since last shown, [a, b) (core.bins)
NEAR_BLOCKS = 3  # the blocks a default window holds before a block (12 frames): a colour shown
# there can be copied forward without memory of the sprite
BEYOND_GAP = 4  # ``recall/beyond``: last shown 4+ blocks (16 frames) back, outside the default
# windows and recent partitions, and never shown in the first block (which every sink keeps)


def is_beyond(row: dict) -> bool:
    """A return only memory can answer, defined by the schedule alone: its sprite was last
    shown ``BEYOND_GAP`` or more blocks before and never in the video's first block (a return
    the sink holds is no test of memory: with no mid history at all, sink + recent answered
    0.66 of such returns at chance 0.23 on validation schedules)."""
    return row["gap"] >= BEYOND_GAP and row["where"] == "mid"



@dataclass(frozen=True)
class BlockSprite:
    """The sprite a block shows: its modal colour and shape over the frames that show one,
    and the centroids in its first and last frames (None where no sprite is read)."""

    colour: str | None
    shape: str | None
    first: tuple[float, float] | None  # centroid in the block's first frame
    last: tuple[float, float] | None  # centroid in the block's last frame


def _shots(inp: MetricInput) -> list:
    from toolkit.worlds.memory.scenes import Shot

    sched = inp.prompt
    if not hasattr(sched, "at"):
        raise Unavailable("needs a memory-world prompt schedule (model=world-memory-candidate)")
    shots = []
    for b in range(inp.latent_frames // inp.block_frames):
        p = sched.at(b * inp.block_frames)
        try:
            shots.append(p if isinstance(p, Shot) else Shot.from_text(str(p)))
        except ValueError as err:
            raise Unavailable(f"needs memory-world shots: {err}") from None
    return shots


def _moments(inp: MetricInput) -> list:
    from toolkit.worlds.memory.scenes import return_moments

    return inp.cached("moments", lambda: return_moments(_shots(inp)))


def block_sprites(inp: MetricInput) -> list[BlockSprite]:
    """The sprite read in every block of the generated video."""
    from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS
    from toolkit.worlds.sprites.analyse import analyse_video

    def make() -> list[BlockSprite]:
        frames = inp.need_frames()
        if len(frames) != inp.latent_frames:
            raise Unavailable("needs one pixel frame per latent frame (the world's VAE)")
        obs = analyse_video(frames, SCENE_BACKGROUNDS)
        out, bf = [], inp.block_frames
        for b in range(len(obs) // bf):
            seen = [max(o.sprites, key=lambda s: s.area) if o.sprites else None
                    for o in obs[b * bf:(b + 1) * bf]]
            read = [s for s in seen if s is not None]
            colours = Counter(s.colour for s in read)
            shapes = Counter(s.shape for s in read if s.shape != "unknown")
            colour = colours.most_common(1)[0][0] if colours else None
            shape = (shapes.most_common(1)[0][0] if shapes else "unknown") if read else None
            out.append(BlockSprite(colour, shape,
                                   seen[0].centroid if seen[0] else None,
                                   seen[-1].centroid if seen[-1] else None))
        return out

    return inp.cached("block_sprites", make)


def moment_rows(inp: MetricInput) -> list[dict]:
    """One row per return moment: its block, the introducing block (``intro``, the sprite's
    identity), gap, where its needed blocks lie (``where``), the sprites ``drawn`` before and
    ``back`` on return, and 0 / 1 matches (``colour``, ``shape``, ``identity``; absent when
    nothing readable was drawn before), ``truth_identity``, ``position_px``, and ``novel``: the
    colour drawn before is not among those of the ``NEAR_BLOCKS`` blocks just before the return
    (so copying a neighbour cannot answer it)."""
    def make() -> list[dict]:
        sprites = block_sprites(inp)
        rows = []
        for m in _moments(inp):
            drawn, back = sprites[m.last], sprites[m.block]
            where = m.needed_in(SINK_BLOCKS, RECENT_BLOCKS)
            near = {s.colour for s in sprites[max(0, m.block - NEAR_BLOCKS):m.block]
                    if s.colour is not None}
            row = {"block": m.block, "intro": m.intro, "gap": m.gap, "where": where,
                   "drawn": drawn, "back": back, "truth": m.sprite, "readable":
                   drawn.colour is not None, "novel": drawn.colour not in near}
            if row["readable"]:
                row["colour"] = float(back.colour == drawn.colour)
                row["shape"] = float(back.shape == drawn.shape and drawn.shape != "unknown")
                row["identity"] = row["colour"] * row["shape"]
            row["truth_identity"] = float(back.colour == m.sprite.colour
                                          and back.shape == m.sprite.shape)
            if drawn.last is not None and back.first is not None:
                row["position_px"] = float(np.hypot(back.first[0] - drawn.last[0],
                                                    back.first[1] - drawn.last[1]))
            rows.append(row)
        if not rows:
            raise Unavailable("the schedule has no return moment inside the video")
        return rows

    return inp.cached("recall_rows", make)


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else float("nan")


@metric("recall", "higher", "fraction", "scalar", needs=("frames", "world"),
        series=("", "colour", "shape", "mid", "mid_colour"))
def recall(inp: MetricInput) -> dict[str, float]:
    """Share of return moments whose sprite matches the one the model drew before (colour and
    shape); sub-series by attribute and for moments answerable only from mid history."""
    rows = moment_rows(inp)
    mid = [r for r in rows if r["where"] == "mid"]
    return {"": _mean(rows, "identity"), "colour": _mean(rows, "colour"),
            "shape": _mean(rows, "shape"), "mid": _mean(mid, "identity"),
            "mid_colour": _mean(mid, "colour")}


@metric("recall_curve", "higher", "fraction", "curve_block", needs=("frames", "world"),
        series=("", "colour", "beyond_colour"))
def recall_curve(inp: MetricInput) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Identity recall (1 / 0) of each readable return moment, at the returning block's first
    frame; ``colour``: its colour match; ``beyond_colour``: the colour match of the readable
    returns only memory can answer (``is_beyond``). Moments are set by the schedule, so two
    runs of one seed share their steps: a findings file pairs them moment by moment
    (``recall_curve/beyond_colour@paired``, on the moments readable in both runs)."""
    rows = [r for r in moment_rows(inp) if "identity" in r]
    steps = np.array([r["block"] * inp.block_frames for r in rows], np.int64)
    colour = np.array([r["colour"] for r in rows])
    beyond = np.array([is_beyond(r) for r in rows], bool)
    return {"": (steps, np.array([r["identity"] for r in rows])), "colour": (steps, colour),
            "beyond_colour": (steps[beyond], colour[beyond])}


@metric("recall_gap", "higher", "fraction", "scalar", needs=("frames", "world"),
        series=tuple(bin_label(a, b) + sfx for a, b in GAP_BINS for sfx in ("", "_colour")))
def recall_gap(inp: MetricInput) -> dict[str, float]:
    """Identity (and colour) recall by blocks since the sprite was last shown (bins 2, 3, 4-8,
    9_up; named by their inclusive bounds): subsets defined by the schedule alone, the same for
    every strategy."""
    rows = moment_rows(inp)
    gaps = np.array([r["gap"] for r in rows], dtype=np.int64)
    out = {}
    for a, b in GAP_BINS:
        part = [r for r, inside in zip(rows, in_bin(gaps, a, b), strict=True) if inside]
        out[bin_label(a, b)] = _mean(part, "identity")
        out[bin_label(a, b) + "_colour"] = _mean(part, "colour")
    return out


def kappa(recall: float, chance_level: float) -> float:
    """Chance-corrected recall: (recall - chance) / (1 - chance); 0 for a model that draws
    regardless of what it was shown, 1 for perfect recall. Where chance is 1 (the run draws
    one colour for every sprite) nothing it draws can show memory: 0."""
    if not np.isfinite(recall) or not np.isfinite(chance_level):
        return float("nan")
    if chance_level >= 1:
        return 0.0
    return float((recall - chance_level) / (1 - chance_level))


@metric("recall_beyond", "higher", "fraction", "scalar", needs=("frames", "world"),
        series=("", "colour", "count", "unreadable", "novel_colour", "novel_count"),
        units={"count": "count", "unreadable": "count", "novel_count": "count"})
def recall_beyond(inp: MetricInput) -> dict[str, float]:
    """Recall of returns only memory can answer (``is_beyond``: last shown 4+ blocks before,
    never in the first block): outside the default windows, recent partitions and sinks.
    ``count``: such returns readable (their earlier block shows a sprite); ``unreadable``: not.
    ``novel_colour``: colour recall of the readable ones whose earlier colour is absent from the
    3 blocks before the return (``novel``; ``novel_count`` of them). A memoryless model that
    copies a neighbour's colour (the colours of a video recur locally) scores above chance on
    ``colour`` but at or below chance here: on the memory findings runs a sliding window took
    the returning colour from the 3 blocks before 82% of the time."""
    part = [r for r in moment_rows(inp) if is_beyond(r)]
    novel = [r for r in part if r["readable"] and r["novel"]]
    return {"": _mean(part, "identity"), "colour": _mean(part, "colour"),
            "count": float(sum(r["readable"] for r in part)),
            "unreadable": float(sum(not r["readable"] for r in part)),
            "novel_colour": _mean(novel, "colour"), "novel_count": float(len(novel))}


@metric("recall_kappa", "higher", "kappa", "scalar", needs=("frames", "world"),
        series=("", "colour", "beyond", "beyond_colour", "mid", "mid_colour"))
def recall_kappa(inp: MetricInput) -> dict[str, float]:
    """Chance-corrected recall, (recall - chance) / (1 - chance), with the run's own chance
    level (``recall_chance``: returns compared with what was drawn for other sprites), for all
    returns, ``beyond`` (``is_beyond``) and ``mid`` (needed blocks only in the mid history);
    identity and colour. A run that draws one colour has colour kappa 0."""
    rows = moment_rows(inp)
    odds = chance(rows)
    parts = {"": rows, "beyond": [r for r in rows if is_beyond(r)],
             "mid": [r for r in rows if r["where"] == "mid"]}
    out = {}
    for name, part in parts.items():
        out[name] = kappa(_mean(part, "identity"), odds[""])
        out[f"{name}_colour" if name else "colour"] = kappa(_mean(part, "colour"), odds["colour"])
    return out


@metric("recall_swap", "higher", "fraction", "scalar", needs=("frames", "world"),
        series=("needed", "wrong", "count"))
def recall_swap(inp: MetricInput) -> dict[str, float]:
    """Swap returns (``toolkit.worlds.memory.reference.swap_partner``: the last mid block that
    showed the sprite, and a later mid block of another colour): share whose returning block
    shows the colour the model drew in the needed block / in the wrong one, over the swap
    returns where the two drawn colours differ (``count``). Under ``strategy=swap`` the needed
    block sits 3 blocks back and the wrong one 2: content against distance."""
    from toolkit.worlds.memory.reference import swap_partner

    shots, sprites = _shots(inp), block_sprites(inp)
    needed, wrong = [], []
    for r in moment_rows(inp):
        pair = swap_partner(shots, r["block"], SINK_BLOCKS, RECENT_BLOCKS)
        if pair is None:
            continue
        a, b, back = sprites[pair[0]].colour, sprites[pair[1]].colour, r["back"].colour
        if a is None or b is None or a == b:
            continue
        needed.append(back == a)
        wrong.append(back == b)
    if not needed:
        raise Unavailable("no swap return whose needed and wrong blocks show different colours")
    return {"needed": float(np.mean(needed)), "wrong": float(np.mean(wrong)),
            "count": float(len(needed))}


@metric("recall_chance", "lower", "fraction", "scalar", needs=("frames", "world"),
        series=("", "colour"))
def recall_chance(inp: MetricInput) -> dict[str, float]:
    """Identity recall if each return were compared with the sprites drawn for OTHER sprites'
    moments (the run's own chance level; nominal: 1/12 for identity, 1/4 for colour)."""
    return chance(moment_rows(inp))


def chance(rows: list[dict]) -> dict[str, float]:
    """Identity and colour recall of returns compared with what was drawn for OTHER sprites
    (all such pairs of readable moments; rows from ``moment_rows``, of one or many videos
    whose ``intro`` keys are distinct per sprite)."""
    rows = [r for r in rows if r["readable"]]
    ident, col = [], []
    for a in rows:
        for b in rows:
            if a["intro"] != b["intro"]:
                col.append(a["back"].colour == b["drawn"].colour)
                ident.append(col[-1] and a["back"].shape == b["drawn"].shape != "unknown")
    if not ident:
        raise Unavailable("needs readable return moments of at least two different sprites")
    return {"": float(np.mean(ident)), "colour": float(np.mean(col))}


@metric("selection", "higher", "fraction", "scalar", needs=("frames", "world", "trace"),
        series=("hit", "hit_beyond", "recall_hit", "recall_miss", "returns"))
def selection(inp: MetricInput) -> dict[str, float]:
    """Did the strategy hold what a return needs? From the Trace's typed ``attended`` blocks
    (per layer, in full or compressed form) against the schedule's truth: ``hit``: share of
    (return, layer) pairs whose attended blocks include one that showed the returning sprite
    (``hit_beyond``: returns last shown 4+ blocks back); ``recall_hit`` / ``recall_miss``:
    colour recall of the returns whose needed block was attended in every layer / in none."""
    if inp.trace is None or any(b.attended is None for b in inp.trace.blocks):
        raise Unavailable("needs the strategy's attended blocks in the Trace "
                          "(CacheStrategy.attended)")
    by_block = {b.index: b.attended for b in inp.trace.blocks}
    moments = {m.block: m for m in _moments(inp)}
    pairs, beyond, hit_rows, miss_rows = [], [], [], []
    for r in moment_rows(inp):
        layers = [bool(set(att) & set(moments[r["block"]].shown)) for att in by_block[r["block"]]]
        pairs += layers
        if is_beyond(r):
            beyond += layers
        if all(layers):
            hit_rows.append(r)
        elif not any(layers):
            miss_rows.append(r)
    return {"hit": float(np.mean(pairs)),
            "hit_beyond": float(np.mean(beyond)) if beyond else float("nan"),
            "recall_hit": _mean(hit_rows, "colour"), "recall_miss": _mean(miss_rows, "colour"),
            "returns": float(len(moments))}


@metric("recall_truth", "higher", "fraction", "scalar", needs=("frames", "world"))
def recall_truth(inp: MetricInput) -> float:
    """Share of return moments showing the sprite the introducing prompt named."""
    return _mean(moment_rows(inp), "truth_identity")


def _distances(inp: MetricInput) -> np.ndarray:
    vals = [r["position_px"] for r in moment_rows(inp) if "position_px" in r]
    if not vals:
        raise Unavailable("no return moment with a sprite read before and after")
    return np.array(vals)


@metric("recall_position", "lower", "px", "scalar", needs=("frames", "world"))
def recall_position(inp: MetricInput) -> float:
    """Mean distance (px) between where a returning sprite appears and where the model last
    drew it."""
    return float(_distances(inp).mean())


@metric("recall_within", "higher", "fraction", "scalar", needs=("frames", "world"))
def recall_within(inp: MetricInput) -> float:
    """Share of returning sprites that reappear within 2 px of where the model last drew them."""
    return float(np.mean(_distances(inp) <= POSITION_PX))


@metric("recall_moments", "higher", "count", "scalar", needs=("world",),
        series=("", "mid", "unreadable"))
def recall_moments(inp: MetricInput) -> dict[str, float]:
    """Return moments in the video: all, answerable only from mid history, unreadable."""
    rows = moment_rows(inp)
    return {"": float(len(rows)), "mid": float(sum(r["where"] == "mid" for r in rows)),
            "unreadable": float(sum(not r["readable"] for r in rows))}


@metric("continuity", "higher", "fraction", "scalar", needs=("frames", "world"),
        series=("", "colour", "shape"))
def continuity(inp: MetricInput) -> dict[str, float]:
    """Across block boundaries WITHOUT a cut (the same sprite stays on screen): share where the
    sprite keeps its colour and shape: the model's own consistency, the ceiling of recall."""
    from toolkit.worlds.memory.scenes import instances_of

    shots, sprites = _shots(inp), block_sprites(inp)
    inst = instances_of(shots)
    pairs = [(sprites[b - 1], sprites[b]) for b in range(1, len(shots))
             if inst[b] == inst[b - 1] and sprites[b - 1].colour is not None]
    if not pairs:
        raise Unavailable("no block boundary without a cut shows a readable sprite")
    col = [a.colour == b.colour for a, b in pairs]
    shp = [a.shape == b.shape and a.shape != "unknown" for a, b in pairs]
    return {"": float(np.mean(np.logical_and(col, shp))), "colour": float(np.mean(col)),
            "shape": float(np.mean(shp))}


@metric("scene_fidelity", "higher", "fraction", "curve_frame", needs=("frames", "world"),
        series=("", "intro"))
def scene_fidelity(inp: MetricInput) -> dict[str, np.ndarray]:
    """Per frame: the background is the shot's scene (``""``); on new shots, the sprite is the
    one the prompt names (``intro``, NaN elsewhere)."""
    from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS
    from toolkit.worlds.sprites.analyse import analyse_video

    shots, bf = _shots(inp), inp.block_frames
    obs = inp.cached("scene_obs", lambda: analyse_video(inp.need_frames(), SCENE_BACKGROUNDS))
    scene = np.array([o.background == shots[t // bf].scene for t, o in enumerate(obs)], float)
    intro = np.full(len(obs), np.nan)
    for t, o in enumerate(obs):
        want = shots[t // bf].sprite
        if want is not None:
            intro[t] = float(any(s.colour == want.colour and s.shape == want.shape
                                 for s in o.sprites))
    return {"": scene, "intro": intro}


def scene_speeds(inp: MetricInput) -> np.ndarray:
    """Per pixel frame, the largest sprite's speed inside its block (NaN where unread)."""
    from toolkit.worlds.memory.scenes import SCENE_BACKGROUNDS
    from toolkit.worlds.sprites.analyse import analyse_video

    def make() -> np.ndarray:
        obs = inp.cached("scene_obs", lambda: analyse_video(inp.need_frames(), SCENE_BACKGROUNDS))
        cen = np.array([max(o.sprites, key=lambda s: s.area).centroid if o.sprites
                        else (np.nan, np.nan) for o in obs])
        out = np.full(len(obs), np.nan)
        for t in range(len(obs)):
            w = min(3, t % inp.block_frames)
            if w >= 2:  # a slow sprite moves in whole-pixel jumps: one frame is too short
                out[t] = np.hypot(*(cen[t] - cen[t - w])) / w
        return out
    if len(inp.need_frames()) != inp.latent_frames:
        raise Unavailable("needs one pixel frame per latent frame (the world's VAE)")
    return inp.cached("scene_speeds", make)


@metric("scene_speed_ratio", "higher", "ratio", "curve_frame", needs=("frames", "world"))
def scene_speed_ratio(inp: MetricInput) -> np.ndarray:
    """Sprite speed inside blocks over the shot's speed (1 = the simulator's pace, 0 = frozen)."""
    from toolkit.worlds.sprites.sim import SPEEDS

    shots = _shots(inp)
    want = np.array([SPEEDS[shots[t // inp.block_frames].speed]
                     for t in range(inp.latent_frames)])
    return scene_speeds(inp) / want


@metric("scene_frozen", "lower", "fraction of frames", "curve_frame", needs=("frames", "world"))
def scene_frozen(inp: MetricInput) -> np.ndarray:
    """1 where the sprite stands still inside its block (under 0.1 px/frame), NaN where unread."""
    from toolkit.worlds.sprites.evaluate import FROZEN_SPEED

    _shots(inp)  # a memory-world schedule, else unavailable
    speed = scene_speeds(inp)
    return np.where(np.isfinite(speed), speed < FROZEN_SPEED, np.nan)
