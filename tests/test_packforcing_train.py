"""``rollbench train packforcing``: the mask is the cached rollout's context, the pass equals the
cached rollout numerically, gradients reach the compressor, and a tiny run checkpoints,
resumes and exports weights that load."""

from dataclasses import asdict, replace

import pytest
import torch

from strategies.compressors import build_compressor
from strategies.packforcing import PackForcing
from strategies.packforcing_layout import block_errors, contexts, pack_layout, predict
from toolkit.core.rollout import BlockDriver, rollout
from toolkit.core.rope import grid_positions
from toolkit.worlds.sprites.model import load_world
from toolkit.worlds.sprites.pf_train import (
    COMPRESSOR_FILE,
    PFTrainConfig,
    build_modules,
    command,
    make_batch,
    train_packforcing,
    validate,
)

SMALL = {"batch": 2, "threads": 1}


@pytest.fixture(scope="module")
def modules():
    return {name: build_modules(PFTrainConfig(compressor=name, **SMALL))
            for name in ("hr", "dual")}


def _expected_visibility(b: int, sink: int, recent: int) -> tuple[set, set, set]:
    """Written from the partition rules alone: (clean full-res blocks, compressed blocks, all)."""
    if b < sink:  # still filling the sink: every earlier block, at full resolution
        return set(range(b)), set(), set(range(b))
    full = set(range(sink)) | {j for j in range(sink, b) if j >= b - recent}
    mid = {j for j in range(sink, b) if j < b - recent}
    return full, mid, full | mid


@pytest.mark.parametrize(("sink", "recent"), [(1, 1), (0, 1), (2, 1), (1, 2), (1, 0)])
def test_mask_gives_each_block_the_rollouts_context(modules, sink, recent):
    model, comp = modules["hr"]
    spec = model.spec
    tpb, bf, per = spec.tokens_per_block, spec.block_frames, comp.tokens(spec)
    layout = pack_layout(spec, comp, 20, sink * bf, recent * bf)
    n = 5 * tpb
    for b in range(5):
        full, mid, everything = _expected_visibility(b, sink, recent)
        if (sink, recent) == (1, 1) and b >= 3:  # the brief's wording, literally
            assert (full, mid) == ({0, b - 1}, set(range(1, b - 1)))
        for rows, self_cols in ((slice(n + b * tpb, n + (b + 1) * tpb), n),  # noisy copy
                                (slice(b * tpb, (b + 1) * tpb), 0)):  # clean (cache-fill) copy
            row = layout.mask[rows]
            assert (row == row[0]).all(), "every token of a block sees the same context"
            seen_clean = {j for j in range(5) if row[0, j * tpb:(j + 1) * tpb].all()}
            assert not any(row[0, j * tpb:(j + 1) * tpb].any() for j in set(range(5))
                           - seen_clean), "partial blocks"
            seen_noisy = {j for j in range(5)
                          if row[0, n + j * tpb:n + (j + 1) * tpb].any()}
            seen_mid = {m for i, m in enumerate(layout.mid_blocks)
                        if row[0, 2 * n + i * per:2 * n + (i + 1) * per].all()}
            assert not (seen_clean & seen_mid), "a block is either full-res or compressed"
            if self_cols == n:
                assert seen_clean == full and seen_noisy == {b}
            else:
                assert seen_clean == full | {b} and seen_noisy == set()
            assert seen_mid == mid
            assert seen_clean - {b} | seen_mid == everything  # nothing past the block
    assert [c for c in contexts(5, sink, recent)] == layout.ctx


def test_mask_matches_the_strategys_own_bookkeeping(modules):
    """The partitions PackForcing itself reports in a cached rollout of the same clip."""
    model, _ = modules["hr"]
    for sink, recent in ((1, 1), (0, 2), (2, 1)):
        pf = PackForcing(sink_frames=4 * sink, recent_frames=4 * recent, compressor="pool")
        trace = rollout(model, pf, [model.default_prompt(0)], 20, seed=0, decode=False).trace
        got = [(b.info["sink"], b.info["selected"][0] if b.info["selected"] else [],
                b.info["recent"]) for b in trace.blocks]
        assert got == contexts(5, sink, recent), (sink, recent)


@pytest.mark.parametrize(("name", "kv"), [("hr", "transformer"), ("dual", "project")])
def test_pass_equals_the_cached_rollout(modules, tmp_path, name, kv):
    """The teacher-forced prediction of every block = the cached PackForcing rollout's
    prediction for that block given the same clean history (compressor, K/V, positions)."""
    model, comp = modules[name]
    model.eval()
    cfg = PFTrainConfig(compressor=name, kv=kv, **SMALL)
    layout = pack_layout(model.spec, comp, 20, cfg.sink_frames, cfg.recent_frames)
    gen = torch.Generator().manual_seed(0)
    x0, _, sigma, cond, _ = make_batch(cfg, model, 0, gen)
    cond = cond.detach()
    sigma = sigma[:1].expand(2, -1).contiguous()  # the rollout uses one sigma per block
    s = sigma.repeat_interleave(4, 1)[:, None, :, None, None]
    xt = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
    comp.save(tmp_path / "c.safetensors")
    pf = PackForcing(sink_frames=4, recent_frames=4, compressor=name, kv=kv,
                     compressor_weights=str(tmp_path / "c.safetensors"))
    ref = []
    with torch.no_grad(), model.attach() as slot:
        got = predict(model, comp, layout, x0, xt, sigma, cond, kv)
        pf.bind(model)
        driver = BlockDriver(pf, model.spec.num_layers, model.sampler.steps)
        slot.plan = driver.plan
        for b in range(5):
            t0 = driver.begin(b)
            pos = grid_positions(model.spec, t0, 4)
            driver.step(0)
            ref.append(model.predict_x0(xt[:, :, 4 * b:4 * b + 4], sigma[0, b].item(), pos,
                                        cond))
            with driver.filling():
                model.fill(x0[:, :, 4 * b:4 * b + 4], pos, cond)
            driver.commit(x0[:, :, 4 * b:4 * b + 4], cond)
    model.train()
    ref = torch.cat(ref, 2)
    assert torch.allclose(got, ref, atol=2e-5), (got - ref).abs().max()
    with torch.no_grad(), model.attach():  # and hiding the mid changes exactly blocks 3, 4
        hidden = predict(model, comp, layout, x0, xt, sigma, cond, kv, layout.without_mid())
    changed = (hidden - got).abs().amax((0, 1, 3, 4)).unflatten(0, (5, 4)).amax(1)
    assert (changed[:3] == 0).all() and (changed[3:] > 0).all(), changed


@pytest.mark.parametrize("name", ["hr", "dual"])
def test_gradients_reach_the_compressor(modules, name):
    model, comp = modules[name]
    cfg = PFTrainConfig(compressor=name, **SMALL)
    layout = pack_layout(model.spec, comp, 20, 4, 4)
    x0, xt, sigma, cond, _ = make_batch(cfg, model, 0, torch.Generator().manual_seed(0))
    comp.zero_grad(set_to_none=True)
    with model.attach():
        err = block_errors(model, predict(model, comp, layout, x0, xt, sigma, cond), x0)
    err.mean().backward()
    grads = [p.grad for p in comp.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    comp.zero_grad(set_to_none=True)


def test_train_checkpoints_resumes_and_exports(tmp_path):
    cfg = PFTrainConfig(steps=2, ckpt_every=1, log_every=1, eval_every=0,
                        out=str(tmp_path / "a"), **SMALL)
    rows: list[str] = []
    world_path = train_packforcing(cfg, log=rows.append)
    straight = load_world(world_path).state_dict()
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and len(ckpt["history"]) == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in ckpt["history"])
    assert {"gap_mid", "mid_use"} <= set(ckpt["history"][-1])  # diagnostic at the end
    logged = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    assert len(logged) == 3 and '"err_mid"' in logged[-1]  # layout row + one row per step
    # 1 step, then resumed for a second = 2 steps straight
    half = replace(cfg, steps=1, out=str(tmp_path / "b"))
    train_packforcing(half, log=lambda _: None)
    rows.clear()
    resumed = load_world(train_packforcing(replace(half, steps=2), log=rows.append))
    assert any("resumed from" in r and "at step 1" in r for r in rows)
    assert all(torch.equal(straight[k], v) for k, v in resumed.state_dict().items())
    # a checkpoint of a fine-tune from other init weights is refused, not silently resumed
    with pytest.raises(ValueError, match="other world weights"):
        train_packforcing(replace(cfg, init=str(world_path)), log=lambda _: None)
    # the exports load: world (hash-checked) and compressor, and drive a strategy
    model = load_world(path=world_path)
    card = model.card
    assert card["steps"] == 2 and card["seed"] == 0 and card["recipe"] == "packforcing"
    assert card["command"] == ("rollbench train packforcing steps=2 ckpt_every=1 log_every=1 "
                               f"out={tmp_path / 'a'} batch=2 eval_every=0")
    assert len(card["compressor"]["sha256"]) == 64 and card["final_losses"]["loss"] > 0
    comp_file = world_path.parent / COMPRESSOR_FILE
    build_compressor("hr", model.spec, weights=str(comp_file))
    build_compressor("dual", model.spec, weights=str(comp_file))
    pf = PackForcing(sink_frames=4, recent_frames=4, compressor="dual",
                     compressor_weights=str(comp_file))
    video = rollout(model, pf, [model.default_prompt(0)], 20, seed=0, decode=False)
    assert torch.isfinite(video.latents).all()


def test_command_yaml_and_validation():
    from omegaconf import OmegaConf

    from toolkit.models.recipes import RECIPES
    from toolkit.runs.config import compose_config

    recipe = RECIPES.get("packforcing")
    composed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(recipe.config),
                                                   compose_config([], "train/packforcing")))
    assert asdict(composed) == asdict(PFTrainConfig())  # the yaml mirrors the defaults
    assert command(PFTrainConfig()) == "rollbench train packforcing"
    assert command(PFTrainConfig(steps=5, compress_space=None, export="x y")) == \
        "rollbench train packforcing steps=5 'export=x y'"
    model, _ = build_modules(PFTrainConfig(compressor="hr", **SMALL))
    for kw, needle in (({"compressor": "pool_kv"}, "K/V"),
                       ({"sink_frames": 8, "recent_frames": 8}, "no mid"),
                       ({"sink_frames": 3}, "multiple"),
                       ({"kv": "x"}, "kv=")):
        with pytest.raises(ValueError, match=needle):
            validate(PFTrainConfig(**kw), model.spec)
