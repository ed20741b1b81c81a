"""Chance-corrected recall, schedule-defined return subsets, swap returns and the memory world's
reference strategies, on constructed videos (rendered schedules, recoloured where a test needs
the model to have drawn something else)."""

import dataclasses

import numpy as np
import pytest

from toolkit.core.spec import ModelSpec
from toolkit.metrics import MetricInput
from toolkit.worlds.memory.evaluate import as_prompt
from toolkit.worlds.memory.metrics import (
    BEYOND_GAP,
    kappa,
    moment_rows,
    recall,
    recall_beyond,
    recall_kappa,
    recall_swap,
)
from toolkit.worlds.memory.reference import Oracle, swap_partner
from toolkit.worlds.memory.scenes import Instance, render, return_moments, schedule_for_seed
from toolkit.worlds.sprites.sim import SpriteSpec

BLOCKS = 60


def _spec() -> ModelSpec:
    return ModelSpec(num_layers=1, num_heads=1, head_dim=8, latent_channels=12,
                     latent_height=8, latent_width=8, patch=(1, 2, 2), block_frames=4,
                     train_frames=20)


def _inp(sched, video=None) -> MetricInput:
    return MetricInput(frames=render(sched) if video is None else video,
                       prompt=as_prompt(sched), spec=_spec())


@pytest.fixture(scope="module")
def sched():
    return schedule_for_seed(3, BLOCKS, 4, "val")


def test_truth_has_kappa_one(sched):
    got = recall_kappa.fn(_inp(sched))
    assert got["colour"] == pytest.approx(1.0) and got["beyond_colour"] == pytest.approx(1.0)


def test_kappa_is_zero_for_a_run_that_draws_one_colour(sched):
    """Raw colour recall is perfect when every sprite is red; kappa says it shows no memory."""
    red = dataclasses.replace(sched, instances=[
        Instance(i.ident, i.scene, SpriteSpec(i.sprite.shape, "red"), i.start, i.velocity,
                 i.blocks) for i in sched.instances])
    inp = _inp(sched, render(red))
    assert recall.fn(inp)["colour"] == 1.0
    assert recall_kappa.fn(inp)["colour"] == 0.0


def test_kappa_formula():
    assert kappa(0.68, 0.68) == pytest.approx(0.0)
    assert kappa(0.90, 0.33) == pytest.approx((0.90 - 0.33) / 0.67)
    assert np.isnan(kappa(float("nan"), 0.3))


def _recolour_block(video, sched, block, colour="white"):
    """The frames of ``block`` with its sprite drawn in another colour."""
    from toolkit.worlds.sprites.sim import PALETTE

    other = next(c for c in PALETTE if c != sched.instances[sched.instance[block]].sprite.colour)
    inst = sched.instances[sched.instance[block]]
    fake = dataclasses.replace(sched, instances=[
        dataclasses.replace(i, sprite=SpriteSpec(i.sprite.shape, other)) if i is inst else i
        for i in sched.instances])
    bf = sched.block_frames
    out = video.clone()
    out[block * bf:(block + 1) * bf] = render(fake)[block * bf:(block + 1) * bf]
    return out


def test_beyond_counts_only_returns_last_shown_four_or_more_blocks_back_outside_the_sink(sched):
    """Returns 2-3 blocks back drawn wrong: whole recall falls, ``beyond`` does not; and the
    other way round."""
    moments = return_moments(sched)
    relays = {m.last for m in moments}  # blocks a later return is compared with: left alone
    far_ = [m for m in moments if m.gap >= BEYOND_GAP and m.needed_in(1, 1) == "mid"]
    near = [m.block for m in moments if m not in far_ and m.block not in relays]
    far = [m.block for m in far_ if m.block not in relays]
    assert near and far
    video = render(sched)
    for b in near:
        video = _recolour_block(video, sched, b)
    got = recall_beyond.fn(_inp(sched, video))
    assert got["colour"] == 1.0
    assert got["count"] == len(far_)
    assert recall.fn(_inp(sched, video))["colour"] < 1.0
    video = render(sched)
    for b in far:
        video = _recolour_block(video, sched, b)
    got = recall_beyond.fn(_inp(sched, video))["colour"]
    assert got == pytest.approx(1 - len(far) / len(far_))


def test_swap_returns_on_truth(sched):
    got = recall_swap.fn(_inp(sched))
    assert got["needed"] == 1.0 and got["wrong"] == 0.0 and got["count"] >= 1


def test_swap_partner_is_the_later_block_of_another_colour(sched):
    for m in return_moments(sched):
        pair = swap_partner(sched.shots, m.block)
        if pair is None:
            continue
        needed, wrong = pair
        assert needed == [b for b in m.shown if 1 <= b < m.block - 1][-1]
        assert needed < wrong < m.block - 1
        colour = lambda b: sched.instances[sched.instance[b]].sprite.colour  # noqa: E731
        assert colour(wrong) != colour(m.block)


@pytest.fixture(scope="module")
def memory_model():
    from toolkit.worlds.sprites.model import load_world

    return load_world("world-memory.safetensors")


@pytest.mark.parametrize("pick", ["needed", "wrong", "swap"])
def test_oracle_keeps_exactly_the_chosen_blocks(memory_model, pick):
    """Every block attends the sink, the recent block and the mid blocks its pick names:
    the last two that showed its sprite (oracle), as many that did not (wrong), the swap pair."""
    from toolkit.core.rollout import rollout

    bf, blocks = 4, 24
    sched = schedule_for_seed(5, blocks, bf, "val")
    strategy = Oracle(sink_frames=bf, recent_frames=bf, pick=pick)
    out = rollout(memory_model, strategy, [as_prompt(sched)], blocks * bf, seed=0, decode=False)
    inst = sched.instance
    for record in out.trace.blocks[2:]:  # what each block attended (recorded before commit)
        i = record.index
        held = set(record.info["context_blocks"])
        assert {0, i - 1} <= held
        kept = held - {0, i - 1}
        shown = [b for b in range(1, i - 1) if inst[b] == inst[i]]
        if pick == "needed":
            assert kept == set(shown[-2:]), i
        elif pick == "wrong":
            assert len(kept) == len(shown[-2:]) and not kept & set(shown), i
        else:
            pair = swap_partner(sched.shots, i)
            assert kept == (set(pair) if pair else set(shown[-1:])), i
    assert any(len(r.info["context_blocks"]) > 2 for r in out.trace.blocks)


def test_oracle_needs_the_schedule(memory_model):
    from toolkit.core.rollout import rollout

    with pytest.raises(ValueError, match="same schedule"):
        rollout(memory_model, Oracle(), [as_prompt(schedule_for_seed(s, 6, 4)) for s in (1, 2)],
                24, decode=False)


def test_rows_pair_moments_to_blocks(sched):
    rows = moment_rows(_inp(sched))
    assert [r["block"] for r in rows] == [m.block for m in return_moments(sched)]


def test_packforcing_truth_selection_picks_the_needed_blocks(memory_model):
    """``selection=truth`` attends the newest archived blocks that showed the sprite."""
    from strategies.packforcing import PackForcing
    from toolkit.core.rollout import rollout

    bf, blocks = 4, 24
    sched = schedule_for_seed(5, blocks, bf, "val")
    pf = PackForcing(sink_frames=bf, recent_frames=bf, capacity=8, top_k=2, compressor="pool",
                     selection="truth", positions="repack")
    out = rollout(memory_model, pf, [as_prompt(sched)], blocks * bf, seed=0, decode=False)
    checked = 0
    for record in out.trace.blocks:
        archive, picked = record.info["archive"], record.info["selected"][0]
        needed = [b for b in archive if sched.instance[b] == sched.instance[record.index]]
        assert set(needed[-2:]) <= set(picked), record.index
        checked += bool(needed)
    assert checked >= 3


def test_selection_hit_rates_from_the_trace(memory_model):
    """The oracle holds a needed block at every return that has one in the mid history; the
    wrong oracle never holds one outside sink and recent; a strategy that does not say what
    it attended leaves the measure unavailable."""
    from toolkit.core.rollout import rollout
    from toolkit.metrics import Unavailable
    from toolkit.worlds.memory.metrics import selection

    bf, blocks = 4, 30
    sched = schedule_for_seed(7, blocks, bf, "val")
    got = {}
    for pick in ("needed", "wrong"):
        out = rollout(memory_model, Oracle(sink_frames=bf, recent_frames=bf, pick=pick),
                      [as_prompt(sched)], blocks * bf, seed=0)
        inp = MetricInput(frames=out.frames[0], trace=out.trace, prompt=as_prompt(sched),
                          spec=memory_model.spec)
        got[pick] = selection.fn(inp)
    assert got["needed"]["hit"] == 1.0  # every return's last shown block is kept somewhere
    # beyond (4+ blocks back, not in the sink): only the mid history could hold it
    assert got["wrong"]["hit_beyond"] == 0.0
    assert got["wrong"]["hit"] < 1.0
    out.trace.blocks[0].attended = None
    with pytest.raises(Unavailable, match="attended"):
        selection.fn(MetricInput(frames=out.frames[0], trace=out.trace,
                                 prompt=as_prompt(sched), spec=memory_model.spec))
