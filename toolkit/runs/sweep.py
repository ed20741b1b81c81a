"""``rollbench sweep sweep=NAME``: Optuna studies driven by rollbench itself.

A sweep is ``ablations/sweep/NAME.yaml`` (or ``DIR/sweep/NAME.yaml`` of a user's folder given
by ``experiments_dir=DIR``, or a .yaml path): a question, base overrides, a search space, and
the objectives (metric names: their directions come from the metric registry, so a two-metric
sweep is a Pareto search). Storage: a journal file under the run root by default, or any RDB
URL (``storage=postgresql://...``, whose driver comes with ``pip install 'rollbench[cluster]'``)
so workers on many machines share one study. ``workers=N`` starts N processes on the study; a
study resumes where it stopped; a trial whose config is impossible is pruned, one that raises
(or runs out of memory) is failed, and the study goes on. Every trial is an MLflow run nested
under the study's run. Storage URLs are printed with their password masked.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from toolkit.errors import ConfigError
from toolkit.runs.config import check_metrics, compose_config, group_files
from toolkit.runs.stores import database_url, mask

if TYPE_CHECKING:
    import optuna

SWEEPS = Path(__file__).resolve().parents[2] / "ablations" / "sweep"
KINDS = ("int", "float", "categorical")
SAMPLERS = ("tpe", "grid")


@dataclass
class SweepSpec:
    """A search space and its objectives (the schema of ablations/sweep/NAME.yaml)."""

    name: str
    question: str
    base: list[str]
    objectives: list[str]
    params: dict[str, dict[str, Any]]
    n_trials: int = 20
    seed: int = 0
    pruner: str | None = None
    seeds: list[int] | None = None  # seeds per trial (objective: their mean); None: base's
    sampler: str = "tpe"  # tpe, or grid: every combination of categorical params once
    overrides: list[str] = field(default_factory=list)
    workers: int = 1  # processes on the study on this machine (set by ``cmd_sweep``)

    @property
    def directions(self) -> list[str]:
        from toolkit.metrics import METRICS

        return [METRICS.get(m).optuna_direction for m in self.objectives]


def sweeps(overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Sweep names and files over the search path (``experiments_dir=`` folders included)."""
    return group_files("sweep", overrides)


def load_sweep(name: str, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and check a sweep: a name on the search path of ``overrides``, or a .yaml path."""
    found = sweeps(overrides)
    path = Path(name) if name.endswith(".yaml") else found.get(name, SWEEPS / f"{name}.yaml")
    name = path.stem
    if not path.exists():
        import difflib

        close = difflib.get_close_matches(name, list(found), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown sweep {name!r}.{hint} Available: {', '.join(found)} "
                          f"(your own: experiments_dir=DIR with DIR/sweep/{name}.yaml, or a "
                          "path to a .yaml file)")
    data = OmegaConf.to_container(OmegaConf.load(path))
    question = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines()
                     if ln.startswith("#")), "")
    allowed = {"base", "objectives", "params", "n_trials", "seed", "pruner", "seeds", "sampler"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"sweep {name!r}: unknown keys {unknown}; allowed {sorted(allowed)}")
    spec = SweepSpec(name=name, question=question, **data)
    for key, space in spec.params.items():
        if space.get("type") not in KINDS:
            raise ConfigError(f"sweep {name!r}: {key} has type={space.get('type')!r}; "
                              f"allowed {list(KINDS)}")
    _check_shares(spec)
    if spec.seeds is not None and (not spec.seeds or not all(isinstance(s, int)
                                                             for s in spec.seeds)):
        raise ConfigError(f"sweep {name!r}: seeds={spec.seeds!r}; allowed a non-empty list "
                          "of whole numbers, e.g. [0, 1, 2]")
    _ = spec.directions  # unknown objective metrics fail here, with "did you mean"
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"sweep {name!r}: sampler={spec.sampler!r}; allowed {list(SAMPLERS)}")
    if spec.sampler == "grid":
        loose = [k for k, s in spec.params.items() if s["type"] != "categorical"]
        if loose:
            raise ConfigError(f"sweep {name!r}: sampler=grid needs categorical params; "
                              f"{loose} are not (give them choices: [...])")
    if spec.pruner not in (None, "median"):
        raise ConfigError(f"sweep {name!r}: pruner={spec.pruner!r}; allowed null, median")
    if spec.pruner and len(spec.objectives) > 1:
        raise ConfigError(f"sweep {name!r}: pruning needs a single objective "
                          f"(got {spec.objectives})")
    return spec


def _check_shares(spec: SweepSpec) -> None:
    """A param with ``of: KEY`` is searched as a share of KEY (a float in (0, 1]), e.g.
    ``strategy.top_k: {type: float, low: 0.1, high: 1.0, of: strategy.capacity}``."""
    for key, s in spec.params.items():
        if "of" not in s:
            continue
        if s["of"] not in spec.params or "of" in spec.params[s["of"]]:
            raise ConfigError(f"sweep {spec.name!r}: {key} has of={s['of']!r}; allowed one of "
                              f"the searched params {[k for k in spec.params if k != key]}")
        if s.get("type") != "float" or not 0 < s.get("low", 0) <= s.get("high", 2) <= 1:
            raise ConfigError(f"sweep {spec.name!r}: {key} is a share of {s['of']}: it needs "
                              "type: float with 0 < low <= high <= 1")


def suggest(trial: optuna.Trial, spec: SweepSpec) -> list[str]:
    """Overrides for one trial, sampled from the search space (a share ``of`` another param
    becomes a whole number of it, at least 1)."""
    values: dict[str, Any] = {}
    for key, s in spec.params.items():
        if s["type"] == "int":
            value = trial.suggest_int(key, s["low"], s["high"], step=s.get("step", 1),
                                      log=s.get("log", False))
        elif s["type"] == "float":
            value = trial.suggest_float(key, s["low"], s["high"], log=s.get("log", False))
        else:
            value = trial.suggest_categorical(key, s["choices"])
        values[key] = value
    for key, s in spec.params.items():
        if "of" in s:
            values[key] = max(1, round(values[key] * float(values[s["of"]])))
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


def storage_url(storage: str | None, run_root: str, name: str) -> str:
    """The study's storage: a journal file under the run root unless a URL is given."""
    if storage:
        return storage
    path = Path(run_root).resolve() / "optuna" / f"{name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"journal:{path}"


def open_storage(url: str) -> Any:
    """An Optuna storage from a URL; a clear error (password masked) when it cannot be opened:
    a missing database driver names the extra that brings it."""
    import optuna

    opened = database_url(url)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        return optuna.storages.RDBStorage(opened, engine_kwargs={"pool_pre_ping": True})
    except Exception as err:
        raise ConfigError(mask(f"cannot open the sweep storage {url!r}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0][:300]}")) from None


class Objective:
    """One trial = one tracked job; returns the objectives' values from its metrics."""

    def __init__(self, spec: SweepSpec, parent: str | None) -> None:
        self.spec, self.parent = spec, parent

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        import optuna

        from toolkit.runs.config import build
        from toolkit.runs.jobs import run_job

        overrides = [*self.spec.base, *self.spec.overrides, *suggest(trial, self.spec),
                     f"experiment_name=sweep-{self.spec.name}", "progress=false",
                     f"variant=trial {trial.number}", f"parallel={self.spec.workers}"]
        seeds = self.spec.seeds or [None]
        per_seed = []
        for n, seed in enumerate(seeds):
            try:
                cfg = compose_config([*overrides, *([f"seed={seed}"] if seed is not None
                                                    else [])])
                built = build(cfg)
            except (ConfigError, ValueError) as err:  # impossible partitions: not a crash
                trial.set_user_attr("invalid", str(err))
                raise optuna.TrialPruned(f"invalid config: {err}") from err
            callbacks = [self._reporter(trial)] if self.spec.pruner and n == 0 else []
            # an identical parameter set (same run key) is answered from the stored run;
            # one another worker is computing is waited for
            result = run_job(cfg, parent=self.parent, built=built, callbacks=callbacks,
                             wait=True)
            trial.set_user_attr(f"run_id{'' if n == 0 else f'_{n}'}", result.run_id)
            if result.status in ("skipped", "remeasured"):  # its rollout is the stored run's
                trial.set_user_attr("stored", True)
            if result.status not in ("finished", "skipped", "remeasured"):
                raise RuntimeError(f"trial {trial.number} failed: {result.error}")
            missing = [m for m in self.spec.objectives if m not in result.scalars]
            if missing:
                raise RuntimeError(f"trial {trial.number}: objectives {missing} were not "
                                   "computed")
            per_seed.append([float(result.scalars[m]) for m in self.spec.objectives])
        values = [float(sum(v) / len(v)) for v in zip(*per_seed, strict=True)]
        return values[0] if len(values) == 1 else values

    @staticmethod
    def _reporter(trial: optuna.Trial):
        """Report the running KV footprint per block; prune when the pruner says so."""

        import optuna

        def report(record: Any) -> None:
            trial.report(float(record.total_bytes), step=record.index)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at block {record.index}")

        return report


def _worker(name: str, url: str, overrides: list[str], parent: str | None, total: int,
            share: int, rank: int = 0, workers: int = 1) -> None:
    import optuna

    spec = load_sweep(name, overrides)
    spec.overrides, spec.workers = overrides, workers
    sampler = make_sampler(spec, rank)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(url), sampler=sampler)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
              optuna.trial.TrialState.FAIL)
    stop = optuna.study.MaxTrialsCallback(total, states=states)
    study.optimize(Objective(spec, parent), n_trials=share, catch=(Exception,),
                   callbacks=[stop])


def make_sampler(spec: SweepSpec, rank: int = 0) -> Any:
    """The study's sampler: TPE seeded per worker (distinct, reproducible), or the grid of the
    categorical params (each combination once, shared by the workers)."""
    import optuna

    if spec.sampler == "grid":
        space = {k: list(s["choices"]) for k, s in spec.params.items()}
        return optuna.samplers.GridSampler(space, seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed + rank)


def grid_size(spec: SweepSpec) -> int:
    """Combinations of a grid sweep's params."""
    size = 1
    for s in spec.params.values():
        size *= len(s["choices"])
    return size


def parse(args: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """Split ``sweep=NAME``, sweep options (workers, n_trials, storage) and run overrides."""
    opts, rest = {}, []
    for a in args:
        key = a.split("=", 1)[0]
        if key in ("sweep", "workers", "n_trials", "storage"):
            opts[key] = a.split("=", 1)[1]
        else:
            rest.append(a)
    if "sweep" not in opts:
        raise ConfigError(f"rollbench sweep needs sweep=NAME; available: "
                          f"{', '.join(sweeps(rest))}")
    return opts.pop("sweep"), opts, rest


def study_run(spec: SweepSpec, url: str, cfg: Any) -> str | None:
    """The MLflow run all trials nest under (found again when a study resumes)."""
    from toolkit.runs.tracking import experiment_id, open_client, target

    shown = mask(url)  # the tag never holds a password (the report needs storage= then)
    try:
        uri, _ = target(cfg)
        client = open_client(uri)
        exp = experiment_id(client, f"sweep-{spec.name}", uri)
        found = client.search_runs([exp], filter_string=f"tags.study = '{spec.name}' and "
                                                        f"tags.storage = '{shown}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(exp, run_name=f"study {spec.name}",
                                tags={"study": spec.name, "storage": shown,
                                      "question": spec.question[:4000],
                                      "objectives": ",".join(spec.objectives)})
        return run.info.run_id
    except Exception as err:  # tracking down: trials still run and keep local results
        import warnings

        warnings.warn(mask(f"no study run in the tracking store ({err}); trials are not "
                           "nested"), stacklevel=2)
        return None


def cmd_sweep(args: list[str]) -> int:
    """Create or resume the study, run ``workers`` processes on it, print the best trials."""
    import optuna

    from toolkit.terminal import console, print_table

    source, opts, overrides = parse(args)
    spec = load_sweep(source, overrides)
    spec.overrides, name = overrides, spec.name
    cfg = compose_config([*spec.base, *overrides])  # typos in the overrides fail here
    which = cfg.tracking.metrics
    missing = [o for o in spec.objectives
               if o not in check_metrics(which, cfg.model.get("_target_"))]
    if missing:  # before any trial, not after the first rollout
        shown = OmegaConf.to_container(which) if OmegaConf.is_config(which) else which
        raise ConfigError(f"sweep {name!r}: objectives {missing} are not measured by "
                          f"tracking.metrics={shown}; pick a set that has them or list them "
                          "(tracking.metrics=[...])")
    url = storage_url(opts.get("storage"), cfg.run_root, name)
    total, workers = _whole("n_trials", opts.get("n_trials", spec.n_trials)), \
        _whole("workers", opts.get("workers", 1))
    if spec.sampler == "grid":  # each combination once
        total = min(total, grid_size(spec))
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=4) if spec.pruner else None
    study = optuna.create_study(study_name=name, storage=open_storage(url),
                                directions=spec.directions, load_if_exists=True,
                                sampler=make_sampler(spec),
                                pruner=pruner)
    parent = study_run(spec, url, cfg)
    console.print(f"sweep {name}: {spec.question}\nstorage {mask(url)}; {total} trials, "
                  f"{workers} worker(s); {len(study.trials)} trials already in the study")
    done = sum(t.state.is_finished() for t in study.trials)
    share = -(-max(0, total - done) // max(1, workers))  # trials per worker, rounded up
    if workers <= 1:
        _worker(source, url, overrides, parent, total, share)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker,
                             args=(source, url, overrides, parent, total, share, rank,
                                   workers))
                 for rank in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    counts = {}
    for t in study.trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    console.print("trials: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    best = study.best_trials if any(t.state.name == "COMPLETE" for t in study.trials) else []
    shown = [shown_unit(m) for m in spec.objectives]
    print_table(f"{name}: best trials (Pareto front)" if len(spec.objectives) > 1
                else f"{name}: best trial", ("trial", *[h for h, _ in shown], "params"),
                [(str(t.number), *[f"{v * k:.4g}" for v, (_, k) in zip(t.values, shown,
                                                                       strict=True)],
                  " ".join(f"{k}={v}" for k, v in t.params.items())) for t in best])
    console.print(f"report: rollbench report experiment=sweep-{name} (every trial is a run "
                  f"of the MLflow experiment sweep-{name})", soft_wrap=True, markup=False)
    return 0


def shown_unit(metric: str) -> tuple[str, float]:
    """A metric's column header and scale in the terminal (bytes as MiB, seconds as ms)."""
    from toolkit.metrics import series_unit

    unit = series_unit(metric)
    return {"bytes": (f"{metric} (MiB)", 2.0**-20), "s": (f"{metric} (ms)", 1e3)}.get(
        unit, (metric, 1.0))


def _whole(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: must be a whole number >= 1") from None
    if number < 1:
        raise ConfigError(f"{key}={value!r}: must be a whole number >= 1")
    return number
