"""The compare-strategies report's data and tables on hand-made experiments (no store): marks
and curve reduction, labels, provenance, fraction bands and binary-curve binning, reference
columns, the shared-machine latency note."""

from __future__ import annotations

import numpy as np
import pandas as pd
from test_report import MACHINE, band_extents

from reports.data import Experiment, block_frames_of, train_frames_of, variant_label
from reports.sections import provenance
from reports.tables import Mark, at_marks, marks_of, reduce


def _toy(runs: list[dict], curves: dict) -> Experiment:
    df = pd.DataFrame(runs)
    return Experiment("toy", "sqlite:///unused", df, df.iloc[:0], curves)


def test_marks_prefer_runs_of_the_marks_length_and_reduce_curves():
    run = {"variant": "full", "strategy": "full", "seed": 0, "prompt": "p", "train_frames": 2}
    runs = [{**run, "run_id": "short", "run_name": "a", "latent_frames": 12},
            {**run, "run_id": "long", "run_name": "b", "latent_frames": 48}]
    steps = np.arange(0, 48, 2)
    curves = {"drift": {"short": (steps[:6], np.full(6, 5.0)), "long": (steps, steps * 1.0)},
              "kv_bytes": {"long": (steps, steps * 10.0)}}
    exp = _toy(runs, curves)
    marks = marks_of(exp.runs)
    assert [m.label for m in marks] == ["1x", "6x", "12x", "24x"]
    got = at_marks(exp, marks).set_index("mark")
    assert got.loc["6x", "run_id"] == "short" and got.loc["6x", "drift"] == 5.0
    assert got.loc["24x", "run_id"] == "long" and got.loc["24x", "drift"] == 46.0
    assert got.loc["12x", "kv_bytes"] == 220.0 and np.isnan(got.loc["6x", "kv_bytes"])
    assert reduce((steps, steps * 1.0), 12, "mean") == 5.0
    assert np.isnan(reduce(None, 12, "at"))
    assert marks_of(exp.runs.assign(train_frames=pd.NA)) == [Mark("end", None, None)]


def test_labels_and_training_length():
    assert variant_label("full video.latent_frames=120", "full") == "full"
    assert variant_label(None, "sink") == "sink"
    assert variant_label("packforcing strategy.top_k=4", "x") == "packforcing strategy.top_k=4"
    assert train_frames_of({"params.model.train_frames": "8"}) == 8
    # the built-in world sets no model.train_frames: the run's spec tag holds it
    world = {"params.model._target_": "toolkit.world.model.load_world",
             "tags.spec.train_frames": "20", "tags.spec.block_frames": "4"}
    assert train_frames_of(world) == 20 and block_frames_of(world) == 4
    assert train_frames_of({"params.model._target_": "toolkit.world.model.load_world"}) is None
    assert train_frames_of({"params.model._target_": "toolkit.specmodel.wan_spec_model"}) is None


def test_provenance_shows_the_recorded_cards_and_what_differs():
    run = {"variant": "sink", "seed": 0, "latent_frames": 40, "prompt": "p", "status": "FINISHED",
           "params.model._target_": "toolkit.world.model.load_world", "params.model.path": "None",
           "tags.git_revision": "abc", "tags.git_dirty": "true"}
    exp = _toy([{**run, "run_id": "a", "run_key": "k" * 64, "params.strategy.sink_frames": "4"},
                {**run, "run_id": "b", "run_key": "j" * 64, "params.strategy.sink_frames": "8"}],
               {})
    card = {"config": {"train_frames": 20}, "losses": list(range(40)), "sha256": "ab" * 32}
    prov = provenance(exp, MACHINE, [("model card of `load_world` (2 runs)", card)])
    assert len(prov.cards) == 1 and card["sha256"] in prov.cards[0][1]
    assert prov.cards[0][0] == "model card of `load_world` (2 runs)"
    assert "... 34 more" in prov.cards[0][1]  # long lists are cut
    assert ("model._target_", "toolkit.world.model.load_world") in prov.common
    assert [r[-1] for r in prov.runs.rows] == ["strategy.sink_frames=4", "strategy.sink_frames=8"]
    assert [r[4] for r in prov.runs.rows] == ["k" * 12, "j" * 12]
    assert prov.revisions.rows == [["abc", "true", "2"]] and prov.machine == MACHINE
    assert provenance(exp, MACHINE).cards == []


def _binary_fidelity(seeds: int) -> Experiment:
    """A fraction whose per-frame values are 0/1 and disagree across seeds: a t interval on it
    leaves [0, 1] (seed 0 never matches its prompt, the others always do)."""
    frames = np.arange(40)
    runs, curves = [], {"fidelity": {}, "kv_bytes": {}}
    for s in range(seeds):
        rid = f"r{s}"
        runs.append({"variant": "v", "strategy": "v", "seed": s, "prompt": "p", "run_id": rid,
                     "run_name": rid, "latent_frames": 40, "train_frames": 8, "block_frames": 4})
        curves["fidelity"][rid] = (frames, np.full(40, 0.0 if s == 0 else 1.0))
        curves["kv_bytes"][rid] = (frames[::4], 100.0 * (frames[::4] + 4))
    return _toy(runs, curves)


def test_fraction_bands_stay_in_their_range_and_need_three_runs():
    from reports.compare import curve_figures
    from reports.figures import curve_axes

    exp = _binary_fidelity(3)
    figs = {m: f for m, _, f in curve_figures(exp, ["v"], marks_of(exp.runs), 8)}
    bands = band_extents(figs["fidelity"])
    assert bands and all(lo >= 0.0 and hi <= 1.0 for lo, hi in bands)  # a fraction: [0, 1]
    # the check has teeth: the same curves without the measure's range leave [0, 1]
    loose = band_extents(curve_axes("t", "y", {"v": list(exp.curves["fidelity"].values())}))
    assert min(lo for lo, _ in loose) < 0 or max(hi for _, hi in loose) > 1
    two = _binary_fidelity(2)  # two runs: no interval at all
    figs = {m: f for m, _, f in curve_figures(two, ["v"], marks_of(two.runs), 8)}
    assert band_extents(figs["fidelity"]) == []


def test_per_frame_binary_curves_are_binned_by_whole_blocks_with_raw_points():
    from reports.compare import curve_figures

    exp = _binary_fidelity(3)
    fig = {m: f for m, _, f in curve_figures(exp, ["v"], marks_of(exp.runs), 8)}["fidelity"]
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_label() == "v"]
    assert np.allclose(line.get_ydata(), 2 / 3)  # the mean over seeds, constant here
    raw = [c for c in ax.collections if "Poly" not in type(c).__name__]
    assert len(raw) == 1 and raw[0].get_alpha() < 0.5  # the raw per-frame means, faint
    stepped = _binary_fidelity(3)
    for rid, (s, _) in stepped.curves["fidelity"].items():  # a 0 -> 1 step at frame 20
        stepped.curves["fidelity"][rid] = (s, (s >= 20).astype(float))
    fig = {m: f for m, _, f in curve_figures(stepped, ["v"], marks_of(stepped.runs), 8)}
    line = next(ln for ln in fig["fidelity"].axes[0].lines if ln.get_label() == "v")
    x, y = line.get_xdata(), line.get_ydata()
    assert np.allclose(np.diff(x), 4) and x[0] == 1.5  # one point per block, at its centre
    assert list(y) == [float(c >= 20) for c in x]  # bins of whole blocks: a clean step


def test_long_binary_curves_get_about_24_bins():
    from reports.figures import bin_width

    assert bin_width([(np.arange(480), np.zeros(480))], 4) == 20
    assert bin_width([(np.arange(40), np.zeros(40))], 4) == 4


def test_reference_columns_are_never_ranked_and_wide_tables_split():
    from reports.tables import Table, _best, split

    assert _best([0.1, 0.3], "recall_chance/colour") == set()
    assert _best([3.0, 5.0], "recall_beyond/count") == set()
    wide = Table("t", ["variant", "frames", *map(str, range(9))],
                 [["a", "1", *map(str, range(9))]], {(0, 10)})
    parts = split(wide, 2, 6)
    assert [len(t.header) for t in parts] == [8, 5]
    assert parts[1].header[:2] == ["variant", "frames"] and parts[1].best == {(0, 4)}


def test_latency_of_runs_that_shared_the_machine_is_flagged():
    from reports.compare import shared_note
    from reports.tables import Table

    runs = pd.DataFrame({"variant": ["a", "b"], "tags.parallel": ["2", None]})
    latency = Table("latency ↓ (ms)", ["variant"], [])
    exp = Experiment("x", "sqlite:///x", runs, runs.iloc[:0])
    (note,) = shared_note(exp, [latency])
    assert "1 of 2 runs" in note and "up to 2 jobs" in note and "shared machine" in latency.title
    assert shared_note(Experiment("x", "u", runs.drop(columns="tags.parallel"),
                                  runs.iloc[:0]), []) == []
