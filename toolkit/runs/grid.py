"""``rollbench grid experiment=NAME``: an experiment's multirun through Hydra's launchers.

An experiment is ``ablations/experiment/NAME.yaml``, or ``DIR/experiment/NAME.yaml`` of a
user's own folder given by ``experiments_dir=DIR`` (Hydra's ``hydra.searchpath`` works too): a
header comment stating the question, overrides of the run config, and the grid as
``hydra.sweeper.params``. Launchers: Hydra's basic one by default, ``hydra/launcher=joblib``
for parallel processes on one machine, ``hydra/launcher=submitit_slurm`` for a cluster
(``submitit_local`` to try it locally). Every job is one tracked run; a job whose run key
already finished is skipped, and a failing job is recorded as failed while the grid goes on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from toolkit.errors import ConfigError
from toolkit.runs.config import (
    group_files,
    register_strategy_configs,
    rewrite_custom,
    with_experiments_dir,
)


def question_of(path: Path) -> str:
    """The question a config file answers: its first comment line (not ``@package``)."""
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    return next((ln for ln in lines if ln and not ln.startswith("@package")), "")


def experiments(overrides: Sequence[str] = ()) -> dict[str, str]:
    """Experiment names and the question each answers, over the search path of ``overrides``
    (built-in ones, then those of ``experiments_dir=`` / ``hydra.searchpath`` folders)."""
    return {name: question_of(path) for name, path in group_files("experiment",
                                                                  overrides).items()}


def check_experiment(overrides: list[str]) -> str:
    """The experiment named in the overrides; a clear error when missing or unknown."""
    names = experiments(overrides)
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if not chosen:
        raise ConfigError(f"rollbench grid needs experiment=NAME; available: {', '.join(names)}")
    if chosen[0] not in names:
        import difflib

        close = difflib.get_close_matches(chosen[0], names, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {chosen[0]!r}.{hint} Available: "
                          f"{', '.join(names)} (your own: experiments_dir=DIR with "
                          f"DIR/experiment/{chosen[0]}.yaml)")
    return chosen[0]


#: Override keys that never enter a variant label: they vary inside a variant (seed, prompt),
#: name the grid (experiment), or do not change a rollout (see ``toolkit.runs.tracking``).
UNLABELLED = ("seed", "prompt", "strategy", "experiment", "experiment_name", "experiments_dir",
              "variant", "run_root", "progress", "tracking")
#: Environment variable carrying the keys swept on a grid's command line to its jobs.
SWEPT_ENV = "ROLLBENCH_GRID_SWEPT"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def variant(cfg: DictConfig, task_overrides: list[str], swept: list[str]) -> str:
    """A grid job's label: the strategy's, plus its values of every swept key but the seed and
    the prompt (``swept``: keys of the experiment file's ``hydra.sweeper.params`` and of the
    command line's ``key=a,b`` sweeps, with or without ``+`` / ``++``)."""
    from toolkit.runs.config import strategy_label

    keys = {_key(k) for k in swept}
    keys = {k for k in keys if k not in UNLABELLED and not k.startswith("tracking.")}
    values = [o.lstrip("+~") for o in task_overrides if _key(o) in keys]
    return " ".join([strategy_label(cfg.strategy), *sorted(values)])


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a grid's command line sweeps (``key=a,b``; not lists ``[a,b]``)."""
    return sorted({_key(o) for o in overrides if o not in fixed(overrides)})


def _job(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    from toolkit.runs.jobs import describe, run_job
    from toolkit.terminal import console

    hc = HydraConfig.get()
    swept = [*(hc.sweeper.get("params") or {}), *os.environ.get(SWEPT_ENV, "").split()]
    cfg.variant = variant(cfg, list(hc.overrides.task), swept)
    cfg.parallel = shared_by(hc.launcher)
    result = run_job(cfg)
    console.print(f"job {HydraConfig.get().job.num}: {cfg.variant} seed={cfg.seed} -> "
                  f"{describe(result)}")
    return result.status


def shared_by(launcher: DictConfig) -> int:
    """Jobs a launcher runs at once on this machine (joblib's ``n_jobs``; -1: every CPU);
    1 for one at a time or for cluster launchers, whose jobs get machines of their own."""
    target = str(launcher.get("_target_", ""))
    if "Joblib" not in target:
        return 1
    jobs = int(launcher.get("n_jobs") or 1)
    return (os.cpu_count() or 1) if jobs < 0 else jobs


def launch(overrides: list[str]) -> int:
    """Run an experiment's grid (Hydra multirun) with the given overrides; print a summary."""
    import hydra

    from toolkit.runs.config import compose_config

    overrides = with_workers(overrides)
    check_experiment(overrides)
    compose_config(fixed(overrides))  # a typo'd key or value fails here, in one line
    register_strategy_configs()
    main = hydra.main(version_base="1.3", config_path="pkg://ablations",
                      config_name="config")(_job)
    argv = sys.argv
    sys.argv = ["rollbench-grid", "--multirun", *with_experiments_dir(rewrite_custom(overrides))]
    before = os.environ.get(SWEPT_ENV)
    os.environ[SWEPT_ENV] = " ".join(swept_keys(overrides))  # inherited by every launcher's jobs
    try:
        main()
    finally:
        sys.argv = argv
        if before is None:
            os.environ.pop(SWEPT_ENV, None)
        else:
            os.environ[SWEPT_ENV] = before
    try:
        print_summary(overrides)
    except ConnectionError as err:  # the store is down: the runs wait on disk for relog
        from toolkit.terminal import console

        console.print(f"no summary: {err}", soft_wrap=True, markup=False)
    return 0


def with_workers(overrides: list[str]) -> list[str]:
    """``workers=N`` (as sweeps take it) as Hydra's joblib launcher with N parallel jobs."""
    given = [o for o in overrides if o.startswith("workers=")]
    if not given:
        return overrides
    value = given[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"workers={value!r}: must be a whole number >= 1")
    rest = [o for o in overrides if not o.startswith("workers=")]
    return rest if int(value) == 1 else [*rest, "hydra/launcher=joblib",
                                         f"hydra.launcher.n_jobs={value}"]


def fixed(overrides: list[str]) -> list[str]:
    """The overrides that set one value (a grid's swept ``key=a,b`` ones left out)."""
    return [o for o in overrides if "," not in o.split("=", 1)[-1] or "[" in o]


def print_summary(overrides: list[str]) -> None:
    """Status counts and a mean table of the experiment's runs, from the tracking store."""
    from toolkit.plugins import WORLDS
    from toolkit.runs.aggregate import load_runs, split_variants
    from toolkit.runs.config import compose_config
    from toolkit.runs.tracking import target
    from toolkit.terminal import console, print_table

    cfg = compose_config(fixed(overrides))
    uri, experiment = target(cfg)
    runs = load_runs(uri, experiment, finished_only=False)
    if runs.empty:
        console.print("no runs recorded")
        return
    dropped = runs.attrs.get("duplicates", 0)
    console.print("runs: " + ", ".join(f"{k.lower()}={v}" for k, v in
                                      runs["status"].value_counts().items())
                  + (f" ({dropped} duplicate run(s) of a finished run key not counted)"
                     if dropped else ""))
    done = runs[runs["status"] == "FINISHED"]
    if done.empty:
        return
    done, notes = split_variants(done, "tags.variant")
    for note in notes:
        console.print(note.replace("`", ""), soft_wrap=True, markup=False)
    extra = [(m, title, 1.0) for world in WORLDS.items().values() for m, title in world.columns]
    cols = [(m, title, k) for m, title, k in
            (*SUMMARY[:WORLDS_AFTER], *extra, *SUMMARY[WORLDS_AFTER:]) if m in done]
    rows = [(str(variant), str(frames), str(len(g)),
             *[f"{g[m].mean() * k:.4g}" for m, _, k in cols])
            for (variant, frames), g in done.groupby(["tags.variant", "latent_frames"])]
    if "tags.parallel" in done and done["tags.parallel"].notna().any():
        console.print(f"ms/block: {int(done['tags.parallel'].notna().sum())} run(s) were timed "
                      "while jobs shared the machine: not comparable with runs timed alone",
                      soft_wrap=True, markup=False)
    print_table(f"experiment {experiment}: mean over seeds",
                ("variant", "frames", "n", *[t for _, t, _ in cols]), rows,
                optional=("ms/block", "discontinuity", "dynamic degree", "frames",
                          "fidelity drop", *[t for _, t, _ in extra[1:]]))


#: The grid summary's columns: metric, header, scale (the worlds' columns, ``World.columns``,
#: go after the first ``WORLDS_AFTER``).
SUMMARY = (("fidelity_end", "fidelity at end", 1.0), ("fidelity_mean", "fidelity mean", 1.0),
           ("vde", "vde", 1.0), ("start_end_fidelity_drop", "fidelity drop", 1.0),
           ("dynamic_degree", "dynamic degree", 1.0), ("discontinuity", "discontinuity", 1.0),
           ("peak_kv_bytes", "peak KV MiB", 2.0**-20), ("seconds_per_block", "ms/block", 1e3))
WORLDS_AFTER = 4
