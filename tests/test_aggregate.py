"""Aggregates: confidence intervals, paired tests against a baseline, the results table."""

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from toolkit.core.trace import BlockRecord, Trace
from toolkit.runs.aggregate import curves, load_runs, mean_ci, paired_test, summarise
from toolkit.runs.config import compose_config
from toolkit.runs.tracking import record_run


def test_mean_ci_by_sample_size():
    assert np.isnan(mean_ci([1.0])[1])
    m, lo, hi = mean_ci([1.0, 3.0])  # two values: the mean, no interval (t would give -11..15)
    assert m == 2.0 and np.isnan(lo) and np.isnan(hi)
    assert stats.t.ppf(0.975, 1) * stats.sem([1.0, 3.0]) > 12  # why: far too wide to read
    assert mean_ci([2.0, 2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    x = np.random.default_rng(0).normal(5.0, 1.0, 40)
    m, lo, hi = mean_ci(x)
    assert lo < m < hi and lo < 5.0 < hi and hi - lo < 1.0
    assert mean_ci(x) == (m, lo, hi)  # seeded: the same interval every time
    assert mean_ci([*x, np.nan])[0] == pytest.approx(m)  # NaN (unavailable) is dropped


def test_intervals_stay_in_the_metrics_range():
    from toolkit.runs.aggregate import value_range

    assert value_range("fidelity") == (0.0, 1.0) and value_range("moving") == (0.0, 1.0)
    assert value_range("kv_bytes/sink") == (0.0, np.inf) and value_range("repetition") == (-1, 1)
    assert value_range("no_such_metric") == (-np.inf, np.inf)
    shares = [0.0, 0.0, 0.0, 1.0]
    m, lo, hi = mean_ci(shares, bounds=value_range("fidelity"))
    assert m == 0.25 and 0.0 <= lo <= m <= hi <= 1.0
    near = [-0.2, 0.0, 0.01, 0.02]  # an interval reaching below 0 is cut at the range
    assert mean_ci(near)[1] < 0 and mean_ci(near, bounds=(0.0, 1.0))[1] == 0.0
    table = summarise(pd.DataFrame({"strategy": ["a"] * 4, "latent_frames": [8] * 4,
                                    "seed": range(4), "prompt": ["p"] * 4,
                                    "dynamic_degree": shares}),
                      metrics=["dynamic_degree"], baseline=None)
    assert table["ci_low"].iloc[0] >= 0.0 and table["ci_high"].iloc[0] <= 1.0


def test_paired_tests():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 12)
    assert paired_test(a, a) == 1.0
    assert paired_test(a + 1.0 + rng.normal(0, 0.1, 12), a) < 0.01
    assert paired_test(a + 1.0 + rng.normal(0, 0.1, 12), a, "ttest") < 0.01
    assert paired_test(a + rng.normal(0, 1, 12), a) > 0.05
    with pytest.raises(ValueError, match="allowed"):
        paired_test(a, a, "anova")


def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):
        base = rng.normal(1.0, 0.2)
        for strategy, shift in (("full", 0.0), ("sink", -0.5), ("window", 0.0)):
            for frames in (40, 480):
                rows.append({"strategy": strategy, "latent_frames": frames, "seed": seed,
                             "prompt": f"p{seed % 2}",
                             "vde": base + shift + rng.normal(0, 0.05 if shift else 0.3),
                             "norepeat": 0.9 + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def test_summarise_pairs_runs_with_the_baseline():
    out = summarise(table(), by=["strategy", "latent_frames"], metrics=["vde", "norepeat"],
                    baseline="full")
    assert len(out) == 3 * 2 * 2
    sink = out[(out.strategy == "sink") & (out.metric == "vde") & (out.latent_frames == 480)]
    row = sink.iloc[0]
    assert row.n == 8 and row.n_pairs == 8 and row.direction == "lower"
    assert row.ci_low < row["mean"] < row.ci_high
    assert row.delta == pytest.approx(-0.5, abs=0.2)
    assert row.significant and row.better and row.test == "wilcoxon"
    window = out[(out.strategy == "window") & (out.metric == "vde")]
    assert not window.significant.any() and not window.better.any()
    full = out[out.strategy == "full"]
    assert full.p_value.isna().all() and not full.significant.any()
    assert set(out[out.metric == "norepeat"].direction) == {"higher"}


def test_summarise_names_missing_columns():
    with pytest.raises(ValueError, match="'nope'"):
        summarise(table(), metrics=["nope"])


def test_load_runs_and_curves_from_a_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_config([f"run_root={tmp_path}", f"tracking.uri={uri}", "video.latent_frames=8",
                          "tracking.experiment=agg", "tracking.metrics=system"])
    for strategy in ("full", "sink"):
        for seed in (0, 1):
            cfg.strategy = {"_target_": strategy}
            cfg.seed = seed
            trace = Trace(strategy, 2, [BlockRecord(i, 2.0 * i, 0, {"cache": 8 * i},
                                                    {"cache": 100 * (i + seed)},
                                                    {"denoise": 0.1}) for i in range(4)])
            out = types.SimpleNamespace(latents=torch.zeros(1, 4, 8, 2, 2), frames=None,
                                        trace=trace)
            run_dir = tmp_path / f"{strategy}-{seed}"
            run_dir.mkdir()
            assert record_run(out, cfg, run_dir, prompt="p") is not None
    df = load_runs(uri, "agg")
    assert len(df) == 4 and set(df.strategy) == {"full", "sink"} and set(df.seed) == {0, 1}
    assert set(df.latent_frames) == {8} and "peak_kv_bytes" in df.columns
    assert "kv_bytes" not in df.columns  # curves are not table columns
    row = df[(df.strategy == "sink") & (df.seed == 1)].iloc[0]
    assert row.peak_kv_bytes == 400
    got = curves([row.run_id], "kv_bytes", uri)[row.run_id]
    np.testing.assert_array_equal(got[0], [0, 2, 4, 6])
    np.testing.assert_array_equal(got[1], [100, 200, 300, 400])
    summary = summarise(df, by=["strategy"], metrics=["peak_kv_bytes"], baseline="full")
    assert list(summary.n) == [2, 2] and summary.direction.iloc[0] == "lower"
    assert load_runs(uri, "no-such-experiment").empty
    assert json.loads((tmp_path / "sink-1" / "meta.json").read_text())["tags"]["strategy"] \
        == "sink"


def test_duplicates_of_a_run_key_count_once_and_different_configs_are_never_pooled():
    from toolkit.runs.aggregate import drop_duplicates, split_variants

    df = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e"], "status": ["FINISHED"] * 4 + ["FAILED"],
        "run_key": ["k1", "k1", "k2", "k3", "k1"], "info.end_time": [1, 2, 3, 4, 5],
        "variant": ["sink"] * 5, "params.seed": ["0", "0", "1", "0", None],
        "params.strategy.positions": ["absolute", "absolute", "absolute", "reindex", None]})
    out = drop_duplicates(df)
    assert out.attrs["duplicates"] == 1 and list(out["run_id"]) == ["b", "c", "d", "e"]
    split, notes = split_variants(out)
    assert list(split["variant"]) == ["sink (strategy.positions=absolute)"] * 2 + [
        "sink (strategy.positions=reindex)", "sink"]  # e logged no params: left as it is
    assert len(notes) == 1 and "strategy.positions" in notes[0] and "2 variants" in notes[0]
    same, none = split_variants(out[out["run_id"] != "d"])  # seeds differ only: pooled
    assert set(same["variant"]) == {"sink"} and none == []


def test_a_sub_series_with_its_own_unit_has_that_units_range():
    """``recall_beyond/count`` counts returns beside the metric's fractions: its range is a
    count's, and computed runs record that unit for it."""
    import toolkit.worlds.memory.metrics  # noqa: F401  (registers the memory world's metrics)
    from toolkit.metrics import METRICS, series_unit
    from toolkit.runs.aggregate import value_range

    assert series_unit("recall_beyond/count") == "count"
    assert series_unit("recall_beyond/colour") == series_unit("recall_beyond") == "fraction"
    assert value_range("recall_beyond/count") == (0.0, float("inf"))
    assert value_range("recall_beyond/colour") == (0.0, 1.0)
    assert METRICS.get("recall_beyond").unit_of("unreadable") == "count"
