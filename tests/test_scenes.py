"""The memory world: schedules, truth of return moments, rendering, and the recall measures."""

import dataclasses

import numpy as np
import pytest
import torch

from toolkit.core.schedule import PromptSchedule
from toolkit.core.spec import ModelSpec
from toolkit.metrics import MetricInput, compute
from toolkit.worlds.memory.scenes import (
    SCENE_BACKGROUNDS,
    ClipMix,
    Instance,
    Shot,
    instances_of,
    render,
    return_moments,
    sample_clips,
    schedule_for_seed,
)
from toolkit.worlds.sprites.analyse import analyse_video
from toolkit.worlds.sprites.sim import COLOURS, SHAPES, SpriteSpec

SPEC = ModelSpec(num_layers=4, num_heads=4, head_dim=32, latent_channels=12, latent_height=8,
                 latent_width=8)


def test_shot_text_and_tokens_round_trip():
    new = Shot("maroon", "fast", SpriteSpec("triangle", "green"))
    keep = Shot("maroon", "fast")
    for shot in (new, keep):
        assert Shot.from_text(shot.text()) == shot
    assert new.tokens()[3] != 0 and keep.tokens()[3] == 0  # the sprite is named only when new
    assert new.tokens()[:3] == keep.tokens()[:3]
    with pytest.raises(ValueError, match="cannot parse memory-world shot"):
        Shot.from_text("a red circle on navy")
    with pytest.raises(ValueError, match="unknown scene 'teal'"):
        Shot.from_text("the sprite on teal, slow")


def test_returns_recur_need_mid_history_and_outgrow_recency():
    """The issue's requirements on 24x rollouts (120 blocks), for every held-out seed tried."""
    for seed in range(8):
        sched = schedule_for_seed(seed, 120)
        assert sched.shots[0].new
        moments = return_moments(sched)
        mid = [m for m in moments if m.needed_in(1, 1) == "mid"]
        assert len(mid) >= 20, (seed, len(mid))
        assert sum(m.gap >= 4 for m in mid) >= 5  # older than the two newest mid blocks
        assert sum(s.new for s in sched.shots[20:]) >= 5  # new sprites keep coming
        for m in moments:  # the needed sprite is never named in the returning block's prompt
            assert sched.shots[m.block].sprite is None and sched.shots[m.intro].sprite == m.sprite
    stale = [m for s in range(8) for m in return_moments(schedule_for_seed(s, 120))
             if m.stale_in(1) and m.needed_in(1, 1) == "mid"]
    assert stale  # the sink shows the scene with an older sprite: a fixed sink goes stale


def test_prompts_alone_give_the_same_moments():
    sched = schedule_for_seed(3, 60)
    assert instances_of(sched.shots) == sched.instance
    full, from_shots = return_moments(sched), return_moments(sched.shots)
    assert [dataclasses.replace(m, position=None) for m in full] == from_shots
    with pytest.raises(ValueError, match="never introduced"):
        instances_of([Shot("navy", "slow")])


def test_rendered_frames_read_back_and_sprites_resume_where_they_were():
    sched = schedule_for_seed(1, 40)
    video = render(sched)
    obs = analyse_video(video, SCENE_BACKGROUNDS)
    bf = sched.block_frames
    for t, o in enumerate(obs):
        inst = sched.instances[sched.instance[t // bf]]
        assert o.background == inst.scene
        assert [(s.colour, s.shape) for s in o.sprites] == [(inst.sprite.colour,
                                                             inst.sprite.shape)]
    pos = sched.positions()
    speed = np.linalg.norm(sched.instances[0].velocity)
    for m in return_moments(sched):  # one frame of motion from where it was last seen
        step = np.linalg.norm(pos[m.block * bf] - pos[m.last * bf + bf - 1])
        assert step <= speed + 1e-9


def test_training_clips_end_in_mid_only_returns():
    _, _, scheds = sample_clips(24, 20, 4, generator_seed=5, mix=ClipMix(memory_share=1.0))
    for sched in scheds:
        last = [m for m in return_moments(sched) if m.block == 4]
        assert last and last[0].needed_in(1, 1) == "mid" and set(last[0].shown) <= {1, 2}
    videos, _, _ = sample_clips(4, 20, 4, generator_seed=5)
    again, _, _ = sample_clips(4, 20, 4, generator_seed=5)
    assert torch.equal(videos, again) and videos.shape == (4, 20, 3, 16, 16)


def _recall(video, sched):
    prompt = PromptSchedule(tuple((b * sched.block_frames, s) for b, s in enumerate(sched.shots)))
    return compute(MetricInput(frames=video, prompt=prompt, spec=SPEC), "memory")


def test_recall_is_one_on_truth():
    sched = schedule_for_seed(0, 120)
    res = _recall(render(sched), sched)
    s = res.scalars()
    for key in ("recall", "recall/colour", "recall/shape", "recall/mid", "recall_truth",
                "continuity", "recall_within"):
        assert s[key] == 1.0, key
    assert s["recall_moments"] == len(return_moments(sched)) and s["recall_moments/mid"] >= 20
    steps, values = res.curves()["recall_curve"]
    assert (values == 1).all() and steps[0] == return_moments(sched)[0].block * 4
    assert (res.curves()["scene_fidelity"][1] == 1).all()


def test_recall_is_at_chance_on_shuffled_returns():
    """Every returning block re-drawn with a random sprite at the same place: recall falls to
    the chance levels the module states, and the run's own chance estimate agrees."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        sched = schedule_for_seed(seed, 120)
        instance, instances = list(sched.instance), list(sched.instances)
        for m in return_moments(sched):
            old = instances[instance[m.block]]
            sprite = SpriteSpec(SHAPES[rng.integers(3)], COLOURS[rng.integers(4)])
            instances.append(Instance(len(instances), old.scene, sprite, old.start, old.velocity))
            instance[m.block] = len(instances) - 1
        shuffled = dataclasses.replace(sched, instance=instance, instances=instances)
        rows.append(_recall(render(shuffled), sched).scalars())
    colour = np.mean([r["recall/colour"] for r in rows])
    ident = np.mean([r["recall"] for r in rows])
    assert abs(colour - 0.25) < 0.1 and abs(ident - 1 / 12) < 0.07, (colour, ident)
    assert abs(np.mean([r["recall_chance/colour"] for r in rows]) - 0.25) < 0.1


def test_memory_recipe_yaml_mirrors_its_defaults_and_resumes(tmp_path):
    """`rollbench train world-memory` composes to the recipe's defaults; two tiny steps
    checkpoint, resume and export a loadable memory model with its card."""
    from omegaconf import OmegaConf

    from toolkit.models.recipes import RECIPES
    from toolkit.runs.config import compose_config
    from toolkit.worlds.memory.recipe import train_memory  # the recipe's entry: trains, gates
    from toolkit.worlds.memory.train import MemoryTrainConfig
    from toolkit.worlds.sprites.model import MemoryWorldModel, load_world

    recipe = RECIPES.get("world-memory")
    composed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(recipe.config),
                                                   compose_config([], "train/world-memory")))
    assert dataclasses.asdict(composed) == dataclasses.asdict(MemoryTrainConfig())
    cfg = MemoryTrainConfig(steps=1, batch=2, log_every=1, eval_every=0, out=str(tmp_path / "a"))
    cfg_2 = dataclasses.replace(cfg, steps=2)
    import toolkit.worlds.memory.recipe as evaluation

    assert recipe.run is train_memory
    calls = []
    real = evaluation.record_gates
    evaluation.record_gates = lambda path, clips=64: calls.append(path) or real(path, clips=2)
    try:
        train_memory(cfg, log=lambda _: None)
        rows: list[str] = []
        path = train_memory(cfg_2, log=rows.append)
        straight = train_memory(dataclasses.replace(cfg_2, out=str(tmp_path / "b")),
                                log=lambda _: None)
    finally:
        evaluation.record_gates = real
    assert any("resumed" in r and "step 1" in r for r in rows) and calls
    # one step, then resumed for a second, equals two straight
    resumed_state, straight_state = load_world(path).state_dict(), load_world(straight).state_dict()
    assert all(torch.equal(straight_state[k], v) for k, v in resumed_state.items())
    model = load_world(path)
    assert isinstance(model, MemoryWorldModel) and "gates" in model.card
    assert model.card["steps"] == 2 and model.card["init"]["sha256"]
