"""The shipped world model: loading checks, one block, a few training steps."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from strategies import Window
from toolkit.core.rollout import rollout
from toolkit.worlds.sprites.model import WEIGHTS_DIR, PixelVAE, load_world
from toolkit.worlds.sprites.sim import prompt_for_seed, sample_batch
from toolkit.worlds.sprites.train import TrainConfig, teacher_forcing_layout, train

SHIPPED = WEIGHTS_DIR / "world-model.safetensors"


def test_pixel_vae_round_trip_is_exact():
    videos, _ = sample_batch(3, 5, 0, max_sprites=3)
    vae = PixelVAE(2, mean=[0.3] * 12, std=[0.2] * 12)
    z = vae.encode(videos)
    assert z.shape == (3, 12, 5, 8, 8)
    assert torch.allclose(vae.decode(z), videos, atol=1e-6)


def test_shipped_weights_load_and_generate_one_block():
    model = load_world()
    assert model.card["sha256"] and model.card["steps"] > 0
    out = rollout(model, Window(window_frames=8), [prompt_for_seed(0, "heldout")],
                  model.spec.block_frames)
    assert out.frames.shape == (1, 4, 3, 16, 16)
    assert torch.isfinite(out.frames).all()


def test_corrupted_weights_fail_on_hash(tmp_path):
    path = tmp_path / "world-model.safetensors"
    shutil.copy(SHIPPED, path)
    shutil.copy(SHIPPED.with_suffix(".json"), path.with_suffix(".json"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_world(path)


def test_config_mismatch_fails_clearly(tmp_path):
    path = tmp_path / "world-model.safetensors"
    shutil.copy(SHIPPED, path)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["config"]["num_layers"] += 1
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="does not fit the world config"):
        load_world(path)


def test_missing_weights_name_the_recipe(tmp_path):
    with pytest.raises(FileNotFoundError, match="rollbench train world-model"):
        load_world(tmp_path / "nope.safetensors")


def test_teacher_forcing_mask_is_block_causal():
    model = load_world()
    pos, mask = teacher_forcing_layout(model, 8)  # 2 blocks, clean then noisy copies
    tpb = model.spec.tokens_per_block
    n = 2 * tpb
    assert mask.shape == (2 * n, 2 * n) and torch.equal(pos[:n], pos[n:])
    noisy_block1 = mask[n + tpb]
    assert noisy_block1[:tpb].all() and not noisy_block1[tpb:n].any()  # clean block 0 only
    assert noisy_block1[n + tpb:].all() and not noisy_block1[n:n + tpb].any()
    assert not mask[0, tpb:].any()  # clean block 0 sees only itself


def test_a_few_training_steps_run_and_resume(tmp_path):
    """Two steps, then resumed for a third, give the three-step run's weights and losses."""
    from safetensors.torch import load_file

    cfg = TrainConfig(steps=3, batch=2, clip_frames=8, out=str(tmp_path / "a"), ckpt_every=1,
                      log_every=1)
    straight = train(cfg, log=lambda _: None)
    train(replace(cfg, steps=2, out=str(tmp_path / "b")), log=lambda _: None)
    logs = []
    resumed = train(replace(cfg, out=str(tmp_path / "b")), log=logs.append)
    assert any("resumed" in line and "step 2" in line for line in logs)
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in torch.load(tmp_path / run / "checkpoint.pt",
                                             weights_only=False)["history"]] for run in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    card = json.loads(straight.with_suffix(".json").read_text())
    assert card["recipe"] == "world-model" and card["steps"] == 3
    assert card["command"] == ("rollbench train world-model steps=3 ckpt_every=1 log_every=1 "
                               f"out={tmp_path / 'a'} batch=2 clip_frames=8")


def test_shipped_packforcing_weights_drive_their_strategy():
    from toolkit.runs.config import build_strategy, compose_config

    cfg = compose_config(["model=world-pf", "strategy=packforcing-world"])
    model = load_world(cfg.model.path)
    assert model.card["recipe"] == "packforcing" and model.card["init"]["steps"] > 0
    out = rollout(model, build_strategy(cfg.strategy), [prompt_for_seed(1, "heldout")], 24)
    assert torch.isfinite(out.latents).all()
    assert out.trace.blocks[-1].tokens["mid"] > 0  # compressed blocks in the archive
