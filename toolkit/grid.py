"""``rollbench grid experiment=NAME``: an experiment's multirun through Hydra's launchers.

An experiment is ``ablations/experiment/NAME.yaml``: a header comment stating the question,
overrides of the run config, and the grid as ``hydra.sweeper.params``. Launchers: Hydra's
basic one by default, ``hydra/launcher=joblib`` for parallel processes on one machine,
``hydra/launcher=submitit_slurm`` for a cluster (``submitit_local`` to try it locally). Every
job is one tracked run; a job whose run key already finished is skipped, and a failing job is
recorded as failed while the grid goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from toolkit.config import ConfigError, _register_strategy_configs, rewrite_custom

EXPERIMENTS = Path(__file__).resolve().parent.parent / "ablations" / "experiment"


def experiments() -> dict[str, str]:
    """Experiment names and the question each answers (its first comment line)."""
    out = {}
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        question = next((ln for ln in lines if ln and not ln.startswith("@package")), "")
        out[path.stem] = question
    return out


def check_experiment(overrides: list[str]) -> str:
    """The experiment named in the overrides; a clear error when missing or unknown."""
    names = experiments()
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    if not chosen:
        raise ConfigError(f"rollbench grid needs experiment=NAME; available: {', '.join(names)}")
    if chosen[0] not in names:
        import difflib

        close = difflib.get_close_matches(chosen[0], names, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown experiment {chosen[0]!r}.{hint} Available: "
                          f"{', '.join(names)}")
    return chosen[0]


def variant(cfg: DictConfig, task_overrides: list[str], swept: list[str]) -> str:
    """A grid job's label: the strategy's, plus its values of the swept keys but the seed."""
    from toolkit.config import strategy_label

    keys = set(swept) - {"seed", "strategy"}
    values = [o.lstrip("+~") for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    return " ".join([strategy_label(cfg.strategy), *values])


def _job(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    from toolkit.jobs import console, describe, run_job

    hc = HydraConfig.get()
    cfg.variant = variant(cfg, list(hc.overrides.task), list(hc.sweeper.get("params") or {}))
    result = run_job(cfg)
    console.print(f"job {HydraConfig.get().job.num}: {cfg.variant} seed={cfg.seed} -> "
                  f"{describe(result)}")
    return result.status


def launch(overrides: list[str]) -> int:
    """Run an experiment's grid (Hydra multirun) with the given overrides; print a summary."""
    check_experiment(overrides)
    _register_strategy_configs()
    main = hydra.main(version_base="1.3", config_path="pkg://ablations",
                      config_name="config")(_job)
    argv = sys.argv
    sys.argv = ["rollbench-grid", "--multirun", *rewrite_custom(overrides)]
    try:
        main()
    finally:
        sys.argv = argv
    print_summary(overrides)
    return 0


def print_summary(overrides: list[str]) -> None:
    """Status counts and a mean table of the experiment's runs, from the tracking store."""
    from rich.table import Table

    from toolkit.aggregate import load_runs
    from toolkit.config import compose_config
    from toolkit.jobs import console
    from toolkit.tracking import resolve_uri

    fixed = [o for o in overrides if "," not in o.split("=", 1)[-1] or "[" in o]  # no sweeps
    cfg = compose_config(fixed)
    uri = resolve_uri(cfg.tracking.uri, cfg.run_root)
    runs = load_runs(uri, cfg.tracking.experiment, finished_only=False)
    if runs.empty:
        console.print("no runs recorded")
        return
    console.print("runs: " + ", ".join(f"{k.lower()}={v}" for k, v in
                                      runs["status"].value_counts().items()))
    done = runs[runs["status"] == "FINISHED"]
    if done.empty:
        return
    cols = [c for c in ("vde", "start_end_fidelity_drop", "dynamic_degree", "discontinuity",
                        "peak_kv_bytes", "seconds_per_block") if c in done]
    table = Table(title=f"experiment {cfg.tracking.experiment}: mean over seeds")
    for c in ("strategy", "frames", "n", *cols):
        table.add_column(c)
    for (strategy, frames), g in done.groupby(["tags.variant", "latent_frames"]):
        table.add_row(str(strategy), str(frames), str(len(g)),
                      *[f"{g[c].mean():.4g}" for c in cols])
    console.print(table)
