"""The memory page's primary statistic and its pilot (issue 22, item 5): two arms compared on the
return moments readable in both (``CURVE@paired``), moment-weighted, with the seed as the unit;
and ``rollbench findings pilot=true`` fixing the seed count from its own prompts."""

import textwrap

import numpy as np
import pandas as pd
import pytest

from toolkit.errors import ConfigError
from toolkit.findings import (
    Statistics,
    evaluate,
    evaluate_spec,
    load_spec,
    paired_counts,
    paired_values,
    parse_measure,
    plan,
    sd_upper,
    seeds_for,
)
from toolkit.findings.power import pilot_rows
from toolkit.findings.spec import Check

PAIRED = "recall_curve/beyond_colour@paired"
MARGIN = Statistics(test="permutation", interval="t", correction="holm", exact=True,
                    rules="margin")


def _series(steps, values):
    return (np.array(steps, np.int64), np.array(values, float))


# seed 0: steps 4 and 12 readable in both; seed 1: nothing in common; seed 2: steps 8 and 20
ARM = {0: _series([4, 8, 12], [1, 0, 1]), 1: _series([4], [1]), 2: _series([8, 20], [1, 1])}
BASE = {0: _series([4, 12, 16], [0, 1, 1]), 1: _series([4], [np.nan]),
        2: _series([8, 20], [0, 0])}


def _table(arm=ARM, base=BASE):
    rows = [{"arm": "a", "seed": s, PAIRED: v} for s, v in arm.items()]
    rows += [{"arm": "b", "seed": s, PAIRED: v} for s, v in base.items()]
    return pd.DataFrame(rows)


def test_a_paired_measure_parses_and_needs_a_zero_one_curve():
    m = parse_measure(PAIRED)
    assert (m.kind, m.window, m.curves) == ("paired", "paired", ("recall_curve/beyond_colour",))
    assert m.bounds == (0.0, np.inf) and m.at("first") is None
    with pytest.raises(ConfigError, match="@paired compares a 0 / 1 curve"):
        parse_measure("sprite_speed@paired")


def test_paired_values_weigh_each_moment_readable_in_both_once():
    a, b = paired_values(pd.Series(ARM), pd.Series(BASE))
    # 4 common moments on 2 seeds: each seed's sums scaled by 2 / 4
    assert a.to_dict()[0] == pytest.approx(1.0) and b.to_dict()[0] == pytest.approx(0.5)
    assert a.to_dict()[2] == pytest.approx(1.0) and b.to_dict()[2] == pytest.approx(0.0)
    assert np.isnan(a[1]) and np.isnan(b[1])
    # the means over seeds are the pooled recalls on the common moments: 4/4 and 1/4
    assert a.mean() == pytest.approx(1.0) and b.mean() == pytest.approx(0.25)
    assert paired_counts(pd.Series(ARM), pd.Series(BASE)).to_dict() == {0: 2, 1: 0, 2: 2}


def test_the_paired_difference_is_moment_weighted_not_a_mean_of_seed_means():
    """Seed 0 has 1 common moment (difference 1), seed 1 has 3 (differences 0): the
    moment-weighted difference is 1/4, the mean of per-seed rates would be 1/2."""
    arm = {0: _series([4], [1]), 1: _series([4, 8, 12], [1, 1, 1])}
    base = {0: _series([4], [0]), 1: _series([4, 8, 12], [1, 1, 1])}
    r = evaluate(Check("t", PAIRED, "a", "greater", "b", 0.0, 0.05), _table(arm, base), MARGIN)
    assert r.mean == pytest.approx(0.25) and len(r.values) == 2


def test_a_paired_measure_is_no_arms_table_column_and_columns_are_measured(tmp_path):
    from toolkit.findings import measures_needed

    path = tmp_path / "p.yaml"
    path.write_text(SPEC + "columns: [recall_beyond/colour, peak_kv_bytes]\n")
    spec = load_spec(path)
    assert spec.columns == ("recall_beyond/colour", "peak_kv_bytes")
    assert measures_needed(spec)[:2] == ["recall_beyond/colour", "peak_kv_bytes"]
    path.write_text(SPEC + f"columns: [{PAIRED}]\n")
    with pytest.raises(ConfigError, match="compares two arms"):
        load_spec(path)
    path.write_text(SPEC + "columns: [recall_beyond/colur]\n")
    with pytest.raises(ConfigError, match="colur"):
        load_spec(path)


def test_a_paired_test_without_a_baseline_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SPEC.replace("arm: a, baseline: b,\n", "arm: a,\n", 1))
    with pytest.raises(ConfigError, match="pairs the arm with a baseline moment by moment"):
        load_spec(path)


SPEC = textwrap.dedent("""
    seeds: 12
    latent_frames: 480
    window: 120
    pilot: {first_seed: 400, seeds: 6, sd: 0.12, effect: 0.10}
    statistics: {test: permutation, interval: t, correction: holm, exact: true, rules: margin}
    arms:
      a: [model=world-memory, strategy=oracle]
      b: [model=world-memory, strategy=oracle-wrong]
    claims:
      - id: gate
        control: true
        claim: the bracket
        paper: none
        tests:
          - {name: g, measure: recall_curve/beyond_colour@paired, arm: a, baseline: b,
             expect: greater, margin: 0.05}
      - id: main
        claim: main
        paper: none
        tests:
          - {name: m, measure: recall_curve/beyond_colour@paired, arm: b, baseline: a,
             expect: less, margin: 0.05}
          - {name: s, measure: recall_kappa/beyond_colour, arm: a, baseline: b,
             expect: greater, margin: 0.05}
""")


def _pilot_table(diffs):
    """Each seed: 4 common moments; arm a hits ``k`` more of them than b."""
    rows = []
    for s, k in enumerate(diffs):
        steps = [4, 8, 12, 16]
        rows += [{"arm": "a", "seed": s, PAIRED: _series(steps, [1] * k + [0] * (4 - k)),
                  "recall_kappa/beyond_colour": 0.1 * k},
                 {"arm": "b", "seed": s, PAIRED: _series(steps, [0] * 4),
                  "recall_kappa/beyond_colour": 0.0}]
    return pd.DataFrame(rows)


def test_the_pilot_reads_the_sd_of_the_gate_and_primaries_and_asks_for_seeds(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    diffs = [1, 2, 3, 1, 2, 3]
    rows = pilot_rows(spec, _pilot_table(diffs))
    assert [(r["claim"], r["role"]) for r in rows] == [("gate", "gate"), ("main", "primary")]
    d = np.array(diffs) / 4.0  # 4 moments per seed: weighted values are the per-seed rates
    assert rows[0]["mean"] == pytest.approx(d.mean())
    assert rows[1]["mean"] == pytest.approx(-d.mean())
    assert rows[0]["sd"] == pytest.approx(d.std(ddof=1))
    assert rows[0]["sd_upper"] == pytest.approx(sd_upper(d.std(ddof=1), 6))
    assert rows[0]["seeds"] == seeds_for(sd_upper(d.std(ddof=1), 6), 0.10, 0.05)
    assert rows[1]["alpha"] == pytest.approx(0.05)  # the one primary: Holm's alpha / 1
    results = evaluate_spec(spec, _pilot_table(diffs))
    assert results["gate"][0].mean == pytest.approx(d.mean())


def test_the_pilot_plans_its_own_prompts_and_a_file_without_one_says_so(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    jobs = plan(spec, 6, pilot=True)
    assert sorted({j.seed for j in jobs}) == list(range(400, 406))
    assert sorted({j.seed for j in plan(spec, 12)}) == list(range(0, 12))
    path.write_text(SPEC.replace("pilot: {first_seed: 400, seeds: 6, sd: 0.12, effect: 0.10}\n",
                                 ""))
    with pytest.raises(ConfigError, match=r"pilot=true: p\.yaml has no pilot block"):
        plan(load_spec(path), 6, pilot=True)


def test_the_memory_world_logs_beyond_returns_as_a_sparse_curve():
    """``recall_curve/beyond_colour`` holds the readable returns last shown 4+ blocks back and
    never in the first block, at their block's first frame, with the colour match counted here
    by hand from the blocks' sprites (a constructed video that re-draws some returns wrong)."""
    from test_recall_parts import SPEC as MODEL
    from test_recall_parts import constructed

    from toolkit.core.schedule import PromptSchedule
    from toolkit.metrics import MetricInput, compute
    from toolkit.worlds.memory.scenes import render, return_moments

    sched, made, shown = constructed(seed=0, blocks=60)
    prompt = PromptSchedule(tuple((b * sched.block_frames, s) for b, s in enumerate(sched.shots)))
    curves = compute(MetricInput(frames=render(made), prompt=prompt, spec=MODEL),
                     ["recall_curve"]).curves()
    steps, values = curves["recall_curve/beyond_colour"]
    want = {m.block * sched.block_frames: float(shown[m.block].colour == shown[m.last].colour)
            for m in return_moments(sched) if m.gap >= 4 and m.needed_in(1, 1) == "mid"}
    assert len(steps) >= 0.8 * len(want) and 0 < values.mean() < 1, (len(steps), len(want))
    assert {int(s): float(v) for s, v in zip(steps, values, strict=True)} == {
        int(s): want[int(s)] for s in steps}
    all_steps = curves["recall_curve/colour"][0]
    assert set(steps.tolist()) < set(all_steps.tolist())
