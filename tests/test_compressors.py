"""Compressors: promised token counts and positions, the paper's shapes, weights, configs."""

from pathlib import Path

import pytest
import torch

from strategies.compressors import COMPRESSORS, HR, build_compressor
from strategies.packforcing import PackForcing
from toolkit.core.rollout import rollout
from toolkit.models.specmodel import wan_spec_model
from toolkit.runs.config import build_strategy, compose_config
from toolkit.worlds.sprites.model import WorldConfig, build_world

CONFIGS = Path(__file__).resolve().parent.parent / "ablations" / "compressor"


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig()).eval()


def _latents(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, spec.latent_channels, spec.block_frames, spec.latent_height,
                       spec.latent_width, generator=g)


def _run(compressor, model):
    """Compressed tokens (or keys) of one random block."""
    spec = model.spec
    if compressor.kind == "tokens":
        return compressor.compress(_latents(spec), model)
    keys = torch.randn(spec.num_layers, 2, spec.num_heads, spec.tokens_per_block, spec.head_dim)
    k, v = compressor.compress_kv(keys, keys + 1)
    assert k.shape == v.shape
    return k


@pytest.mark.parametrize("name", ["hr", "lr", "dual", "pool", "pool_kv", "identity"])
def test_outputs_match_declared_tokens(name, tiny, world):
    expected = {"tiny": 8 if name == "identity" else 1, "world": 64 if name == "identity" else 2}
    for label, model in (("tiny", tiny), ("world", world)):
        c = build_compressor(name, model.spec)
        if c.needs_vae and model.vae is None:
            with pytest.raises(ValueError, match="needs a model with a VAE"):
                c.check_model(model)
            continue
        c.check_model(model)
        out = _run(c, model)
        assert out.shape[-2] == c.tokens() == expected[label], (label, out.shape)
        assert c.positions("centres").shape == (c.tokens(), 3)
        if c.kind == "tokens":
            assert out.shape == (2, c.tokens(), model.spec.width)


@pytest.mark.parametrize("name", ["hr", "lr", "dual", "pool", "pool_kv"])
def test_wan_scale_is_the_papers_182_tokens(name):
    spec = wan_spec_model().spec
    with torch.device("meta"):
        c = build_compressor(name, spec, channels=2048)
    assert c.grid() == (2, 7, 13) and c.tokens() == 182
    assert spec.tokens_per_block / c.tokens() > 34  # about 32x fewer tokens


def test_hr_has_the_papers_stages_at_wan_scale():
    with torch.device("meta"):
        hr = HR(wan_spec_model().spec, channels=2048)
    convs = [m for m in hr.net if isinstance(m, torch.nn.Conv3d)]
    shapes = [(m.in_channels, m.out_channels, m.stride) for m in convs]
    assert shapes == [(16, 32, (2, 1, 1)), (32, 128, (1, 2, 2)), (128, 512, (1, 2, 2)),
                      (512, 2048, (1, 2, 2)), (2048, 1536, (1, 1, 1))]
    assert all(m.kernel_size == m.stride for m in convs)
    assert sum(isinstance(m, torch.nn.SiLU) for m in hr.net) == 4


def test_hr_is_small_on_the_world_and_its_weights_round_trip(world, tmp_path):
    hr = build_compressor("hr", world.spec, seed=1)
    assert 1_000 < sum(p.numel() for p in hr.parameters()) < 10_000
    x = _latents(world.spec)
    path = hr.save(tmp_path / "hr.safetensors")
    fresh = build_compressor("hr", world.spec, seed=2)
    assert not torch.allclose(fresh.compress(x), hr.compress(x))
    loaded = build_compressor("hr", world.spec, weights=str(path), seed=2)
    assert torch.equal(loaded.compress(x), hr.compress(x))
    dual = build_compressor("dual", world.spec, weights=str(path))
    assert torch.allclose(dual.compress(x, world), hr.compress(x) +
                          build_compressor("lr", world.spec).compress(x, world))
    with pytest.raises(ValueError, match="do not fit"):
        build_compressor("hr", world.spec, channels=8, weights=str(path))


def test_hr_reduction_is_a_parameter(world):
    for space, tokens in ((2, 2 * 4 * 4), (4, 2 * 2 * 2), (8, 2)):
        hr = build_compressor("hr", world.spec, space=space)
        assert hr.compress(_latents(world.spec)).shape[1] == hr.tokens() == tokens
    assert build_compressor("hr", world.spec, time=1).tokens() == 4


def test_positions_centres_and_grid(world):
    c = build_compressor("pool", world.spec)  # cells: 2 frames x 4 x 4 token cells
    assert c.positions("centres").tolist() == [[0.5, 1.5, 1.5], [2.5, 1.5, 1.5]]
    assert c.positions("grid").tolist() == [[0.5, 0.0, 0.0], [2.5, 0.0, 0.0]]
    wan = build_compressor("pool", wan_spec_model().spec)  # cells: 2 x 4 x 4 of a 30x52 grid
    pos = wan.positions("centres")
    assert pos[0].tolist() == [0.5, 1.5, 1.5] and pos[-1].tolist() == [2.5, 25.5, 49.5]
    ident = build_compressor("identity", world.spec)
    from toolkit.core.rope import grid_positions
    assert torch.equal(ident.positions("centres"), grid_positions(world.spec, 0.0, 4))


def test_pool_kv_averages_each_cell(world):
    spec = world.spec
    c = build_compressor("pool_kv", spec, space=4)  # cells: 2 frames x 2 x 2 token cells
    keys = torch.randn(1, 1, 1, spec.tokens_per_block, 3)
    got, _ = c.compress_kv(keys, keys)
    grid = keys[0, 0, 0].reshape(4, 4, 4, 3)  # (frames, rows, cols, D)
    cell = grid[2:4, 0:2, 2:4].reshape(-1, 3).mean(0)  # second time cell, row 0, column 1
    assert torch.allclose(got[0, 0, 0, 4 + 1], cell, atol=1e-6)


def test_lr_on_world_pools_pixels_then_reencodes(world):
    c = build_compressor("lr", world.spec)
    x = _latents(world.spec).clamp(-1, 1)
    frames = world.vae.decode(x)  # (B, 4, 3, 16, 16)
    pooled = frames.reshape(2, 2, 2, 3, 4, 4, 4, 4).mean((2, 5, 7))  # (B, 2, 3, 4, 4)
    expected = world.patch_embed(world.vae.encode(pooled))
    assert torch.allclose(c.compress(x, world), expected, atol=1e-5)


def test_rate_errors_name_the_allowed_values(world):
    with pytest.raises(ValueError, match=r"compress_time=3: must divide the block size 4 "
                                         r"\(allowed \[1, 2, 4\]\)"):
        build_compressor("pool", world.spec, time=3)
    with pytest.raises(ValueError, match=r"compress_space=16: allowed \[2, 4, 8\]"):
        build_compressor("lr", world.spec, space=16)
    with pytest.raises(ValueError, match="has no parameters"):
        build_compressor("pool", world.spec, weights="x.safetensors")


def test_every_compressor_has_a_config_that_builds(tiny):
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == COMPRESSORS.names()
    for name in COMPRESSORS.names():
        cfg = compose_config(["strategy=packforcing", f"+compressor={name}"])
        strategy = build_strategy(cfg.strategy)
        assert strategy.compressor == name
        strategy.check(tiny.spec)


def test_mid_partition_holds_the_declared_tokens(world):
    pf = PackForcing(compressor="lr", capacity=3, top_k=2, sink_frames=4, recent_frames=4)
    out = rollout(world, pf, [world.default_prompt(0)], 28, decode=False)
    m = build_compressor("lr", world.spec).tokens()
    assert out.trace.blocks[-1].tokens["mid"] == 3 * m
    assert out.trace.blocks[-1].tokens["pending"] == m


# -- Wan's causal VAE (a tiny random AutoencoderKLWan), blocks of 3 and 4 ----------------------
@pytest.fixture(scope="module", params=[3, 4])
def wan_vae_model(request):
    from toolkit.models.zoo import tiny_wan

    return tiny_wan(request.param)


@pytest.mark.parametrize("name", ["hr", "lr", "dual", "pool", "pool_kv"])
def test_every_compressor_makes_its_tokens_on_wans_causal_vae(wan_vae_model, name):
    spec = wan_vae_model.spec
    bf = spec.block_frames
    video = torch.randn(1, spec.latent_channels, 3 * bf, spec.latent_height, spec.latent_width,
                        generator=torch.Generator().manual_seed(1))
    for time in [t for t in range(1, bf + 1) if bf % t == 0]:
        for space in (2, 4):
            for decode in ("stream", "block"):
                c = build_compressor(name, spec, time=time, space=space, decode=decode)
                c.check_model(wan_vae_model)
                c.reset()
                with torch.no_grad():
                    for b in range(3):  # the video's start, then two blocks in its middle
                        block = video[:, :, b * bf:(b + 1) * bf]
                        c.observe(block, wan_vae_model)
                        if c.kind == "kv":
                            out = _run(c, wan_vae_model)
                        else:
                            out = c.compress(block, wan_vae_model)
                        assert out.shape[-2] == c.tokens(), (name, bf, time, space, b)
                if c.kind == "kv":
                    break  # no decode to vary


def test_lr_decodes_mid_blocks_in_stream_as_the_whole_video_decodes(wan_vae_model):
    from strategies.compressors.lr import LR, latent_pixels, pool_time

    spec, vae = wan_vae_model.spec, wan_vae_model.vae
    bf = spec.block_frames
    video = torch.randn(1, spec.latent_channels, 3 * bf, spec.latent_height, spec.latent_width,
                        generator=torch.Generator().manual_seed(2))
    whole = vae.decode(video)  # 1 + 4 (3 bf - 1) frames
    lr = LR(spec, time=1, space=4)
    got = []
    for b in range(3):
        block = video[:, :, b * bf:(b + 1) * bf]
        lr.observe(block, wan_vae_model)
        frames, start = lr.pixels(block, wan_vae_model)
        assert start == (b == 0)
        got.append(frames)
    assert [g.shape[1] for g in got] == [1 + 4 * (bf - 1), 4 * bf, 4 * bf]
    assert torch.allclose(torch.cat(got, dim=1).cpu(), whole, atol=1e-5)
    alone, start = LR(spec, time=1, space=4, decode="block").pixels(video[:, :, bf:2 * bf],
                                                                    wan_vae_model)
    assert start and alone.shape[1] == 1 + 4 * (bf - 1)  # decoded as a video's start
    # pixel time pooled so the causal encoder returns exactly the cells: 1, then 4 per cell
    assert latent_pixels(bf, 4 * bf, start=False)[-1] == (4 * (bf - 1), 4 * bf)
    assert latent_pixels(bf, 1 + 4 * (bf - 1), start=True)[:2] == [(0, 1), (1, 5)]
    for frames, start in ((got[0], True), (got[1], False)):
        for time in [t for t in range(1, bf + 1) if bf % t == 0]:
            pooled = pool_time(frames, bf, time, start)
            assert pooled.shape[1] == 1 + 4 * (bf // time - 1)
            assert vae.encode(pooled).shape[2] == bf // time
    assert torch.allclose(pool_time(got[1], bf, bf, False)[:, 0], got[1].mean(1))
