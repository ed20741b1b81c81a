"""The recall sub-measures on constructed videos whose per-bin and mid-only answers differ from
the whole: some returning blocks are re-drawn with a wrong colour, some with a wrong shape, and
every sub-measure must equal its value counted here by hand from the blocks' sprites."""

import dataclasses

import numpy as np
import pytest

from toolkit.core.schedule import PromptSchedule
from toolkit.core.spec import ModelSpec
from toolkit.metrics import MetricInput, compute
from toolkit.worlds.memory.scenes import Instance, render, return_moments, schedule_for_seed
from toolkit.worlds.sprites.sim import COLOURS, SHAPES, SpriteSpec

SPEC = ModelSpec(num_layers=4, num_heads=4, head_dim=32, latent_channels=12, latent_height=8,
                 latent_width=8)
BINS = {"2": (2, 2), "3": (3, 3), "4-8": (4, 8), "9_up": (9, 10**9)}  # inclusive, as documented


def _other(items: tuple[str, ...], item: str, k: int = 0) -> str:
    """Another item than ``item``: the (1 + k % (len - 1))-th after it."""
    return items[(items.index(item) + 1 + k % (len(items) - 1)) % len(items)]


def constructed(seed: int, blocks: int):
    """A schedule's rendering with returns re-drawn by a fixed rule, and per block the sprite
    it shows: a return answerable from the sink or the recent window gets the wrong colour and
    shape, a mid-only one the wrong colour 3 or 5 blocks after it was last seen and the wrong
    shape in every third block (so the gap bins, mid-only and the whole all differ)."""
    sched = schedule_for_seed(seed, blocks)
    instance, instances = list(sched.instance), list(sched.instances)
    for m in return_moments(sched):
        old = instances[instance[m.block]]
        sprite = old.sprite
        mid = m.needed_in(1, 1) == "mid"
        if m.gap in (3, 5) or not mid:
            sprite = SpriteSpec(sprite.shape, _other(COLOURS, sprite.colour, m.block))
        if m.block % 3 == 0 or not mid:
            sprite = SpriteSpec(_other(SHAPES, sprite.shape, m.block), sprite.colour)
        if sprite != old.sprite:
            instances.append(Instance(len(instances), old.scene, sprite, old.start, old.velocity))
            instance[m.block] = len(instances) - 1
    made = dataclasses.replace(sched, instance=instance, instances=instances)
    shown = [instances[i].sprite for i in instance]
    return sched, made, shown


def expected(sched, shown: list[SpriteSpec]) -> dict[str, float]:
    """Every recall sub-measure counted from the blocks' sprites: a return matches when its
    block shows the sprite of the last block that showed that scene's sprite."""
    rows = []
    for m in return_moments(sched):
        back, drawn = shown[m.block], shown[m.last]
        near = {shown[b].colour for b in range(max(0, m.block - 3), m.block)}
        rows.append({"gap": m.gap, "mid": m.needed_in(1, 1) == "mid",
                     "colour": float(back.colour == drawn.colour),
                     "identity": float(back == drawn), "novel": drawn.colour not in near})

    def mean(sel, key="identity"):
        return float(np.mean([r[key] for r in sel])) if sel else float("nan")

    mid = [r for r in rows if r["mid"]]
    out = {"recall": mean(rows), "recall/colour": mean(rows, "colour"),
           "recall/mid": mean(mid), "recall/mid_colour": mean(mid, "colour"),
           "recall_moments": float(len(rows)), "recall_moments/mid": float(len(mid))}
    novel = [r for r in rows if r["mid"] and r["gap"] >= 4 and r["novel"]]
    out["recall_beyond/novel_colour"] = mean(novel, "colour")
    out["recall_beyond/novel_count"] = float(len(novel))
    for name, (lo, hi) in BINS.items():
        out[f"recall_gap/{name}"] = mean([r for r in rows if lo <= r["gap"] <= hi])
    return out


@pytest.fixture(scope="module")
def measured():
    sched, made, shown = constructed(seed=0, blocks=120)
    prompt = PromptSchedule(tuple((b * sched.block_frames, s) for b, s in enumerate(sched.shots)))
    scalars = compute(MetricInput(frames=render(made), prompt=prompt, spec=SPEC),
                      "memory").scalars()
    return scalars, expected(sched, shown)


def test_the_constructed_video_separates_the_sub_measures(measured):
    """Guards the test below: each sub-measure's right answer differs from the whole's (and
    the gap bins from each other), so a sub-measure computed over the wrong returns shows."""
    _, want = measured
    whole = want["recall"]
    parts = [want[k] for k in ("recall/mid", *(f"recall_gap/{b}" for b in BINS))]
    assert all(np.isfinite(parts)) and all(abs(p - whole) > 0.02 for p in parts), want
    assert len({round(p, 6) for p in parts}) == len(parts), want
    assert abs(want["recall/mid_colour"] - want["recall/colour"]) > 0.02, want
    assert 3 <= want["recall_beyond/novel_count"] < want["recall_moments/mid"], want


@pytest.mark.parametrize("key", ["recall", "recall/colour", "recall/mid", "recall/mid_colour",
                                 *(f"recall_gap/{b}" for b in BINS), "recall_moments",
                                 "recall_moments/mid", "recall_beyond/novel_colour",
                                 "recall_beyond/novel_count"])
def test_recall_sub_measures_match_the_count_by_hand(measured, key):
    got, want = measured
    assert got[key] == pytest.approx(want[key], abs=1e-12), (key, got[key], want[key])
