"""The command line: runs, listings, and clear errors for bad input."""

import sys
import textwrap

import pytest

from toolkit.cli import main
from toolkit.errors import ConfigError
from toolkit.registry import STRATEGIES, UnknownName
from toolkit.runs.config import build, build_strategy, compose_config


def test_run_writes_outputs(tmp_path, capsys):
    code = main(["run", "strategy=sink", "strategy.sink_frames=4", "video.latent_frames=12",
                 f"run_root={tmp_path}", "progress=false"])
    assert code == 0
    (run_dir,) = (tmp_path / "rollouts").iterdir()
    assert {"config.yaml", "trace.json", "latents.pt"} <= {p.name for p in run_dir.iterdir()}
    out = capsys.readouterr().out
    assert "rollout: sink" in out
    from toolkit.runs.jobs import scalars_of

    scalars = scalars_of(run_dir)
    assert {"fidelity_start", "fidelity_end", "fidelity_mean", "vde"} <= set(scalars)
    assert f"quality: prompt fidelity start {scalars['fidelity_start']:.2f}, end " \
           f"{scalars['fidelity_end']:.2f}, mean {scalars['fidelity_mean']:.2f}" in out
    assert 0 <= scalars["vde"] <= 1


def test_ls_lists_strategies(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ("full", "window", "sink", "strategies.sink.Sink"):
        assert name in out


def one_line_error(capsys) -> str:
    """The command's output: exactly one line, an ``error:`` naming the problem, no traceback."""
    captured = capsys.readouterr()
    out = captured.out + captured.err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out
    return lines[0]


@pytest.mark.parametrize("overrides, needles", [
    (["strategy=snk"], ["strategy=snk", "Did you mean sink?"]),
    (["strategy=sink", "strategy.sink_frame=4"],
     ["'strategy.sink_frame'", "Did you mean strategy.sink_frames?"]),
    (["strategy=window", "strategy.window_frame=4"],
     ["'strategy.window_frame'", "Did you mean strategy.window_frames?",
      "Keys of strategy: _target_, label, positions, window_frames"]),
    (["vidoe.latent_frames=8"], ["'vidoe.latent_frames'", "Did you mean video.latent_frames?"]),
    (["strategy=sink", "strategy.sink_frames=3"], ["sink_frames=3"]),
    (["strategy=window", "strategy.window_frames=1"], ["window_frames=1"]),
    (["video.latent_frames=7"], ["video.latent_frames=7", "multiple of the block size"]),
    (["video.latent_frames=abc"], ["video.latent_frames='abc'", "whole number"]),
    (["video.latent_frames=2.5"], ["video.latent_frames=2.5", "whole number"]),
    (["video.seconds=soon"], ["video.seconds='soon'", "positive number of seconds"]),
    (["seed=first"], ["seed='first'", "whole number"]),
    (["threads=0"], ["threads=0", ">= 1"]),
    (["device=gpu"], ["device='gpu'", "allowed cpu, cuda or cuda:N"]),
    (["strategy=window", "strategy.positions=rope"], ["positions='rope'"]),
    (["strategy=sink", "strategy.sink_frames=four"], ["four"]),
])
def test_bad_input_fails_with_one_clear_line(overrides, needles, capsys, tmp_path):
    assert main(["run", *overrides, f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    for needle in needles:
        assert needle in line
    assert not (tmp_path / "rollouts").exists()


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "device=cuda", f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "device=cuda" in line and "no CUDA GPU" in line and "device=cpu" in line
    assert main(["bench", "device=cuda", "model=tiny-random", f"run_root={tmp_path}"]) == 2
    assert "no CUDA GPU" in one_line_error(capsys)


def test_missing_postgres_driver_names_the_extra_and_hides_the_password(capsys, tmp_path,
                                                                      monkeypatch):
    drivers = ("psycopg2", "psycopg")  # as if no PostgreSQL driver were installed
    for name in drivers:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr("toolkit.runs.stores.find_spec",
                        lambda name: None if name in drivers else object())
    url = "postgresql://bench:s3cret@db.example:5432/optuna"
    assert main(["run", f"tracking.uri={url}", f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "pip install 'rollbench[cluster]'" in line and "psycopg2" in line
    assert "s3cret" not in line and "postgresql://bench:***@db.example:5432/optuna" in line
    assert main(["sweep", "sweep=window_size", f"storage={url}", f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "rollbench[cluster]" in line and "s3cret" not in line and "bench:***@" in line
    assert not (tmp_path / "rollouts").exists()


def test_an_unreachable_sweep_storage_is_one_masked_line(capsys, tmp_path):
    port = closed_port()
    url = f"postgresql://bench:s3cret@127.0.0.1:{port}/optuna"
    assert main(["sweep", "sweep=window_size", f"storage={url}", f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "cannot open the sweep storage" in line and "s3cret" not in line
    assert f"postgresql://bench:***@127.0.0.1:{port}/optuna" in line


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text, masked", [
    ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
    ("storage postgresql+psycopg2://u:p%40ss@h:5432/x failed", "postgresql+psycopg2://u:***@h:5432/x"),
    ("http://admin:hunter2@mlflow:5000 and mysql://a:b@c/d", "http://admin:***@mlflow:5000 and mysql://a:***@c/d"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://host:5000/path", "http://host:5000/path"),
])
def test_mask_hides_passwords_only(text, masked):
    from toolkit.runs.stores import mask

    assert masked in mask(text) and ("***" in masked) == ("***" in mask(text))


def test_unknown_name_suggests():
    with pytest.raises(UnknownName, match="Did you mean 'sink'"):
        STRATEGIES.get("sinc")


def test_unknown_field_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: \\['positions', 'sink_frames'"):
        build_strategy({"_target_": "sink", "sinks": 4})


def test_user_strategy_by_target(tmp_path, monkeypatch):
    (tmp_path / "my_cache.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from toolkit.core.cache import KeepBlocksStrategy

        @dataclass
        class EveryOther(KeepBlocksStrategy):
            """Keeps every other finished block."""
            stride: int = 2

            def assign(self, index, upcoming):
                return "cache" if index % self.stride == 0 else None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config(["strategy._target_=my_cache.EveryOther", "strategy.stride=3",
                          "video.latent_frames=12"])
    _, strategy = build(cfg)
    assert type(strategy).__name__ == "EveryOther" and strategy.stride == 3
    assert main(["run", "strategy._target_=my_cache.EveryOther", "video.latent_frames=12",
                 f"run_root={tmp_path}", "progress=false"]) == 0
    sys.modules.pop("my_cache", None)


HEAVY = ("torch", "mlflow", "optuna", "diffusers", "scipy", "pandas", "matplotlib")


def _modules_after(code: str) -> set[str]:
    import os
    import subprocess

    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    return set(out.split("\n")[-2].split()) if out.strip() else set()


def test_help_and_ls_import_only_what_they_need():
    """``rollbench --help`` imports no heavy module; ``ls`` only torch (the strategies' classes)
    and what the metric registry needs, never MLflow, Optuna or diffusers."""
    assert _modules_after("import toolkit.cli") == set()
    helped = _modules_after("from toolkit.cli import main\ntry:\n    main(['--help'])\n"
                            "except SystemExit:\n    pass")
    assert helped == set()
    listed = _modules_after("import io, contextlib\nfrom toolkit.cli import main\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n"
                            "    main(['ls'])")
    assert "torch" in listed and not listed & {"mlflow", "optuna", "diffusers", "matplotlib"}


def test_tables_never_cut_a_header(capsys, monkeypatch):
    """At 80 columns a header wraps at spaces, optional columns give way (the caption says
    which), and ``--wide`` shows every column whole."""
    from toolkit.runs.jobs import Summary, print_summaries
    from toolkit.terminal import console, set_wide

    monkeypatch.setattr(console, "width", 80)
    rows = [("rolling_anchor", Summary(120, 480, 12.3, 0.0101, 0.0112, 3 * 2**20,
                                       {"sink": 2**20, "mid": 2**19, "recent": 2**21}))]
    print_summaries("rollout", rows)
    out = capsys.readouterr().out
    assert "…" not in out and max(len(ln) for ln in out.splitlines()) <= 80
    for word in ("rolling_anchor", "ms/block", "first", "last/first", "peak", "MiB"):
        assert word in out
    caption = next(ln for ln in out.splitlines() if "not shown:" in ln)
    assert "partitions at end (MiB)" in caption and "--wide" in caption
    set_wide(True)
    try:
        print_summaries("rollout", rows)
    finally:
        set_wide(False)
    out = capsys.readouterr().out
    assert "…" not in out and "partitions at end (MiB)" in out and "ms/block first 10%" in out
    assert "sink=1.00, mid=0.50, recent=2.00" in out and "not shown" not in out


def test_wide_is_a_cli_option(capsys, tmp_path):
    assert main(["--wide", "run", "model=tiny-random", "video.latent_frames=4", "progress=false",
                 f"run_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "partitions at end (MiB)" in out and "not shown" not in out
    assert main(["run", "model=tiny-random", "video.latent_frames=4", "progress=false",
                 "seed=1", f"run_root={tmp_path}"]) == 0
    assert "…" not in capsys.readouterr().out


USER_EXPERIMENT = """\
# @package _global_
# Question: does my own sink size beat the window? (a user's experiment, outside rollbench)
experiment_name: my_sinks
seed: 3
hydra:
  sweeper:
    params:
      strategy: window,sink
"""

USER_SWEEP = """\
# Question: my own tiny sweep
base: [model=tiny-random, strategy=sink, video.latent_frames=8]
objectives: [peak_kv_bytes]
n_trials: 2
params:
  strategy.sink_frames: {type: int, low: 2, high: 4, step: 2}
"""


@pytest.fixture
def user_dir(tmp_path):
    """A user's own config folder: experiment/my_sinks.yaml and sweep/my_sweep.yaml."""
    root = tmp_path / "my-configs"
    (root / "experiment").mkdir(parents=True)
    (root / "sweep").mkdir()
    (root / "experiment" / "my_sinks.yaml").write_text(USER_EXPERIMENT)
    (root / "sweep" / "my_sweep.yaml").write_text(USER_SWEEP)
    return root


@pytest.mark.parametrize("how", ["experiments_dir", "searchpath"])
def test_a_users_own_experiment_runs_as_a_grid(user_dir, tmp_path, how):
    from toolkit.runs.aggregate import load_runs
    from toolkit.runs.grid import experiments
    from toolkit.runs.tracking import resolve_uri

    where = f"experiments_dir={user_dir}" if how == "experiments_dir" else \
        f"hydra.searchpath=[file://{user_dir}]"
    assert "my_sinks" in experiments([where]) and "my_sinks" not in experiments()
    cfg = compose_config(["experiment=my_sinks", where])
    assert cfg.seed == 3 and cfg.experiment_name == "my_sinks"
    root = tmp_path / "runs"
    assert main(["grid", "experiment=my_sinks", where, "model=tiny-random",
                 "video.latent_frames=4", f"run_root={root}"]) == 0
    runs = load_runs(resolve_uri(None, root), "my_sinks")
    assert sorted(runs["strategy"]) == ["sink", "window"] and set(runs["seed"]) == {3}


def test_a_users_own_sweep_runs(user_dir, tmp_path):
    from toolkit.runs.sweep import load_sweep

    assert load_sweep("my_sweep", [f"experiments_dir={user_dir}"]).objectives == ["peak_kv_bytes"]
    assert main(["sweep", "sweep=my_sweep", f"experiments_dir={user_dir}",
                 f"run_root={tmp_path}"]) == 0
    assert (tmp_path / "optuna" / "my_sweep.journal").is_file()


def test_unknown_user_experiments_say_where_they_are_looked_for(user_dir, capsys, tmp_path):
    assert main(["grid", "experiment=my_sink", f"experiments_dir={user_dir}"]) == 2
    line = one_line_error(capsys)
    assert "Did you mean my_sinks?" in line and "experiments_dir=DIR" in line
    assert main(["grid", "experiment=my_sinks", f"experiments_dir={tmp_path / 'nowhere'}"]) == 2
    assert "is not a folder" in one_line_error(capsys)
    assert main(["sweep", "sweep=my_swep", f"experiments_dir={user_dir}"]) == 2
    assert "Did you mean my_sweep?" in one_line_error(capsys)


def test_a_grids_typo_fails_in_one_line_before_any_job(capsys, tmp_path):
    assert main(["grid", "experiment=sink_size", "strategy.sink_frame=3",
                 f"run_root={tmp_path}"]) == 2
    assert "Did you mean strategy.sink_frames?" in one_line_error(capsys)
    assert not (tmp_path / "rollouts").exists()


def test_training_settings_are_plain_fields_even_when_a_group_shares_the_name(monkeypatch):
    """`rollbench train packforcing compressor=hr`: `compressor` is also a config group;
    a typo'd setting gets did-you-mean."""
    from toolkit.models.recipes import RECIPES, Recipe
    from toolkit.worlds.sprites.pf_train import PFTrainConfig

    got = []
    monkeypatch.setitem(RECIPES._items, "packforcing",
                        Recipe(PFTrainConfig, lambda cfg: got.append(cfg) or "x"))
    assert main(["train", "packforcing", "compressor=hr", "steps=7", "lr=1e-4"]) == 0
    assert (got[0].compressor, got[0].steps, got[0].lr) == ("hr", 7, 1e-4)
    assert main(["train", "packforcing", "compresor=hr"]) != 0


def test_hydras_errors_get_one_line_and_the_right_hint(capsys, tmp_path):
    assert main(["run", "prompt=a red circle on navy, slow", f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "quote it whole" in line and "1. To use it as a list" not in line
    assert main(["grid", "experiment=sink_size", "hydra.launcher.n_jobs=2",
                 f"run_root={tmp_path}"]) == 2
    line = one_line_error(capsys)
    assert "hydra/launcher=joblib" in line and "+hydra.launcher.n_jobs" not in line


def test_grid_workers_is_the_joblib_launcher_and_ctrl_c_is_one_line(capsys, monkeypatch):
    from toolkit import cli
    from toolkit.runs.grid import with_workers

    assert with_workers(["experiment=x", "workers=3"]) == [
        "experiment=x", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    assert with_workers(["experiment=x", "workers=1"]) == ["experiment=x"]
    from omegaconf import OmegaConf

    from toolkit.runs.grid import shared_by

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert shared_by(OmegaConf.create({"_target_": joblib, "n_jobs": 3})) == 3
    assert shared_by(OmegaConf.create({"_target_": "x.BasicLauncher"})) == 1

    def interrupted(overrides):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "grid", interrupted)
    assert main(["grid", "experiment=sink_size"]) == 130
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "rollbench grid experiment=sink_size` again" in out


def test_report_takes_experiments_dir():
    from reports.compare import parse

    assert parse(["experiment=x", "experiments_dir=/tmp"])["experiments_dir"] == "/tmp"


def test_unknown_measures_fail_in_one_line_before_any_rollout(capsys, tmp_path):
    """`tracking.metrics=nosuch` (or a typo'd name in a list) fails before anything runs."""
    run = ["run", "model=tiny-random", "video.latent_frames=4", "progress=false",
           f"run_root={tmp_path}"]
    assert main([*run, "tracking.metrics=nosuch"]) == 2
    assert "unknown metric set 'nosuch'; sets: [" in one_line_error(capsys)
    assert main([*run, "tracking.metrics=[drfit,kv_bytes]"]) == 2
    assert "Did you mean 'drift'?" in one_line_error(capsys)
    assert not (tmp_path / "rollouts").exists()


def test_a_sweep_objective_the_metric_set_lacks_fails_before_any_trial(capsys, tmp_path):
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("base: [model=tiny-random, video.latent_frames=4, tracking.metrics=system]\n"
                     "objectives: [drift]\nparams:\n  seed: {type: int, low: 0, high: 3}\n")
    assert main(["sweep", f"sweep={sweep}", f"run_root={tmp_path}"]) == 2
    assert "objectives ['drift'] are not measured by tracking.metrics=system" in \
        one_line_error(capsys)
    assert not (tmp_path / "rollouts").exists() and not (tmp_path / "optuna").exists()
