"""Grids: every experiment composes; runs resume, skip finished jobs, survive failures."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from toolkit.cli import main
from toolkit.runs.aggregate import load_runs
from toolkit.runs.config import build_strategy, compose_config
from toolkit.runs.grid import experiments
from toolkit.runs.tracking import resolve_uri

TINY = ["model=tiny-random", "video.latent_frames=4", "seed=0"]


def grid(tmp_path, *extra):
    return ["grid", "experiment=sink_size", *TINY, f"run_root={tmp_path}", *extra]


def runs(tmp_path, experiment="sink_size"):
    return load_runs(resolve_uri(None, tmp_path), experiment, finished_only=False)


@pytest.mark.parametrize("name", sorted(experiments()))
def test_every_experiment_composes_and_builds_its_strategies(name):
    path = Path(__file__).parents[1] / "ablations" / "experiment" / f"{name}.yaml"
    assert experiments()[name], f"{path} must start with the question it answers"
    cfg = compose_config([f"experiment={name}"])
    params = OmegaConf.to_container(OmegaConf.load(path))["hydra"]["sweeper"]["params"]
    choices = str(params.get("strategy", "")).split(",") if "strategy" in params else [None]
    for choice in choices:
        node = compose_config([f"experiment={name}", f"strategy={choice}"]).strategy \
            if choice else cfg.strategy
        for key, values in params.items():
            if key.startswith("strategy."):
                for value in str(values).split(","):
                    variant = compose_config([f"experiment={name}", f"{key}={value}"])
                    build_strategy(variant.strategy)
        build_strategy(node)


def test_unknown_experiment_lists_the_available(capsys, tmp_path):
    assert main(["grid", "experiment=sink_sizes", f"run_root={tmp_path}"]) == 2
    out = capsys.readouterr().out
    assert "sink_sizes" in out and "sink_size" in out and "strategies_24x" in out


def test_second_run_skips_finished_jobs(tmp_path, capsys):
    assert main(grid(tmp_path, "strategy.sink_frames=0,4")) == 0
    first = capsys.readouterr().out
    assert first.count("'status': 'finished'") == 2
    assert main(grid(tmp_path, "strategy.sink_frames=0,4")) == 0
    second = capsys.readouterr().out
    assert second.count("'status': 'skipped'") == 2 and "'finished'" not in second
    df = runs(tmp_path)
    assert sorted(df["tags.variant"]) == ["packforcing strategy.sink_frames=0",
                                          "packforcing strategy.sink_frames=4"]


def test_failing_job_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    # sink_frames=3 is off the block grid (2): that job fails, the other finishes
    assert main(grid(tmp_path, "strategy.sink_frames=3,4")) == 0
    out = capsys.readouterr().out
    assert "'status': 'failed'" in out and "'status': 'finished'" in out
    status = runs(tmp_path).set_index("tags.variant")["status"]
    assert status["packforcing strategy.sink_frames=3"] == "FAILED"
    assert status["packforcing strategy.sink_frames=4"] == "FINISHED"


def test_killed_grid_resumes_only_the_missing_jobs(tmp_path):
    cmd = [sys.executable, "-m", "toolkit.cli", *grid(tmp_path, "strategy.sink_frames=0,4,8,16",
                                                      "video.latent_frames=16")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)  # jobs of 16 tiny frames take well under a second each
        if len(list((tmp_path / "rollouts").glob("*/mlflow_run.json"))) >= 1:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = runs(tmp_path)
    finished = set(before.loc[before["status"] == "FINISHED", "tags.variant"])
    assert 1 <= len(finished) < 4, "the grid should have been killed part-way"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert out.count("'status': 'skipped'") == len(finished)
    assert out.count("'status': 'finished'") == 4 - len(finished)
    after = runs(tmp_path)
    assert set(after.loc[after["status"] == "FINISHED", "tags.variant"]) == {
        f"packforcing strategy.sink_frames={s}" for s in (0, 4, 8, 16)}


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_and_cluster_launchers(tmp_path, launcher, capsys):
    extra = ["strategy.sink_frames=0,4", f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    else:
        extra += ["hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1"]
    assert main(grid(tmp_path, *extra)) == 0
    df = runs(tmp_path)
    assert (df["status"] == "FINISHED").sum() == 2
    if launcher == "joblib":  # timed while sharing the machine: the report flags latency
        assert set(df["tags.parallel"]) == {"2"}
    else:
        assert "tags.parallel" not in df


@pytest.mark.parametrize("group", ["strategy", "compressor", "model"])
def test_every_preset_composes(group):
    root = Path(__file__).parents[1] / "ablations" / group
    for path in sorted(root.glob("*.yaml")):
        extra = ["strategy=packforcing"] if group == "compressor" else []
        cfg = compose_config([*extra, f"{'+' if group == 'compressor' else ''}{group}={path.stem}"])
        if group in ("strategy", "compressor"):
            build_strategy(cfg.strategy)
        else:
            assert cfg.model._target_


MY_GRID = """# @package _global_
# Question: do the sink's positions matter (a key swept with ++)?
defaults:
  - override /strategy: sink
experiment_name: my_positions
progress: false
hydra:
  sweeper:
    params:
      ++strategy.positions: absolute,reindex
"""


def test_swept_keys_are_variants_from_the_command_line_and_with_plus_plus(tmp_path):
    root = tmp_path / "runs"
    assert main(["grid", "experiment=strategies_24x", "strategy=sink", "seed=0", *TINY[:2],
                 "strategy.positions=reindex,interpolate", f"run_root={root}"]) == 0
    df = runs(root, "strategies_24x")
    assert sorted(df["tags.variant"]) == ["sink strategy.positions=interpolate",
                                          "sink strategy.positions=reindex"]
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "my_positions.yaml").write_text(MY_GRID)
    assert main(["grid", "experiment=my_positions", f"experiments_dir={tmp_path / 'mine'}",
                 *TINY, f"run_root={root}"]) == 0
    assert sorted(runs(root, "my_positions")["tags.variant"]) == [
        "sink strategy.positions=absolute", "sink strategy.positions=reindex"]


def test_the_summary_refuses_to_pool_different_configs_and_counts_a_key_once(tmp_path,
                                                                              capsys):
    from toolkit.runs.tracking import relog

    root = tmp_path / "runs"
    for extra in ([], ["strategy.positions=absolute"]):  # same label, another config
        assert main(grid(root, "strategy.sink_frames=4", *extra, "seed=0,1")) == 0
    done = sorted((root / "rollouts").glob("*/mlflow_run.json"))
    relog(done[0].parent, force=True)  # a second FINISHED run of one key (a concurrent twin)
    assert len(runs(root).query("status == 'FINISHED'")) == 4
    capsys.readouterr()
    assert main(grid(root, "strategy.sink_frames=4", "seed=0,1")) == 0
    out = capsys.readouterr().out
    assert "1 duplicate run(s)" in out
    assert "differ in strategy.positions" in out
    from toolkit.runs.aggregate import split_variants

    split, _ = split_variants(runs(root), "tags.variant")
    assert sorted(set(split["tags.variant"])) == [
        "packforcing strategy.sink_frames=4 (strategy.positions=absolute)",
        "packforcing strategy.sink_frames=4 (strategy.positions=shift)"]
