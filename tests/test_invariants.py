"""Strategies pinned to exact references on a tiny seeded Wan (fp32, CPU)."""

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from strategies import Full, Sink, Window
from toolkit.rollout import rollout
from toolkit.rope import Rope, apply_rope, grid_positions, shift_time
from toolkit.testing import block_causal_reference

FRAMES = 16


def test_full_cache_equals_block_causal_forward(tiny):
    with torch.no_grad():
        ref = block_causal_reference(tiny, ["a", "b"], FRAMES, seed=1)
    got = rollout(tiny, Full(), ["a", "b"], FRAMES, seed=1).latents
    diff = (got - ref).abs().max().item()
    print(f"full vs block-causal forward: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_window_covering_video_equals_full(tiny):
    full = rollout(tiny, Full(), ["x"], FRAMES, seed=2).latents
    for positions in ("absolute", "reindex"):
        win = rollout(tiny, Window(window_frames=FRAMES, positions=positions), ["x"], FRAMES,
                      seed=2).latents
        assert torch.allclose(win, full, atol=1e-5), positions


def test_sink_zero_equals_window(tiny):
    for positions in ("absolute", "reindex"):
        win = rollout(tiny, Window(window_frames=4, positions=positions), ["x"], FRAMES,
                      seed=3).latents
        sink = rollout(tiny, Sink(sink_frames=0, window_frames=4, positions=positions), ["x"],
                       FRAMES, seed=3).latents
        assert torch.equal(win, sink), positions


def test_sink_covering_video_equals_full(tiny):
    full = rollout(tiny, Full(), ["x"], FRAMES, seed=4).latents
    sink = rollout(tiny, Sink(sink_frames=4, window_frames=FRAMES - 4), ["x"], FRAMES,
                   seed=4).latents
    assert torch.allclose(sink, full, atol=1e-6)


def test_small_window_differs_from_full(tiny):
    full = rollout(tiny, Full(), ["x"], FRAMES, seed=5).latents
    win = rollout(tiny, Window(window_frames=2), ["x"], FRAMES, seed=5).latents
    assert not torch.allclose(win, full, atol=1e-4)


def test_rope_matches_diffusers_at_integer_positions(tiny):
    spec = tiny.spec
    ref = WanRotaryPosEmbed(spec.head_dim, spec.patch, 1024)
    latents = torch.zeros(1, spec.latent_channels, 6, spec.latent_height, spec.latent_width)
    cos_ref, sin_ref = ref(latents)
    cos, sin = Rope(spec).cos_sin(grid_positions(spec, 0.0, 6))
    assert torch.allclose(cos, cos_ref) and torch.allclose(sin, sin_ref)


def test_incremental_shift_equals_rerotation(tiny):
    spec, rope = tiny.spec, Rope(tiny.spec)
    raw = torch.randn(3, 1, spec.num_heads, spec.tokens_per_block, spec.head_dim)  # (L,B,H,N,D)
    pos = grid_positions(spec, 5.0, spec.block_frames)
    for delta in (-5.0, 3.0, 2.5, 700.0):
        at_p = apply_rope(raw, *[t[0].transpose(0, 1) for t in rope.cos_sin(pos)])
        moved = shift_time(at_p, rope, delta)
        shifted = pos.clone()
        shifted[:, 0] += delta
        direct = apply_rope(raw, *[t[0].transpose(0, 1) for t in rope.cos_sin(shifted)])
        err = (moved - direct).abs().max().item()
        print(f"shift {delta}: max abs diff {err:.2e}")
        assert err < 1e-5


def test_reindexed_window_positions_stay_in_range(tiny):
    out = rollout(tiny, Window(window_frames=4, positions="reindex"), ["x"], 40, seed=0)
    assert max(b.t0 for b in out.trace.blocks) == 4.0
    out = rollout(tiny, Window(window_frames=4, positions="absolute"), ["x"], 40, seed=0)
    assert out.trace.blocks[-1].t0 == 38.0
