"""The distance-aware consolidation strategy (``fade``): budget, hierarchy, positions."""

import pytest
import torch

from strategies import Fade, Full
from strategies.fade import _pool_time, positions
from toolkit.core.rollout import rollout
from toolkit.core.rope import Rope
from toolkit.runs.config import build_strategy, compose_config

FRAMES = 24  # twelve blocks of the tiny model (2 frames each)


def test_a_budget_holding_the_video_equals_full(tiny):
    full = rollout(tiny, Full(), ["x"], FRAMES, seed=2, decode=False).latents
    for where in ("repack", "absolute"):
        fade = Fade(budget_frames=FRAMES, recent_frames=2, positions=where)
        got = rollout(tiny, fade, ["x"], FRAMES, seed=2, decode=False)
        assert got.trace.blocks[-1].info["merges"] == 0
        assert torch.allclose(got.latents, full, atol=1e-5), where


def test_the_budget_holds_and_history_is_dense_near_sparse_far(tiny):
    fade = Fade(budget_frames=10, sink_frames=2, recent_frames=2, exponent=2.0)
    tpf = tiny.spec.tokens_per_frame
    out = rollout(tiny, fade, ["x"], 2 * FRAMES, seed=0, decode=False)
    assert all(sum(b.tokens.values()) <= 10 * tpf for b in out.trace.blocks)
    assert out.trace.blocks[-1].info["merges"] > 0
    density = [e.frames / e.span for e in fade._mid]  # oldest first
    assert density == sorted(density) and density[0] < density[-1]
    covered = [i for e in fade._mid for i in range(e.first, e.last + 1)]
    assert covered == list(range(1, out.trace.blocks[-1].index))  # every block, in order
    even = Fade(budget_frames=10, sink_frames=2, recent_frames=2, exponent=0.0)
    rollout(tiny, even, ["x"], 2 * FRAMES, seed=0, decode=False)
    spans = [e.span for e in even._mid]
    assert max(spans) / min(spans) < max(e.span for e in fade._mid) / min(
        e.span for e in fade._mid)  # exponent 0: the history coarsened more evenly


def test_repack_places_entries_contiguously_before_the_recent_window(tiny):
    fade = Fade(budget_frames=10, sink_frames=2, recent_frames=4, pool_space=2)
    out = rollout(tiny, fade, ["x"], FRAMES, seed=0, decode=False)
    info = out.trace.blocks[-1].info
    bf = tiny.spec.block_frames
    recent_start = info["recent"][0] * bf
    ends = [t0 + n for t0, n in zip(info["mid_t0"], info["mid_frames"], strict=True)]
    assert ends[-1] == recent_start and ends[:-1] == info["mid_t0"][1:]
    assert fade._sink[0].t0 == info["mid_t0"][0] - bf


def test_a_merge_pools_unrotated_keys_weighted_by_span(tiny):
    spec = tiny.spec
    rope = Rope(spec)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, *spec.grid, spec.head_dim, generator=gen)  # (B, H, F, h, w, D)
    pooled = _pool_time(x, torch.tensor([1.0, 3.0, 2.0]))
    want = torch.stack([(x[:, :, 0] + 3 * x[:, :, 1]) / 4, x[:, :, 2]], 2).flatten(2, 4)
    assert torch.allclose(pooled, want, atol=1e-6)
    pos = positions(spec, 5.0, 2, 2)
    assert pos[:, 0].unique().tolist() == [5.0, 6.0] and pos[:, 1].unique().tolist() == [0.5]
    assert len(rope.table(pos)[0]) == 2 * (spec.grid[0] // 2) * (spec.grid[1] // 2)


def test_bad_hyperparameters_are_named(tiny):
    with pytest.raises(ValueError, match="budget_frames=6: must exceed sink_frames"):
        Fade(budget_frames=6, sink_frames=2, recent_frames=4)
    with pytest.raises(ValueError, match="positions='shift': allowed"):
        Fade(positions="shift")
    with pytest.raises(ValueError, match="pool_space=3: must divide the token grid 2x2"):
        Fade(pool_space=3).check(tiny.spec)


def test_the_preset_composes():
    cfg = compose_config(["strategy=fademem"])
    fade = build_strategy(cfg.strategy)
    assert isinstance(fade, Fade) and fade.pool_space == 2 and fade.budget_frames == 24
