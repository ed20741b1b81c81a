"""Prompt switches measured: per-span fidelity, switch response, carry-over, jump at the switch.

Clips with a known answer: simulator clips that follow a schedule exactly (each span simulated
under its prompt, cut at the switches), and clips that ignore a switch (the previous prompt's
clip runs on through it).
"""

import numpy as np
import pytest
import torch

from toolkit.core.schedule import PromptSchedule
from toolkit.core.spec import ModelSpec
from toolkit.metrics import MetricInput, compute
from toolkit.metrics.switching import took_at
from toolkit.plugins import WORLDS, world_of
from toolkit.worlds.sprites import Prompt, simulate, split_seed

SPEC = ModelSpec(num_layers=1, num_heads=1, head_dim=24, latent_channels=12, latent_height=8,
                 latent_width=8, block_frames=4, train_frames=20)
A = Prompt.from_text("a red circle on navy, slow")
B = Prompt.from_text("a blue square on charcoal, fast")
C = Prompt.from_text("a green triangle on navy, fast")
SCHEDULE = PromptSchedule(((0, A), (16, B), (32, C), (48, A), (64, C), (80, B)))  # A B C A C B
SWITCH = ["switch_response", "switch_never", "carry_over", "switch_response_curve",
          "carry_over_curve", "switch_jump", "span_fidelity"]


def clip(shown: list, seeds: range = range(6), span: int = 16) -> torch.Tensor:
    """Span k shows ``shown[k]`` (simulated from its own start)."""
    return torch.cat([simulate([p], [split_seed(s, "val")], span)[0]
                      for p, s in zip(shown, seeds, strict=True)])


def measure(frames, which=SWITCH, prompt=SCHEDULE):
    return compute(MetricInput(frames=frames, prompt=prompt, spec=SPEC,
                               world=WORLDS.get("sprites")), which)


@pytest.mark.parametrize("seeds", [range(6), range(60, 66)])
def test_a_clip_that_follows_its_schedule_responds_at_once(seeds):
    got = measure(clip([A, B, C, A, C, B], seeds)).values
    assert got["switch_response"] == 0 and got["switch_never"] == 0 and got["carry_over"] == 0
    for attr in ("background", "colour", "shape", "speed"):  # each changes at some switch
        assert got[f"switch_response/{attr}"] == 0 and got[f"carry_over/{attr}"] == 0
    steps, values = got["switch_response_curve"]
    assert steps.tolist() == [16, 32, 48, 64, 80] and values.tolist() == [0] * 5
    assert got["span_fidelity"][1].tolist() == [1.0] * 6
    assert got["switch_jump"] > 3 * got["switch_jump/blocks"]  # cut at every switch


def test_a_clip_that_ignores_a_switch_never_takes_it():
    """A's clip runs on through the switch to B (frames 16-31): that switch never takes, all
    16 of its frames carry A over, and nothing jumps there; the other switches take at once."""
    shown = torch.cat([simulate([A], [split_seed(0, "val")], 32)[0], clip([C, A, C, B],
                                                                          range(2, 6))])
    got = measure(shown).values
    assert got["switch_never"] == pytest.approx(1 / 5)
    assert got["switch_never/background"] == pytest.approx(1 / 3)  # background: 3 switches
    assert got["switch_response"] == 0  # the mean over the switches that took
    resp = got["switch_response_curve"][1]
    assert resp.tolist() == [16, 0, 0, 0, 0]  # never: the span's length
    assert got["carry_over_curve"][1].tolist() == [16, 0, 0, 0, 0]
    assert got["span_fidelity"][1][1] == 0
    jumps = measure(shown, ["switch_jump_curve"]).values["switch_jump_curve"][1]
    assert jumps[0] < 2 < min(jumps[1:])  # no cut where the video ignored the switch


def test_a_late_switch_is_read_frames_after_it():
    """Span B shows A for its first 6 frames then B: the response is 6 frames (the
    first frame from which B shows over a block), 6 frames of A carried over."""
    late = torch.cat([simulate([A], [split_seed(0, "val")], 22)[0],
                      simulate([B], [split_seed(1, "val")], 10)[0]])
    sched = PromptSchedule(((0, A), (16, B)))
    got = measure(late, prompt=sched).values
    assert got["switch_response/background"] == 6 and got["switch_response/colour"] == 6
    assert got["carry_over/colour"] == 6 and got["switch_never"] == 0


def test_took_at_needs_the_new_value_to_hold():
    """A flicker of the new value does not count; a stretch holding it does; NaN is unread."""
    assert took_at(np.array([0, 1, 0, 0, 0, 1, 1, 1], float), 4) == 5
    assert took_at(np.array([np.nan, 1, 1, np.nan, 1], float), 4) == 1
    assert took_at(np.zeros(8), 4) is None


def test_the_issue_schedule_reads_per_span_not_unavailable():
    """Every world measure of a schedule reads the prompt in force (no 'needs a world
    prompt'); the switch measures of a single-prompt run do not apply (left out of warnings)."""
    names = ["fidelity", "identity_drift", "vde", "frechet", "sprite_speed", "speed_ratio",
             "repetition_excess", *SWITCH]
    res = measure(clip([A, B, C, A, C, B]), names)
    assert res.unavailable == {}
    assert np.nanmean(res.values["fidelity"][1]) == 1.0
    assert np.nanmax(res.values["identity_drift"][1]) == 0.0  # each span against its own
    assert res.values["vde"] == 0.0
    ratio = res.values["speed_ratio"][1]
    assert 0.8 < np.nanmean(ratio[16:32]) < 1.2 and 0.8 < np.nanmean(ratio[:16]) < 1.2
    single = measure(simulate([A], [split_seed(0, "val")], 32)[0], SWITCH, prompt=A)
    assert set(single.unavailable) == set(SWITCH) == single.inapplicable
    # without a model, a schedule of world prompts finds a world that reads every prompt
    assert world_of(prompt=PromptSchedule(((0, A), (16, Prompt.from_text(
        "a red circle and a blue square on charcoal, fast"))))).name == "sprites"


def test_memory_world_cuts_are_read_per_shot():
    """A rendered memory-world schedule (the world's truth) takes every cut at once, carrying
    nothing over; its per-shot report reads the scene everywhere."""
    from toolkit.worlds.memory.scenes import render, schedule_for_seed

    sched = schedule_for_seed(3, 12, 4, "val")
    shots = PromptSchedule(tuple((4 * b, shot) for b, shot in enumerate(sched.shots)))
    res = compute(MetricInput(frames=render(sched), prompt=shots, spec=SPEC,
                              world=WORLDS.get("memory")), [*SWITCH, "fidelity"])
    got = res.values
    assert got["switch_never"] == 0 and got["switch_response"] == 0 and got["carry_over"] == 0
    assert "switch_response/background" in got
    assert np.nanmean(got["fidelity/background"][1]) == 1.0


def test_the_switching_experiment_sweeps_valid_schedules_with_returns():
    """experiment=switching: its two schedules (swept as JSON text) parse as six-prompt
    schedules of sprite-world prompts on block boundaries, each returning to an earlier prompt,
    and it sweeps recache none / switch."""
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "ablations" / "experiment" / "switching.yaml"
    params = OmegaConf.load(path)["hydra"]["sweeper"]["params"]
    assert str(params["recache"]).split(",") == ["none", "switch"]
    [sweep] = OverridesParser.create().parse_overrides([f"prompt={params['prompt']}"])
    schedules = [PromptSchedule.of(v.text) for v in sweep.sweep_iterator()]
    assert len(schedules) == 2
    for s in schedules:
        s.check(4, 96)
        texts = [p for _, p in s.segments]
        assert len(texts) == 6 and all(Prompt.from_text(t) for t in texts)
        assert any(t in texts[:i - 1] for i, t in enumerate(texts) if i > 1)  # a return


def test_a_schedule_as_json_text_and_a_bracketed_prompt():
    s = PromptSchedule.of('[[0, "a"], [4, "b"]]')
    assert s.segments == ((0, "a"), (4, "b"))
    assert PromptSchedule.of("[[cinematic]] a cat").segments == ((0, "[[cinematic]] a cat"),)
    with pytest.raises(ValueError, match="must start at frame 0"):
        PromptSchedule.of('[[4, "a"]]')
