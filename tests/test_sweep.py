"""Optuna sweeps driven by rollbench: workers, storages, failures, pruning, errors."""

import os
import textwrap

import optuna
import pytest

from toolkit.cli import main
from toolkit.runs.aggregate import load_runs
from toolkit.runs.sweep import load_sweep, open_storage
from toolkit.runs.tracking import resolve_uri

BASE = "[model=tiny-random, strategy=packforcing, video.latent_frames=8, seed=0]"


def sweep_file(tmp_path, params: str, objectives="[peak_kv_bytes, seconds_per_block]",
               name="tiny") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        # Question: a tiny sweep for the tests
        base: {BASE}
        objectives: {objectives}
        n_trials: 4
        seed: 0
        params:
        """) + textwrap.indent(textwrap.dedent(params), "  "))
    return str(path)


VALID = """\
    strategy.sink_frames: {type: int, low: 0, high: 6, step: 2}
    strategy.capacity: {type: int, low: 2, high: 8, step: 2}
    strategy.top_k: {type: int, low: 1, high: 2}
"""


def trials(url, name="tiny"):
    return optuna.load_study(study_name=name, storage=open_storage(url)).trials


def two_worker_sweep(tmp_path, storage):
    path = sweep_file(tmp_path, VALID)
    args = ["sweep", f"sweep={path}", "workers=2", f"run_root={tmp_path}"]
    if storage:
        args.append(f"storage={storage}")
    assert main(args) == 0
    return storage or f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"


def test_two_workers_on_a_journal_find_a_pareto_front(tmp_path):
    url = two_worker_sweep(tmp_path, None)
    done = [t for t in trials(url) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    assert 1 <= len(study.best_trials) <= 4
    runs = load_runs(resolve_uri(None, tmp_path), "sweep-tiny", finished_only=False)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    parent = runs[runs["tags.study"] == "tiny"]
    assert len(children) == 4 and len(parent) == 1
    assert set(children["tags.mlflow.parentRunId"]) == set(parent["run_id"])


def test_study_resumes_where_it_stopped(tmp_path):
    url = two_worker_sweep(tmp_path, None)
    path = sweep_file(tmp_path, VALID)
    assert main(["sweep", f"sweep={path}", "n_trials=6", f"run_root={tmp_path}"]) == 0
    assert len(trials(url)) == 6


def test_failing_trials_do_not_stop_the_study(tmp_path):
    # the lr compressor needs a VAE, which the tiny model lacks: every trial fails at bind
    path = sweep_file(tmp_path, "strategy.compressor: {type: categorical, choices: [lr]}\n")
    assert main(["sweep", f"sweep={path}", f"run_root={tmp_path}"]) == 0
    url = f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"
    states = [t.state for t in trials(url)]
    assert states == [optuna.trial.TrialState.FAIL] * 4


def test_impossible_partitions_are_pruned_not_crashes(tmp_path):
    params = """\
        strategy.capacity: {type: int, low: 1, high: 2}
        strategy.top_k: {type: int, low: 3, high: 4}
    """
    path = sweep_file(tmp_path, params)
    assert main(["sweep", f"sweep={path}", f"run_root={tmp_path}"]) == 0
    url = f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"
    got = trials(url)
    assert [t.state for t in got] == [optuna.trial.TrialState.PRUNED] * 4
    assert all("top_k" in t.user_attrs["invalid"] for t in got)


def test_clear_errors(tmp_path, capsys):
    assert main(["sweep", "sweep=packforcing_budgett"]) == 2
    assert "packforcing_budget" in capsys.readouterr().out
    path = sweep_file(tmp_path, VALID, objectives="[peak_kv_byte]")
    assert main(["sweep", f"sweep={path}"]) == 2
    assert "peak_kv_bytes" in capsys.readouterr().out  # did you mean
    assert main(["sweep", f"sweep={sweep_file(tmp_path, VALID)}", f"run_root={tmp_path}",
                 "storage=postgresql+psycopg2://nobody:x@127.0.0.1:9/none"]) == 2
    assert "cannot open the sweep storage" in capsys.readouterr().out


def test_shipped_sweeps_load():
    for name in ("packforcing_budget", "window_size", "kv_codecs"):
        spec = load_sweep(name)
        assert spec.question and spec.directions


PG = os.environ.get("ROLLBENCH_TEST_PG",
                    "postgresql+psycopg2://rollbench:rollbench@127.0.0.1:5432/rollbench")


def _pg_up() -> str | None:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(PG, connect_args={"connect_timeout": 2}).connect():
            return None
    except Exception as err:  # no server: say why the test is skipped
        return f"no PostgreSQL at {PG} ({type(err).__name__}); .ci/run starts one"


@pytest.mark.skipif(_pg_up() is not None, reason=str(_pg_up()))
def test_two_workers_on_postgresql(tmp_path):
    import uuid

    name = f"tiny_{uuid.uuid4().hex[:8]}"
    path = sweep_file(tmp_path, VALID, name=name)
    assert main(["sweep", f"sweep={path}", "workers=2", f"run_root={tmp_path}",
                 f"storage={PG}"]) == 0
    done = trials(PG, name)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in done) == 4
    optuna.delete_study(study_name=name, storage=open_storage(PG))


def test_top_k_as_a_share_of_capacity_is_never_impossible(tmp_path):
    params = """\
        strategy.capacity: {type: categorical, choices: [2, 4]}
        strategy.top_k: {type: float, low: 0.1, high: 1.0, of: strategy.capacity}
    """
    path = sweep_file(tmp_path, params)
    assert main(["sweep", f"sweep={path}", f"run_root={tmp_path}"]) == 0
    url = f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"
    assert [t.state for t in trials(url)] == [optuna.trial.TrialState.COMPLETE] * 4
    runs = load_runs(resolve_uri(None, tmp_path), "sweep-tiny")
    runs = runs[runs["params.strategy.top_k"].notna()]
    top = runs["params.strategy.top_k"].astype(int)
    cap = runs["params.strategy.capacity"].astype(int)
    assert ((top >= 1) & (top <= cap)).all()
    bad = sweep_file(tmp_path, "strategy.top_k: {type: float, low: 0.1, high: 1.0, of: x}\n",
                     name="bad")
    with pytest.raises(Exception, match="of='x'"):
        load_sweep(bad)


def test_seeds_per_trial_and_identical_trials_answered_from_the_stored_runs(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""\
        # Question: seeds per trial
        base: {BASE}
        objectives: [peak_kv_bytes]
        n_trials: 3
        seeds: [0, 1]
        params:
          strategy.sink_frames: {{type: categorical, choices: [2]}}
        """))
    assert main(["sweep", f"sweep={path}", f"run_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "peak_kv_bytes (MiB)" in out and "rollbench report experiment=sweep-tiny" in out
    url = f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"
    got = trials(url)
    assert [t.state for t in got] == [optuna.trial.TrialState.COMPLETE] * 3
    assert "stored" not in got[0].user_attrs and got[1].user_attrs["stored"]
    assert got[1].values == got[2].values == got[0].values
    runs = load_runs(resolve_uri(None, tmp_path), "sweep-tiny", dedupe=False)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(children["seed"]) == [0, 1]  # two rollouts in all: one per seed
    assert got[0].values[0] == pytest.approx(children["peak_kv_bytes"].mean())


def test_a_grid_sweep_runs_each_combination_once(tmp_path, capsys):
    """``sampler: grid`` (the kv_codecs sweep): every strategy x codec once, and a codec's
    stored bytes as an objective."""
    path = sweep_file(tmp_path, """\
        kv.codec: {type: categorical, choices: [none, int2]}
        strategy.capacity: {type: categorical, choices: [2]}
        strategy.top_k: {type: categorical, choices: [1]}
    """, objectives="[peak_kv_bytes]")
    _grid(path)
    assert main(["sweep", f"sweep={path}", f"run_root={tmp_path}"]) == 0
    url = f"journal:{tmp_path.resolve() / 'optuna' / 'tiny.journal'}"
    done = [t for t in trials(url) if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["kv.codec"] for t in done) == ["int2", "none"]
    by = {t.params["kv.codec"]: t.values[0] for t in done}
    assert by["int2"] < by["none"] / 5
    bad = _grid(sweep_file(tmp_path, VALID, name="loose"))
    assert main(["sweep", f"sweep={bad}"]) == 2
    assert "sampler=grid needs categorical params" in capsys.readouterr().out


def _grid(path: str) -> str:
    """The sweep file at ``path`` with ``sampler: grid``."""
    from pathlib import Path

    file = Path(path)
    file.write_text(file.read_text().replace("n_trials: 4", "n_trials: 9\nsampler: grid"))
    return path
