"""How a run was measured is part of its record: a finished run measured otherwise is measured
again from its saved rollout (latents and trace), never rolled out again."""

import json
from pathlib import Path

from toolkit.runs.aggregate import load_runs
from toolkit.runs.config import compose_config
from toolkit.runs.identity import measure_key, run_key
from toolkit.runs.jobs import run_job
from toolkit.runs.tracking import resolve_uri

BASE = ["model=world", "strategy=sink", "video.latent_frames=8", "progress=false",
        "experiment_name=m"]


def measured(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def test_measure_key_is_how_a_run_is_measured():
    cfg = compose_config(["tracking.metrics=fast"])
    key = measure_key(cfg)
    assert measure_key(compose_config(["tracking.metrics=fast", "run_root=elsewhere",
                                       "tracking.experiment=x"])) == key
    for other in ("tracking.metrics=[drift]", "tracking.feature=dino",
                  "tracking.segment_frames=8", "+tracking.options.references=2"):
        assert measure_key(compose_config(["tracking.metrics=fast", other])) != key, other
    assert run_key(compose_config(["tracking.metrics=system"])) == run_key(cfg)  # one run


def test_a_new_metric_set_remeasures_finished_runs_without_rolling_out(tmp_path, monkeypatch):
    first = compose_config([*BASE, f"run_root={tmp_path / 'a'}", "tracking.metrics=fast"])
    done = run_job(first)
    assert done.status == "finished" and "fidelity" not in measured(done.run_dir)
    before = measured(done.run_dir)
    assert run_job(first).status == "skipped"  # measured as asked: nothing to do

    import toolkit.core.rollout

    def no_rollout(*args, **kwargs):
        raise AssertionError("a finished run was rolled out again")

    monkeypatch.setattr(toolkit.core.rollout, "rollout", no_rollout)
    wider = ["tracking.metrics=[drift,fidelity,kv_bytes,discontinuity]"]
    second = compose_config([*BASE, f"run_root={tmp_path / 'a'}", *wider])
    again = run_job(second)
    assert again.status == "remeasured", again.error
    assert again.run_dir == done.run_dir and again.run_id != done.run_id
    now = measured(done.run_dir)
    assert "fidelity" in now and now["drift"] == before["drift"]  # the same saved rollout
    assert now["kv_bytes"] == before["kv_bytes"]  # from the trace read back
    runs = load_runs(resolve_uri(None, tmp_path / "a"), "m", finished_only=False)
    assert list(runs["run_id"]) == [again.run_id]  # the old record is gone, not doubled
    assert json.loads((done.run_dir / "meta.json").read_text())["measure_key"] == \
        measure_key(second)
    assert run_job(second).status == "skipped"

    monkeypatch.undo()  # the same config rolled out afresh measures the same values
    fresh = run_job(compose_config([*BASE, f"run_root={tmp_path / 'b'}", *wider]))
    assert fresh.status == "finished"
    assert measured(fresh.run_dir)["fidelity"] == now["fidelity"]
    assert measured(fresh.run_dir)["discontinuity"] == now["discontinuity"]


def test_a_grid_rerun_with_new_measures_remeasures_every_finished_job(tmp_path, capsys,
                                                                       monkeypatch):
    from toolkit.cli import main

    grid = ["grid", "experiment=sink_size", "model=tiny-random", "video.latent_frames=4",
            "seed=0", f"run_root={tmp_path}", "strategy.sink_frames=0,4"]
    assert main([*grid, "tracking.metrics=system"]) == 0
    assert capsys.readouterr().out.count("'status': 'finished'") == 2

    import toolkit.core.rollout

    monkeypatch.setattr(toolkit.core.rollout, "rollout", None)  # any rollout would fail
    assert main([*grid, "tracking.metrics=[kv_bytes,cache_events]"]) == 0
    assert capsys.readouterr().out.count("'status': 'remeasured'") == 2
    runs = load_runs(resolve_uri(None, tmp_path), "sink_size")
    assert len(runs) == 2
    for folder in runs["tags.run_dir"]:
        assert "cache_events" in measured(Path(folder))  # the new measure, from the old rollout
