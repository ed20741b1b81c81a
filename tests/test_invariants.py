"""Strategies pinned to exact references on a tiny seeded Wan (fp32, CPU)."""

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from strategies import Full, Sink, Window
from toolkit.core.rollout import rollout
from toolkit.core.rope import Rope, apply_rope, grid_positions, rotate, shift_drift, shift_time
from toolkit.core.testing import block_causal_reference
from toolkit.runs.config import build_strategy, compose_config

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
        sink = rollout(tiny, Sink(sink_frames=0, recent_frames=4, positions=positions), ["x"],
                       FRAMES, seed=3).latents
        assert torch.equal(win, sink), positions


def test_sink_covering_video_equals_full(tiny):
    full = rollout(tiny, Full(), ["x"], FRAMES, seed=4).latents
    sink = rollout(tiny, Sink(sink_frames=4, recent_frames=FRAMES - 4), ["x"], FRAMES,
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


@pytest.mark.parametrize("local", [5, 6])
def test_self_forcing_preset_is_self_forcings_local_attention(tiny, local):
    """strategy=self_forcing attends the last N latent frames, the current block included
    (Self-Forcing's local_attn_size): pinned to diffusers' own forward with that mask."""
    with torch.no_grad():
        ref = block_causal_reference(tiny, ["a"], FRAMES, seed=6, local_frames=local)
    node = compose_config(["strategy=self_forcing", f"strategy.window_frames={local}"]).strategy
    strategy = build_strategy(node)
    records = []
    got = rollout(tiny, strategy, ["a"], FRAMES, seed=6, callbacks=[records.append]).latents
    diff = (got - ref).abs().max().item()
    print(f"self_forcing window {local} vs masked forward: max abs diff {diff:.2e}")
    assert diff < 1e-4
    tpf, bf = tiny.spec.tokens_per_frame, tiny.spec.block_frames
    assert max(r.context_tokens for r in records) == (local - bf) * tpf  # frames, not blocks
    assert records[-1].tokens["recent"] == (local - bf) * tpf  # and only those are held
    # the other reading (N finished frames plus the block) is a wider span: it differs
    wider = Window(window_frames=local // bf * bf)
    assert not torch.allclose(rollout(tiny, wider, ["a"], FRAMES, seed=6).latents, ref,
                              atol=1e-4)


def test_self_forcing_window_must_hold_the_block(tiny):
    with pytest.raises(ValueError, match="window_frames=1 with include_current=true"):
        Window(window_frames=1, include_current=True).check(tiny.spec)
    with pytest.raises(ValueError, match="window_frames=5: must be a multiple"):
        Window(window_frames=5).check(tiny.spec)


def test_bf16_keys_moved_85_times_are_rounded_once():
    """A 120 s video moves PackForcing's sink about 85 times. Shifting bf16 keys in place
    rounds them each time: far more than a few ulps. Cached blocks rotate on read instead."""
    from toolkit.core.cache import BlockKV
    from toolkit.models.zoo import wan_t2v_1_3b_spec

    spec = wan_t2v_1_3b_spec()  # real scale: 12 heads x 128, one frame of 1,560 tokens
    drift = shift_drift(spec, 85, 4.0)
    print(f"85 bf16 shifts: max {drift['incremental']:.1f} ulps, rel RMS "
          f"{drift['incremental_rel']:.4f}; one rotation: {drift['once']:.1f} ulps, "
          f"{drift['once_rel']:.4f}")
    assert drift["incremental"] > 30 and drift["incremental_rel"] > 5 * drift["once_rel"]
    assert drift["once"] < 4
    rope = Rope(spec)
    raw = torch.randn(1, 1, spec.num_heads, spec.tokens_per_frame, spec.head_dim,
                      generator=torch.Generator().manual_seed(1))
    pos = grid_positions(spec, 0.0, 1)
    table = rope.table(pos)[0].transpose(0, 1)
    block = BlockKV(0, rotate(raw, table).to(torch.bfloat16), torch.zeros(1), 0.0)
    for n in range(1, 86):
        block.move_to(4.0 * n)
    keys, _ = block.layer_kv(0, rope)
    end = pos.clone()
    end[:, 0] += 4.0 * 85
    exact = rotate(raw[0], rope.table(end)[0].transpose(0, 1))
    ulps = (keys.float() - exact).abs().max().item() / torch.finfo(torch.bfloat16).eps
    assert keys.dtype == torch.bfloat16 and ulps < 4, ulps


def test_a_causal_rollouts_prefix_is_its_short_video():
    """The findings read 1x effects from the first frames of the 24x runs."""
    from toolkit.core.rollout import rollout
    from toolkit.runs.config import build, compose_config

    cfg = compose_config(["strategy=packforcing-world", "model=world-pf"])
    model, _ = build(cfg)
    short = rollout(model, build(cfg)[1], [model.default_prompt(3)], 8, seed=3)
    long = rollout(model, build(cfg)[1], [model.default_prompt(3)], 16, seed=3)
    torch.testing.assert_close(long.latents[:, :, :8], short.latents, rtol=0, atol=0)
