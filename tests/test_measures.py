"""The findings' measures: windows that see only their own frames, whole-rollout and binned
windows, frame resets at cache events and at the RoPE periods, motion that can fall,
repetition against real clips, fidelity per attribute, and the memory world's recall."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from toolkit.core.spec import ModelSpec
from toolkit.core.trace import BlockRecord, Trace
from toolkit.errors import ConfigError
from toolkit.findings import (
    Check,
    bin_means,
    evaluate,
    load_spec,
    measure_value,
    parse_measure,
)
from toolkit.metrics import METRICS, MetricInput, Unavailable, compute
from toolkit.metrics.boundary import events, rope_periods
from toolkit.worlds.sprites import BACKGROUNDS, prompt_for_seed, simulate, split_seed

# the world model's sizes: head_dim 32 -> 12 time dims -> RoPE periods 6.3, 29.2, 135.4 ... frames
SPEC = ModelSpec(num_layers=1, num_heads=1, head_dim=32, latent_channels=12, latent_height=8,
                 latent_width=8, block_frames=4, train_frames=20)
PROMPT = prompt_for_seed(0, "heldout")


def series_of(frames, which=("boundary_jump", "boundary_change"), trace=None):
    res = compute(MetricInput(frames=frames, prompt=PROMPT, spec=SPEC, trace=trace), which)
    return {k: v for k, v in res.values.items() if isinstance(v, tuple)}


# --- boundary jumps within a window ----------------------------------------------------
def two_arms(frames: int = 80, split: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Two videos identical in frames [0, split); the second jumps and moves more after."""
    rng = np.random.default_rng(0)
    a = np.cumsum(rng.normal(0, 0.01, (frames, 3, 8, 8)), 0).astype(np.float32) + 0.5
    b = a.copy()
    b[split:] += np.cumsum(rng.normal(0, 0.05, (frames - split, 3, 8, 8)), 0)
    b[split::4] += 0.2  # and jumps into every later block
    return a, b


def test_boundary_ratio_is_equal_where_two_arms_are_identical():
    a, b = two_arms()
    sa, sb = series_of(a), series_of(b)
    one = measure_value("boundary_ratio@first", sa, 80, 20)
    assert np.isfinite(one) and one == measure_value("boundary_ratio@first", sb, 80, 20)
    assert measure_value("boundary_ratio@last", sa, 80, 20) != pytest.approx(
        measure_value("boundary_ratio@last", sb, 80, 20), rel=0.1)
    # the old measure divides by the whole video's within-block change: it leaks
    old_a = measure_value("boundary_change@first", sa, 80, 20)
    assert old_a != pytest.approx(measure_value("boundary_change@first", sb, 80, 20), rel=0.1)


def test_boundary_ratio_is_jumps_over_within_changes_of_the_window():
    steps = np.arange(0, 40, 4)
    jump = np.arange(10, dtype=float)  # jump into block at step 4k is k (NaN for block 0)
    jump[0] = np.nan
    within = np.full(10, 2.0)
    within[5:] = 4.0
    s = {"boundary_jump": (steps, jump), "boundary_jump/within": (steps, within)}
    # window [20, 40): jumps into blocks 24..36 (not 20: it crosses from frame 19) / within 4
    assert measure_value("boundary_ratio@last", s, 40, 20) == pytest.approx(np.mean([6, 7, 8,
                                                                                      9]) / 4)
    assert measure_value("boundary_ratio@first", s, 40, 20) == pytest.approx(np.mean([1, 2, 3,
                                                                                       4]) / 2)
    s["cache_events"] = (steps, (steps >= 28).astype(float))
    assert measure_value("event_jump@last", s, 40, 20) == pytest.approx(np.mean([7, 8, 9]) / 4)
    assert measure_value("quiet_jump@last", s, 40, 20) == pytest.approx(6 / 4)
    assert np.isnan(measure_value("event_jump@first", s, 40, 20))  # no event there


def test_whole_rollout_and_binned_windows():
    steps = np.arange(120)
    values = np.where(steps % 30 < 15, 1.0, 0.0)  # a 30-frame rhythm
    s = {"fidelity": (steps, values)}
    assert measure_value("fidelity@whole", s, 120, 20) == pytest.approx(values[20:].mean())
    starts, means = bin_means(steps, values, 20, 120, 30)
    assert starts.tolist() == [20, 50, 80, 110] and means == pytest.approx([0.5, 0.5, 0.5, 0])
    assert measure_value("fidelity@bins30", s, 120, 20) == pytest.approx(0.375)  # bins weigh
    assert measure_value("fidelity@whole", s, 120, 20) == pytest.approx(0.45)  # frames weigh
    sparse = {"recall_curve": (np.array([24, 28, 100]), np.array([1.0, 1.0, 0.0]))}
    assert measure_value("recall_curve@whole", sparse, 120, 20) == pytest.approx(2 / 3)
    assert measure_value("recall_curve@bins40", sparse, 120, 20) == pytest.approx(0.5)
    assert measure_value("fidelity@drop", s, 120, 20) == pytest.approx(0.75 - 0.25)


def test_measure_syntax_and_its_errors():
    assert parse_measure("fidelity/background@whole").curves == ("fidelity/background",)
    assert parse_measure("recall/mid").kind == "scalar"
    assert parse_measure("boundary_ratio@bins30").bins == 30
    assert parse_measure("moving@last").bounds == (0.0, 1.0)
    assert parse_measure("moving@drop").bounds == (-1.0, 1.0)
    assert parse_measure("boundary_ratio@last").bounds == (0.0, np.inf)
    assert parse_measure("kv_bytes@last").exact and parse_measure("kv_growth").exact
    assert not parse_measure("fidelity@last").exact
    assert parse_measure("fidelity@whole").at("first") == "fidelity@first"
    assert parse_measure("recall").at("first") is None
    for bad, message in [
        ("fidelity/color@last", "Did you mean 'fidelity/colour'?"),
        ("fidelity@bins0", "window of 'fidelity@bins0'='bins0' is not allowed"),
        ("boundary_ratio@late", "Did you mean 'last'?"),
        ("recall@last", "curve of 'recall@last'='recall' is not allowed"),
        ("recall/middle", "Did you mean 'recall/mid'?"),
        ("fidelity", "metric of 'fidelity'='fidelity' is not allowed"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_measure(bad)


def test_the_shipped_findings_files_still_parse():
    for name in ("findings.yaml", "findings-followup.yaml"):
        spec = load_spec(load_spec().path.with_name(name))
        assert all(t.parsed.kind in ("curve", "whole") for c in spec.claims for t in c.tests)


def test_scalar_measures_read_their_logged_value_and_feed_a_test():
    s = {"recall/mid": (np.array([0]), np.array([0.75]))}
    assert measure_value("recall/mid", s, 120, 20) == 0.75
    assert np.isnan(measure_value("recall/mid", {"recall/mid": (np.array([]), np.array([]))},
                                  120, 20))
    rows = [{"arm": a, "seed": k, "recall/mid": v} for k in range(8)
            for a, v in (("topk", 0.6 + 0.01 * k), ("recency", 0.3))]
    check = Check("top-k recalls more", "recall/mid", "topk", "greater", "recency")
    assert evaluate(check, pd.DataFrame(rows)).verdict == "holds"


# --- cache events and frame resets -----------------------------------------------------
def pf_trace(moves: bool) -> Trace:
    """PackForcing-like info: the archive evicts from block 4 on; the sink moves with it."""
    t = Trace("packforcing", 4)
    for i in range(8):
        gone = max(0, i - 4)
        sink_t0 = [4.0 * gone if moves else 0.0]
        info = {"sink": [0], "sink_t0": sink_t0, "archive": list(range(1 + gone, i - 1)),
                "recent": [i - 1] if i else [], "selected": [], "evicted": gone}
        t.blocks.append(BlockRecord(i, 4.0 * i, 0, {}, {}, {}, info))
    return t


def test_cache_events_are_read_from_the_trace():
    shift, absolute = events(pf_trace(True)), events(pf_trace(False))
    assert shift["dropped"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert shift["moved"].tolist() == [0, 0, 0, 0, 0, 4, 4, 4]
    assert absolute["moved"].tolist() == [0] * 8
    window = Trace("window", 4)
    for i in range(5):  # a 2-block window: block i-2 leaves at block i
        ctx = list(range(max(0, i - 2), i))
        window.blocks.append(BlockRecord(i, 4.0 * i, 0, {}, {}, {},
                                         {"context_blocks": ctx, "context_t0": [4.0 * c
                                                                                for c in ctx]}))
    assert events(window)["dropped"].tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(Unavailable, match="names no context blocks"):
        events(Trace("X", 4, [BlockRecord(0, 0.0, 0, {}, {}, {}, {})]))


def test_cache_events_of_a_real_packforcing_rollout():
    """shift and absolute evict at the same blocks; only shift moves the sink."""
    from toolkit.core.rollout import rollout
    from toolkit.runs.config import build, compose_config

    got = {}
    for pos in ("shift", "absolute"):
        cfg = compose_config(["strategy=packforcing-world", "model=world-pf",
                              "strategy.capacity=2", "strategy.top_k=1",
                              f"strategy.positions={pos}"])
        model, strategy = build(cfg)
        out = rollout(model, strategy, [model.default_prompt(0)], 32, seed=0, decode=False)
        got[pos] = events(out.trace)
    # sink 2 blocks, recent 1, archive 2: the first eviction empties block 2 at block 6's context
    assert got["shift"]["dropped"].tolist() == [0] * 6 + [1, 1]
    assert got["absolute"]["dropped"].tolist() == got["shift"]["dropped"].tolist()
    assert got["shift"]["moved"].tolist() == [0] * 6 + [4, 4]
    assert not got["absolute"]["moved"].any()


def rhythm_video(period: float, frames: int = 480, seed: int = 0) -> np.ndarray:
    """Small within-block drift; jumps into each block whose size follows ``period``."""
    rng = np.random.default_rng(seed)
    video = np.cumsum(rng.normal(0, 0.002, (frames, 3, 4, 4)), 0) + 0.5
    for b in range(1, frames // 4):
        size = 0.02 * (1 + 0.8 * np.sin(2 * np.pi * 4 * b / period)) if period else \
            0.02 * (1 + 0.8 * rng.uniform(-1, 1))
        video[4 * b:] += size * (-1) ** b
    return video.astype(np.float32)


def test_rope_power_finds_jumps_at_the_rope_period():
    assert rope_periods(SPEC)[1] == pytest.approx(29.16, abs=0.01)
    at = compute(MetricInput(frames=rhythm_video(rope_periods(SPEC)[1]), spec=SPEC),
                 ["rope_power"]).values
    none = compute(MetricInput(frames=rhythm_video(0), spec=SPEC), ["rope_power"]).values
    assert at["rope_power/f1"] > 0.8 and at["rope_power/control"] < 0.05
    assert none["rope_power/f1"] < 0.1 and at["rope_power"] >= at["rope_power/f1"]
    assert "rope_power/f0" not in at  # 6.3 frames: shorter than two blocks
    short = compute(MetricInput(frames=rhythm_video(29.16, 40), spec=SPEC), ["rope_power"])
    assert "no RoPE time period" in short.unavailable["rope_power"]


# --- motion, repetition, fidelity against real clips -----------------------------------
def clip(frames: int, seed: int = 0) -> torch.Tensor:
    return simulate([PROMPT], [split_seed(seed, "heldout")], frames)[0]


def test_motion_measures_fall_when_the_sprite_stops():
    real = clip(120)
    stopped = real.clone()
    stopped[60:] = real[60]
    res = {name: compute(MetricInput(frames=v, prompt=PROMPT, spec=SPEC),
                         ["frozen", "speed_ratio", "moving"]).values
           for name, v in (("real", real), ("stopped", stopped))}
    late = {k: {m: measure_value(f"{m}@last", res[k], 120, 20)
                for m in ("frozen", "speed_ratio", "moving")} for k in res}
    assert late["real"]["frozen"] < 0.05 and abs(late["real"]["speed_ratio"] - 1) < 0.2
    assert late["stopped"]["frozen"] == 1.0 and late["stopped"]["speed_ratio"] == 0.0
    assert late["stopped"]["moving"] == 0.0 and late["real"]["moving"] == 1.0


def test_repetition_is_measured_against_real_clips_of_the_prompt():
    real = clip(160, seed=1)
    looped = real[:40].repeat(4, 1, 1, 1)
    rep = {k: compute(MetricInput(frames=v, prompt=PROMPT, spec=SPEC), ["self_similarity",
                                                                         "repetition_excess"])
           for k, v in (("real", real), ("looped", looped))}
    real_excess = np.nanmean(rep["real"].values["repetition_excess"][1])
    looped_excess = np.nanmean(rep["looped"].values["repetition_excess"][1])
    assert abs(real_excess) < 0.15 and looped_excess > real_excess + 0.2
    assert np.nanmean(rep["real"].values["self_similarity"][1]) > 0.2  # real motion repeats


def test_fidelity_is_addressable_per_attribute():
    real = clip(40)
    other = next(b for b in BACKGROUNDS if b != PROMPT.background)
    bg = (real == real[:, :, :1, :1]).all(1, keepdim=True)  # the background's pixels
    wrong = torch.where(bg, torch.tensor(BACKGROUNDS[other])[None, :, None, None], real)
    res = compute(MetricInput(frames=wrong, prompt=PROMPT, spec=SPEC), ["fidelity"]).values
    assert set(METRICS.get("fidelity").series) == {k.partition("/")[2] for k in res}
    assert res["fidelity/background"][1].mean() < 0.1 and res["fidelity/colour"][1].mean() > 0.9


def test_declared_series_are_what_the_metrics_return():
    a, _ = two_arms(32)
    res = compute(MetricInput(frames=a, spec=SPEC, trace=pf_trace(True)),
                  ["boundary_jump", "cache_events"])
    for name in ("boundary_jump", "cache_events"):
        assert {k.partition("/")[2] for k in res.values if k.split("/")[0] == name} == \
            set(METRICS.get(name).series)


# --- the memory world's recall, and the whole path from logged series ------------------
def test_recall_measures_of_the_memory_world_are_findings_measures():
    from toolkit.core.schedule import PromptSchedule
    from toolkit.worlds.memory.scenes import render, schedule_for_seed

    sched = schedule_for_seed(0, 30)
    prompt = PromptSchedule(tuple((b * 4, s) for b, s in enumerate(sched.shots)))
    names = ["recall", "recall_curve", "recall_gap", "recall_chance", "recall_position",
             "recall_within", "recall_moments", "continuity", "scene_fidelity"]
    res = compute(MetricInput(frames=render(sched), prompt=prompt, spec=SPEC), names)
    assert not res.unavailable
    for name in names:
        got = {k.partition("/")[2] for k in res.values if k.split("/")[0] == name}
        assert got == (set(METRICS.get(name).series) or {""}), name  # scalars: one value
    logged = {k: v if isinstance(v, tuple) else (np.array([0]), np.array([v]))
              for k, v in res.values.items()}
    assert measure_value("recall/mid", logged, 120, 20) == 1.0  # the truth recalls everything
    assert measure_value("recall_curve@whole", logged, 120, 20) == 1.0
    assert measure_value("scene_fidelity/intro@bins30", logged, 120, 20) == 1.0


def test_memory_world_motion_can_fall():
    from toolkit.core.schedule import PromptSchedule
    from toolkit.worlds.memory.scenes import render, schedule_for_seed

    sched = schedule_for_seed(1, 30)
    prompt = PromptSchedule(tuple((b * 4, s) for b, s in enumerate(sched.shots)))
    truth = render(sched)
    still = truth.reshape(30, 4, *truth.shape[1:])[:, :1].expand(-1, 4, -1, -1, -1)
    names = ["scene_speed_ratio", "scene_frozen"]
    got = {k: compute(MetricInput(frames=v, prompt=prompt, spec=SPEC), names).values
           for k, v in (("truth", truth), ("still", still.reshape(truth.shape)))}
    whole = {k: {n: measure_value(f"{n}@whole", got[k], 120, 20) for n in names} for k in got}
    assert abs(whole["truth"]["scene_speed_ratio"] - 1) < 0.25
    assert whole["truth"]["scene_frozen"] < 0.1
    assert whole["still"] == {"scene_speed_ratio": 0.0, "scene_frozen": 1.0}
    sprites = compute(MetricInput(frames=truth, prompt=PROMPT, spec=SPEC), names)
    assert set(sprites.unavailable) == set(names)  # a sprite-world prompt: not these


def test_measure_runs_reads_every_series_a_measure_needs(tmp_path, monkeypatch):
    import textwrap

    import toolkit.runs.aggregate
    from toolkit.findings import measure_runs

    path = tmp_path / "f.yaml"
    path.write_text(textwrap.dedent("""
        latent_frames: 80
        window: 20
        arms: {a: [model=world], b: [model=world]}
        claims:
          - id: c
            claim: x
            paper: y
            tests:
              - {name: t, measure: boundary_ratio@last, arm: a, baseline: b, expect: greater}
              - {name: u, measure: recall/mid, arm: a, baseline: b, expect: greater}
        """))
    spec = load_spec(path)
    a, b = two_arms()
    logged = {"ra": {**series_of(a), "recall/mid": (np.array([0]), np.array([0.5]))},
              "rb": {**series_of(b), "recall/mid": (np.array([0]), np.array([0.25]))}}
    asked = []

    def curves(ids, name, uri):
        asked.append(name)
        return {i: logged[i][name] for i in ids}
    monkeypatch.setattr(toolkit.runs.aggregate, "curves", curves)
    runs = pd.DataFrame({"run_id": ["ra", "rb"], "arm": ["a", "b"], "seed": [0, 0]})
    table = measure_runs(spec, runs, "unused").set_index("arm")
    assert sorted(asked) == ["boundary_jump", "boundary_jump/within", "recall/mid"]
    assert table.loc["a", "boundary_ratio@first"] == table.loc["b", "boundary_ratio@first"]
    assert table.loc["a", "recall/mid"] == 0.5 and "recall/mid@first" not in table
