"""Tracking: every rollout becomes a local run directory first, then one MLflow run.

Local first: ``record_run`` writes ``metrics.json``, ``meta.json`` (run key, tags, params,
tracking target) and ``marks.png`` beside what ``save_rollout`` wrote (config, trace, media);
only then does it log to MLflow, built from the directory alone. If the store cannot be
reached the results stay on disk, a ``TRACKING_FAILED`` marker names the error, and
``rollbench relog DIR`` logs the directory later (the same code path).

Curves are logged with the latent frame as the step (blocks and segments: their first latent
frame); scalars at step 0. A measure that could not be computed is left out: its reason goes to
``metrics.json`` and a tag ``unavailable.<metric>``, and the run logs one warning line naming
them all (but those that do not apply to the run, ``toolkit.metrics.base.NotApplicable``,
such as the switch measures of a run without a prompt switch). The tracking URI defaults to
``sqlite:///<run_root>/mlflow.db`` with artifacts under ``<run_root>/mlartifacts``; any MLflow
URI works.

A store behind a server (``http(s)://``, ``postgresql://``) is probed first
(``toolkit.runs.stores``): one that does not answer within ``ROLLBENCH_TRACKING_TIMEOUT`` seconds
(default 5) fails at once instead of after MLflow's minutes of retries, so the run goes on and
its results wait on disk for ``rollbench relog``. Messages never show a URL's password.

Public helpers for the other modules (commands, grids, sweeps, the report):

    uri, experiment = target(cfg)           # where a run config is tracked
    client = open_client(uri)               # an MlflowClient (probed; a new sqlite store made)
    exp_id = experiment_id(client, experiment, uri)   # created on first use
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from toolkit.runs.config import run_label, strategy_label
from toolkit.runs.identity import (
    canonical_config,
    flatten,
    git_state,
    measure_key,
    run_key,
    versions,
)
from toolkit.runs.stores import check_store, database_url, mask, timeout

if TYPE_CHECKING:
    from toolkit.metrics import MetricInput, MetricResults

# MLflow 3 sends usage telemetry unless told not to; a benchmark run should not phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MARKER = "TRACKING_FAILED"
LOGGED = "mlflow_run.json"
ARTIFACTS = ("video.mp4", "filmstrip.png", "marks.png", "trace.json", "metrics.json",
             "config.yaml", "meta.json", "model_card.json")
CARD = "model_card.json"  # the model's own card (weights, training), when it has one
MARKS = (1, 6, 12, 24)
DEFAULT_EXPERIMENT = "rollbench"
TAG_CHARS = 1000  # an unavailable measure's reason, as a tag
log = logging.getLogger("rollbench.tracking")
_WARNED: set[str] = set()  # the unavailable-measure warnings already given in this process


class TrackingWarning(UserWarning):
    """The tracking store could not be reached; the results are kept on disk."""


def resolve_uri(uri: str | None, run_root: str | Path) -> str:
    """The tracking URI: the given one, else a sqlite file under the run root."""
    if uri:
        return str(uri)
    return f"sqlite:///{Path(run_root).resolve() / 'mlflow.db'}"


def target(cfg: DictConfig | Mapping[str, Any]) -> tuple[str, str]:
    """(tracking URI, MLflow experiment) of a run config (``cfg.tracking``, ``cfg.run_root``)."""
    track = cfg.get("tracking") or {}
    return (resolve_uri(track.get("uri"), cfg.get("run_root", "runs")),
            track.get("experiment") or DEFAULT_EXPERIMENT)


def artifact_root(uri: str) -> str | None:
    """Artifact location for new experiments: beside a sqlite file; the server's otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def mark_frames(pixel_frames: int, latent_frames: int, train_frames: int) -> list[int]:
    """Pixel frames at the 1x, 6x, 12x, 24x marks (last frame of each) that the video reaches."""
    from toolkit.metrics import latent_index

    lat = latent_index(pixel_frames, latent_frames)
    marks = [m * train_frames - 1 for m in MARKS if m * train_frames <= latent_frames]
    return [int(np.nonzero(lat == t)[0][-1]) for t in marks] or [pixel_frames - 1]


def results_json(results: MetricResults, inp: MetricInput) -> dict[str, Any]:
    """JSON form of the results (NaN as null)."""
    def clean(a: Any) -> Any:
        return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, float)]

    data: dict[str, Any] = {}
    for key, value in results.values.items():
        entry = dict(results.info[key])
        if isinstance(value, tuple):
            entry.update(steps=[int(s) for s in value[0]], values=clean(value[1]))
        else:
            entry["value"] = clean([value])[0]
        data[key] = entry
    return {"metrics": data, "unavailable": results.unavailable, "seconds": results.seconds,
            "latent_frames": inp.latent_frames, "block_frames": inp.block_frames,
            "segment_frames": inp.segment_frames, "feature": inp.feature}


def _prompt_text(prompt: Any) -> str:
    return prompt.text() if hasattr(prompt, "text") else str(prompt)


def record_run(out: Any, cfg: DictConfig, run_dir: str | Path, model: Any = None,
               prompt: Any = None, parent: str | None = None) -> str | None:
    """Compute metrics, write them locally, then log the run; returns the MLflow run id.

    Args:
        out: the ``Rollout`` (latents, frames or None, trace).
        cfg: the resolved run config (``cfg.tracking`` sets uri, experiment, metrics...).
        run_dir: the run directory ``save_rollout`` wrote.
        model: the model (its ``spec``).
        prompt: the prompt of the video.
        parent: MLflow run id this run is nested under (a sweep's study run).

    Returns:
        The run id, or None when the store could not be reached (see ``TRACKING_FAILED``).
    """
    from toolkit.metrics import MetricInput, compute
    from toolkit.plugins import world_of
    from toolkit.runs.media import filmstrip

    run_dir = Path(run_dir)
    track = cfg.get("tracking") or {}
    spec = getattr(model, "spec", None)
    frames = out.frames[0] if out.frames is not None else None
    inp = MetricInput(frames=frames, latents=out.latents[0], trace=out.trace, prompt=prompt,
                      spec=spec, segment_frames=track.get("segment_frames"),
                      feature=track.get("feature", "world"),
                      options=dict(track.get("options") or {}),
                      backends=dict(track.get("backends") or {}), world=world_of(model))
    results = compute(inp, track.get("metrics", "world"))
    missing = [k for k in results.unavailable if k not in results.inapplicable]
    names = ", ".join(missing)
    if missing and names not in _WARNED:  # once per process (a grid's jobs)
        _WARNED.add(names)
        log.warning("%s: %d measures unavailable (reasons in metrics.json and the run's "
                    "unavailable.* tags; said once for all jobs here): %s", run_dir.name,
                    len(missing), names)
    (run_dir / "metrics.json").write_text(json.dumps(results_json(results, inp), indent=1))
    if frames is not None:
        idx = mark_frames(len(frames), inp.latent_frames, inp.train_frames)
        filmstrip([frames[idx]], run_dir / "marks.png")
    config = canonical_config(cfg)
    tags = {"strategy": strategy_label(cfg.strategy),
            "variant": str(cfg.get("variant") or run_label(cfg)),
            **({"parallel": str(cfg.parallel)} if (cfg.get("parallel") or 1) > 1 else {}),
            "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
            "prompt": _prompt_text(prompt), "run_key": run_key(cfg),
            "measure_key": measure_key(cfg),
            "run_dir": str(run_dir.resolve()), **git_state(), **versions(), **spec_tags(spec),
            **switch_tags(out.trace),
            **{f"unavailable.{k}": v[:TAG_CHARS] for k, v in results.unavailable.items()},
            **{f"provenance.{k}": str(v)  # e.g. the learned compressor's weights' sha256
               for k, v in out.trace.meta.get("provenance", {}).items()}}
    if parent:
        tags["mlflow.parentRunId"] = parent
    card = getattr(model, "card", None)
    if isinstance(card, Mapping):
        (run_dir / CARD).write_text(json.dumps(card, indent=1, sort_keys=True, default=str))
    uri, experiment = target(cfg)
    meta = {"run_name": run_dir.name, "run_key": tags["run_key"],
            "measure_key": tags["measure_key"], "tags": tags,
            "params": flatten(config), "created": time.time(),
            "tracking": {"uri": uri, "experiment": experiment}}
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return track_dir(run_dir)


#: The model spec's fields a run records as ``spec.<field>`` tags (the report's length marks
#: and block size come from these, never from the model's files).
SPEC_TAGS = ("train_frames", "block_frames", "latent_fps")


def spec_tags(spec: Any) -> dict[str, str]:
    """``spec.train_frames`` etc. of the model that made a run (none without a spec)."""
    if spec is None:
        return {}
    return {f"spec.{k}": str(getattr(spec, k)) for k in SPEC_TAGS if hasattr(spec, k)}


def switch_tags(trace: Any) -> dict[str, str]:
    """``switches``: the latent frames where the prompt schedule switched (none: no tag)."""
    frames = (getattr(trace, "meta", None) or {}).get("switches") or []
    text = ",".join(str(int(f)) for f in frames)
    return {"switches": text[:TAG_CHARS].rsplit(",", 1)[0] if len(text) > TAG_CHARS else text} \
        if frames else {}


def track_dir(run_dir: str | Path, uri: str | None = None,
              experiment: str | None = None) -> str | None:
    """Log a run directory; on failure warn, leave the marker and return None."""
    run_dir = Path(run_dir)
    try:
        return relog(run_dir, uri, experiment, force=True)
    except Exception as err:  # any store error: the results must survive it
        where = mask(uri or json.loads((run_dir / "meta.json").read_text())["tracking"]["uri"])
        why = mask(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        (run_dir / MARKER).write_text(f"{time.ctime()}\n{where}\n{why}\n")
        warnings.warn(f"could not log {run_dir} to the tracking store {where} ({why[:300]}); "
                      f"results are kept in {run_dir}; log them later with "
                      f"`rollbench relog {run_dir}`", TrackingWarning, stacklevel=2)
        return None


def _new_sqlite_store(uri: str) -> None:
    """Start a new sqlite store as a copy of a cached empty schema.

    MLflow builds a new store by replaying every schema migration, which takes seconds; the
    empty result is cached once per MLflow version under ``$XDG_CACHE_HOME/rollbench`` (default
    ``~/.cache/rollbench``). Any failure leaves the store to MLflow's own initialisation.
    """
    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if path is None or path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        import mlflow
        from mlflow.store.db.utils import _initialize_tables
        from sqlalchemy import create_engine

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rollbench"
        template = cache / f"mlflow-{mlflow.__version__}-empty.db"
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = template.with_suffix(f".{os.getpid()}.tmp")
            engine = create_engine(f"sqlite:///{tmp}")
            _initialize_tables(engine)
            engine.dispose()
            os.replace(tmp, template)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        try:  # create-if-absent, atomically: parallel workers never see a half-copied file
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    except Exception:  # MLflow initialises the store itself
        return


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` of the store at ``uri``.

    A server is probed first (:func:`check_store`: :class:`TrackingUnreachable` within the
    timeout, a ConfigError naming the extra when a database driver is missing); a new sqlite
    store starts from the cached empty schema. MLflow's own HTTP retries are capped (unless
    set in the environment) so a server lost mid-run fails in seconds, not minutes.
    """
    from mlflow.tracking import MlflowClient

    check_store(uri)
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout()))))
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _new_sqlite_store(uri)
    return MlflowClient(tracking_uri=database_url(uri))


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) if absent."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # created meanwhile by a parallel worker
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_run(run_dir: str | Path, uri: str, experiment: str) -> str:
    """Log a run directory (meta.json, metrics.json, artifacts) as one MLflow run."""
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    data = json.loads((run_dir / "metrics.json").read_text())
    client = open_client(uri)
    run = client.create_run(experiment_id(client, experiment, uri), run_name=meta["run_name"],
                            tags=meta["tags"])
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        rows = []
        for key, entry in data["metrics"].items():
            pairs = zip(entry["steps"], entry["values"], strict=True) if "steps" in entry \
                else [(0, entry["value"])]
            rows += [Metric(key, v, now, int(s)) for s, v in pairs if v is not None]
        params = [Param(k, v[:6000]) for k, v in meta["params"].items()]
        for a in range(0, len(params), 100):
            client.log_batch(run_id, params=params[a:a + 100])
        for a in range(0, len(rows), 1000):
            client.log_batch(run_id, metrics=rows[a:a + 1000])
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def relog(run_dir: str | Path, uri: str | None = None, experiment: str | None = None,
          force: bool = False) -> str:
    """Log a run directory written earlier (e.g. while the store was down).

    Uses the tracking target recorded in ``meta.json`` unless ``uri`` / ``experiment`` are
    given. A directory already logged there is not logged twice unless ``force``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "meta.json").is_file() or not (run_dir / "metrics.json").is_file():
        raise ValueError(f"{run_dir} is not a recorded run directory (no meta.json / "
                         "metrics.json)")
    target = json.loads((run_dir / "meta.json").read_text())["tracking"]
    uri, experiment = uri or target["uri"], experiment or target["experiment"]
    done = run_dir / LOGGED
    if done.is_file() and not force:
        prev = json.loads(done.read_text())
        if prev["uri"] == uri and prev["experiment"] == experiment:
            return prev["run_id"]
    run_id = log_run(run_dir, uri, experiment)
    done.write_text(json.dumps({"run_id": run_id, "uri": uri, "experiment": experiment}))
    (run_dir / MARKER).unlink(missing_ok=True)
    return run_id


def finished_run(key: str, uri: str, experiment: str = DEFAULT_EXPERIMENT) -> Any | None:
    """The FINISHED MLflow run with this run key (its tags say how it was measured), else
    None."""
    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], max_results=1,
                              filter_string=f"tags.run_key = '{key}' and "
                                            "attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def find_finished(key: str, uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Id of a FINISHED run with this run key (grids skip it), else None."""
    run = finished_run(key, uri, experiment)
    return run.info.run_id if run else None


def cmd_relog(args: Sequence[str]) -> int:
    """``rollbench relog DIR [uri=URI] [experiment=NAME] [force=true]``.

    DIR is a run directory, or a folder of them (every one marked TRACKING_FAILED is logged).
    """
    opts = dict(a.split("=", 1) for a in args if "=" in a)
    dirs = [Path(a) for a in args if "=" not in a]
    if not dirs:
        raise ValueError("rollbench relog needs a run directory (or a folder of them)")
    todo = []
    for d in dirs:
        marked = sorted(p.parent for p in d.glob(f"*/{MARKER}"))
        todo += [d] if (d / "meta.json").is_file() else marked
    if not todo:
        raise ValueError(f"no run directories to log under {', '.join(map(str, dirs))}")
    for d in todo:
        run_id = relog(d, opts.get("uri"), opts.get("experiment"),
                       force=opts.get("force", "false").lower() == "true")
        print(f"{d}: run {run_id}")
    return 0

