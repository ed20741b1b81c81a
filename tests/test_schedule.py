"""Prompt schedules: validation, config syntax, per-block conditioning in rollouts and passes."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from strategies.full import Full
from toolkit.core.attention import MaskedPlan
from toolkit.core.cache import KeepBlocksStrategy
from toolkit.core.rollout import rollout
from toolkit.core.rope import grid_positions
from toolkit.core.schedule import Conditioning, PromptSchedule


def test_schedule_syntax_and_lookup():
    s = PromptSchedule.of(OmegaConf.create([[0, "a"], {"frame": 4, "prompt": "b"}, [12, "c"]]))
    assert [s.at(f) for f in (0, 3, 4, 11, 12, 99)] == ["a", "a", "b", "b", "c", "c"]
    assert s.starts(12) == [0, 4] and s.text() == "0: a | 4: b | 12: c"
    assert PromptSchedule.of("one prompt").segments == ((0, "one prompt"),)
    assert PromptSchedule.of([3, 4]).segments == ((0, [3, 4]),)  # token ids stay one prompt


@pytest.mark.parametrize(("value", "needle"), [
    ([[2, "a"]], "must start at frame 0"),
    ([[0, "a"], [8, "b"], [8, "c"]], "increase strictly"),
    ([[0, "a"], ["x", "b"]], "must be an integer"),
    ([{"frame": 0, "promt": "a"}], "exactly the keys"),
])
def test_bad_schedules_name_the_value(value, needle):
    with pytest.raises(ValueError, match=needle):
        PromptSchedule.of(value)


def test_switch_off_a_block_boundary_is_an_error(tiny):
    bf = tiny.spec.block_frames  # 2
    with pytest.raises(ValueError, match=r"frames \[3\].*block size 2"):
        rollout(tiny, Full(), [[[0, "a"], [3, "b"]]], 8, decode=False)
    # a switch past the end is never reached, so it is not checked
    rollout(tiny, Full(), [[[0, "a"], [2 * bf, "b"], [101, "c"]]], 8, decode=False)


def test_unknown_prompt_fails_before_any_block():
    from toolkit.worlds.sprites.model import load_world

    model = load_world()
    with pytest.raises(ValueError, match="cannot parse prompt text 'a purple moon'"):
        rollout(model, Full(), [[[0, "a red circle on navy, slow"], [8, "a purple moon"]]], 20,
                decode=False)


class _Record(KeepBlocksStrategy):
    """Full history that keeps each finished block's conditioning."""

    def assign(self, index, upcoming):
        return "cache"

    def reset(self):
        super().reset()
        self.conds = []

    def commit(self, block):
        self.conds.append(block.cond)
        super().commit(block)


def test_rollout_switches_conditioning_at_the_schedule(tiny):
    """Blocks before a switch equal the single-prompt rollout; the switch is in the Trace; each
    FinishedBlock carries the conditioning of its own prompt."""
    a = rollout(tiny, Full(), ["a"], 8, seed=3, decode=False)
    sched = [[[0, "a"], [4, "b"]]]
    strat = _Record()
    b = rollout(tiny, strat, sched, 8, seed=3, decode=False)
    assert torch.equal(a.latents[:, :, :4], b.latents[:, :, :4])
    assert not torch.allclose(a.latents[:, :, 4:], b.latents[:, :, 4:])
    assert b.trace.meta["switches"] == [4]
    assert b.trace.meta["schedule"] == [[0, "a"], [4, "b"]]
    cond_a, cond_b = tiny.encode_prompt(["a"]), tiny.encode_prompt(["b"])
    assert [torch.equal(c, cond_a) for c in strat.conds] == [True, True, False, False]
    assert torch.equal(strat.conds[3], cond_b)
    # the whole video under "b" from frame 4 on = a schedule that starts there
    c = rollout(tiny, Full(), [[[0, "a"], [4, "b"], [6, "b"]]], 8, seed=3, decode=False)
    assert torch.equal(b.latents, c.latents) and c.trace.meta["switches"] == [4]


def test_conditioning_encodes_each_prompt_once_and_reuses_tensors():
    calls = []

    def encode(prompts):
        calls.append(list(prompts))
        return torch.arange(len(prompts), dtype=torch.float32)[:, None, None].expand(-1, 2, 3)

    c = Conditioning(encode, [[[0, "x"], [4, "y"]], "x"], block_frames=2, frames=8)
    assert calls == [["x", "y"]]
    assert c.at(0) is c.at(2) and c.at(4) is c.at(6) and c.at(0) is not c.at(4)
    assert c.at(4)[:, 0, 0].tolist() == [1.0, 0.0]  # video 0 switched to y, video 1 still x
    assert c.switches() == [4]


def test_segmented_cross_attention_equals_per_block_passes(tiny):
    """One pass whose blocks each have their own prompt = separate passes per prompt (cross-
    attention is per token; self-attention here sees only its own block)."""
    spec = tiny.spec
    bf, tpb = spec.block_frames, spec.tokens_per_block
    x = torch.randn(1, spec.latent_channels, 2 * bf, spec.latent_height, spec.latent_width)
    pos = grid_positions(spec, 0.0, 2 * bf)
    cond = tiny.encode_prompt(["a", "b"])  # (2, L, C)
    block = torch.arange(2 * tpb) // tpb
    mask = block[:, None] == block[None, :]
    t = torch.zeros(1)
    with torch.no_grad(), tiny.attach():
        both = tiny.forward_tokens(x, t, pos, cond[None], plan=MaskedPlan(mask))
        ref = [tiny.forward_tokens(x[:, :, i * bf:(i + 1) * bf], t, pos[i * tpb:(i + 1) * tpb],
                                   cond[i:i + 1], plan=MaskedPlan()) for i in range(2)]
    assert torch.allclose(both, torch.cat(ref, 2), atol=1e-5)


def test_schedule_from_the_command_line(tmp_path):
    """`rollbench run prompt='[[0,"..."],[F,"..."]]'`: the Hydra syntax of a schedule."""
    from toolkit.runs.config import compose_config
    from toolkit.runs.jobs import run_job

    cfg = compose_config([f"run_root={tmp_path}", "model=tiny-random", "video.latent_frames=8",
                          'prompt=[[0,"a red fox"],[4,"a blue whale, at night"]]',
                          "tracking.metrics=system", "progress=false"])
    res = run_job(cfg)
    assert res.status == "finished", res.error
    assert res.rollout.trace.meta["schedule"] == [[0, "a red fox"],
                                                  [4, "a blue whale, at night"]]
    bad = compose_config([f"run_root={tmp_path}", "model=tiny-random", "video.latent_frames=8",
                          'prompt=[[0,"a"],[3,"b"]]', "tracking.metrics=system"])
    failed = run_job(bad)
    assert failed.status == "failed" and "block boundaries" in failed.error


def test_switches_are_tagged_and_the_report_marks_the_shared_ones(tmp_path):
    from reports import compare, data
    from toolkit.runs.config import compose_config
    from toolkit.runs.jobs import run_job
    from toolkit.runs.tracking import target

    for seed in (0, 1):
        cfg = compose_config([f"run_root={tmp_path}", "model=tiny-random", f"seed={seed}",
                              "video.latent_frames=8", 'prompt=[[0,"a"],[4,"b"]]',
                              "tracking.metrics=system", "experiment_name=sw"])
        assert run_job(cfg).status == "finished"
    uri, _ = target(cfg)
    exp = data.load_experiment(uri, "sw", ["kv_bytes"])
    assert [data.switches_of(r) for _, r in exp.runs.iterrows()] == [[4], [4]]
    assert compare.common_switches(exp.runs, ["full"]) == [4]
    steps, values = compare.binned(np.array([0, 5, 44, 50]), np.array([1.0, 0.0, 1.0, 1.0]), 40)
    assert steps.tolist() == [0, 40] and values.tolist() == [0.5, 1.0]


def test_interpolated_positions_keep_full_history_inside_the_trained_range(tiny):
    """`positions=interpolate`: full history with every position inside the training length
    (position range separated from context length); equal to `reindex` until it outgrows it."""
    spec = tiny.spec  # blocks of 2, trained on 8 frames
    starts = {}
    for mode in ("reindex", "interpolate"):
        out = rollout(tiny, Full(positions=mode), ["a"], 16, seed=1, decode=False)
        starts[mode] = [b.t0 for b in out.trace.blocks]
    assert starts["reindex"] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert starts["interpolate"][:4] == [0, 2, 4, 6]
    room = spec.train_frames - spec.block_frames
    assert all(t == room for t in starts["interpolate"][3:])
    with pytest.raises(ValueError, match=r"allowed.*interpolate"):
        Full(positions="squeeze")


def test_a_malformed_schedule_fails_when_the_config_is_composed():
    from toolkit.errors import ConfigError
    from toolkit.runs.config import compose_config

    with pytest.raises(ConfigError, match="must increase strictly"):
        compose_config(['prompt=[[0,"a red circle on navy, slow"],[0,"a blue square on '
                        'charcoal, fast"]]'])
