"""Reading one experiment out of the tracking store: runs, curves, artifacts, its Optuna study.

Nothing here computes a metric, runs a model or opens a model's files: the report is a pure
function of what the runs recorded (MLflow params, tags such as ``spec.train_frames``, scalars,
curves and artifacts such as the model's card), plus the Optuna study of a sweep where there
is one.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from toolkit.runs.aggregate import curves, load_runs, split_variants

#: Tokens of a grid's variant label that only state the length (the marks show length).
LENGTH_KEYS = ("video.latent_frames=", "video.seconds=")


@dataclass
class Experiment:
    """The recorded runs of one MLflow experiment.

    Attributes:
        name: the MLflow experiment.
        uri: the tracking URI it was read from.
        runs: FINISHED runs, one row each (see ``toolkit.runs.aggregate.load_runs``) plus
            ``variant`` (the report label), ``train_frames`` (the model's 1x length) and
            ``block_frames`` (latent frames per block), as the runs recorded them.
        others: the runs that did not finish (failed, running, killed).
        curves: ``metric -> run_id -> (steps, values)`` for the finished runs.
        artifact_uris: ``run_id -> artifact URI``.
        duplicates: finished runs dropped because their run key had finished already.
        notes: sentences on what the reading changed (labels split, duplicates dropped).
    """

    name: str
    uri: str
    runs: pd.DataFrame
    others: pd.DataFrame
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    artifact_uris: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)


def client_for(uri: str) -> Any:
    """An MLflow client of an existing store (a missing sqlite file is an error, not created)."""
    from toolkit.runs.tracking import open_client

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise ValueError(f"no tracking store at {path}: run `rollbench grid experiment=NAME`"
                             " first, or point at the store with run_root=DIR or tracking.uri=URI")
    return open_client(uri)


def experiment_names(uri: str) -> list[str]:
    """Names of the experiments in the store, sorted."""
    return sorted(e.name for e in client_for(uri).search_experiments())


def check_experiment(uri: str, name: str) -> None:
    """Raise a ValueError naming the store's experiments when ``name`` is not one of them."""
    names = experiment_names(uri)
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=2)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ValueError(f"unknown experiment {name!r} in {uri}.{hint} Experiments in this store: "
                     f"{', '.join(names) or '(none)'}")


def variant_label(variant: Any, strategy: Any) -> str:
    """The report's label of a run: its grid variant without length tokens, else its strategy."""
    text = variant if isinstance(variant, str) and variant else strategy
    words = [w for w in str(text).split() if not w.startswith(LENGTH_KEYS)]
    return " ".join(words) or str(strategy)


def _whole(value: Any) -> int | None:
    if value in (None, "", "None", "null") or (isinstance(value, float) and np.isnan(value)):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def train_frames_of(row: dict[str, Any]) -> int | None:
    """The model's training length (1x) in latent frames, as a run recorded it.

    ``model.train_frames`` when the config sets it, else the ``spec.train_frames`` tag (the
    model spec of the run); None when neither is there (the marks are then unknown and the
    report uses each run's whole length).
    """
    return _whole(row.get("params.model.train_frames")) or \
        _whole(row.get("tags.spec.train_frames"))


def block_frames_of(row: dict[str, Any]) -> int | None:
    """Latent frames per block of a run: ``model.block_frames`` or the ``spec.block_frames``
    tag; None when neither is recorded."""
    return _whole(row.get("params.model.block_frames")) or \
        _whole(row.get("tags.spec.block_frames"))


def switches_of(row: dict[str, Any]) -> list[int]:
    """Latent frames where a run's prompt schedule switched (its ``switches`` tag)."""
    text = row.get("tags.switches")
    if not isinstance(text, str) or not text:
        return []
    return [int(f) for f in text.split(",") if f.strip().isdigit()]


def block_of_curve(steps: np.ndarray) -> int | None:
    """The block size read off a per-block curve (its steps are each block's first frame)."""
    gaps = np.diff(np.asarray(steps))
    return int(np.median(gaps)) if len(gaps) and np.median(gaps) > 0 else None


def load_experiment(uri: str, name: str, metrics: list[str]) -> Experiment:
    """Runs, curves (``metrics``) and artifact locations of one experiment."""
    check_experiment(uri, name)
    df = load_runs(uri, name, finished_only=False)
    dropped = int(df.attrs.get("duplicates", 0))
    if "strategy" in df:
        df = df[df["strategy"].notna()]  # a sweep's study run is no variant
    df = df.reset_index(drop=True)
    if df.empty:
        return Experiment(name, uri, df, df)
    tag = df["tags.variant"] if "tags.variant" in df else pd.Series([None] * len(df))
    df["variant"] = [variant_label(v, s) for v, s in zip(tag, df["strategy"], strict=True)]
    df, notes = split_variants(df)
    if dropped:
        notes.append(f"{dropped} duplicate run(s) of an already finished run key (two grids or "
                     "workers ran the same config) are counted once.")
    records = df.to_dict("records")
    df["train_frames"] = pd.array([train_frames_of(r) for r in records], "Int64")
    df["block_frames"] = pd.array([block_frames_of(r) for r in records], "Int64")
    for col in ("seed", "latent_frames"):  # whole numbers, missing where a run lacks them
        df[col] = pd.array([None if pd.isna(v) else int(v) for v in df[col]], "Int64")
    done = df["status"] == "FINISHED"
    runs = df[done].sort_values(["variant", "seed", "latent_frames", "run_name"],
                                na_position="last").reset_index(drop=True)
    exp = Experiment(name, uri, runs, df[~done].reset_index(drop=True), duplicates=dropped,
                     notes=notes)
    ids = list(runs["run_id"])
    exp.curves = {m: curves(ids, m, uri) for m in metrics}
    client = client_for(uri)
    exp.artifact_uris = {i: client.get_run(i).info.artifact_uri for i in ids}
    return exp


def local_path(uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact URI; None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or re.fullmatch(r"[A-Za-z]", parsed.scheme):  # a path (or C:\)
        return Path(uri)
    return None


def artifact(exp: Experiment, run_id: str, name: str, cache: Path) -> Path | None:
    """A run's artifact on local disk: in place for local stores, else downloaded to ``cache``.

    Falls back to the run directory the run was recorded from (tag ``run_dir``) when the store
    lacks the file. None when neither has it.
    """
    base = local_path(exp.artifact_uris.get(run_id, ""))
    if base is not None and (base / name).is_file():
        return base / name
    if base is None:
        try:
            dst = cache / run_id
            dst.mkdir(parents=True, exist_ok=True)
            got = Path(client_for(exp.uri).download_artifacts(run_id, name, str(dst)))
            if got.is_file():
                return got
        except Exception:  # absent from the remote store: try the run directory
            shutil.rmtree(cache / run_id, ignore_errors=True)
    row = exp.runs[exp.runs["run_id"] == run_id]
    run_dir = row["tags.run_dir"].iloc[0] if "tags.run_dir" in row and len(row) else None
    if isinstance(run_dir, str) and (Path(run_dir) / name).is_file():
        return Path(run_dir) / name
    return None


def model_cards(exp: Experiment, cache: Path) -> list[tuple[str, dict[str, Any]]]:
    """The model cards the runs recorded (their ``model_card.json`` artifact): one per
    distinct card, labelled with the model and how many runs used it."""
    from toolkit.runs.tracking import CARD

    found: dict[str, list[dict[str, Any]]] = {}
    for run in exp.runs.to_dict("records"):
        path = artifact(exp, run["run_id"], CARD, cache)
        if path is not None:
            found.setdefault(path.read_text(), []).append(run)
    return [(f"model card of `{runs[0].get('model') or 'the model'}` ({len(runs)} runs)",
             json.loads(text)) for text, runs in found.items()]


@dataclass
class Study:
    """An Optuna study found for the experiment, with its objective names."""

    name: str
    study: Any
    objectives: list[str]
    question: str = ""


def find_study(exp_name: str, uri: str, run_root: str | Path,
               storage: str | None = None) -> tuple[Study | None, str]:
    """The sweep's study: ``sweep-<name>`` or ``<name>``, from ``storage`` or the journal.

    The storage is, in order: the given URL; the one recorded on the sweep's study run (tag
    ``storage``); ``<run_root>/optuna/<name>.journal``. Returns the study (or None) and a
    sentence saying where it was found or looked for.
    """
    name = exp_name[len("sweep-"):] if exp_name.startswith("sweep-") else exp_name
    tags = _study_tags(uri, exp_name, name)
    journal = Path(run_root) / "optuna" / f"{name}.journal"
    url = storage or tags.get("storage") or (f"journal:{journal}" if journal.is_file() else None)
    if url is None or (url.startswith("journal:") and not Path(url[8:]).is_file()):
        looked = "" if not exp_name.startswith("sweep-") else \
            f"no Optuna study found (looked for <run_root>/optuna/{name}.journal)"
        return None, looked
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            backend = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        else:
            backend = optuna.storages.RDBStorage(url)
        study = optuna.load_study(study_name=name, storage=backend)
    except Exception as err:  # not this study's storage, or unreachable
        return None, f"the Optuna study {name!r} could not be opened ({type(err).__name__})"
    objectives = [o for o in tags.get("objectives", "").split(",") if o] or \
        list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
    return Study(name, study, objectives, tags.get("question", "")), ""


def _study_tags(uri: str, exp_name: str, name: str) -> dict[str, str]:
    client = client_for(uri)
    exp = client.get_experiment_by_name(exp_name if exp_name.startswith("sweep-")
                                        else f"sweep-{name}")
    if exp is None:
        return {}
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.study = '{name}'",
                               max_results=1)
    return dict(found[0].data.tags) if found else {}
