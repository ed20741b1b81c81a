"""One job = one tracked rollout: the unit ``run``, ``grid`` and ``sweep`` all execute.

A job's identity is its run key (a hash of the resolved config). A job whose key already has a
FINISHED run in the tracking store is skipped when that run was measured as the config says
(its measure key, ``toolkit.runs.identity``), else re-measured: its saved latents are decoded
and its trace read back, the measures computed and logged as a new run in place of the old one,
without rolling out again. A key is claimed before it is computed (``toolkit.runs.claims``),
so two processes never compute (or re-measure) it at once. A job that fails is recorded as a
FAILED run (with the error) and reported, never raised to the caller, so a grid goes on.
"""

from __future__ import annotations

import json
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from toolkit.compat import moved_names
from toolkit.terminal import console, print_table

if TYPE_CHECKING:
    from toolkit.core.rollout import Rollout


@dataclass
class JobResult:
    """What became of a job: ``finished``, ``skipped`` (already done), ``remeasured`` (done,
    measured again from its saved rollout), ``busy`` (another process is computing its run
    key) or ``failed``."""

    status: str
    run_key: str
    run_id: str | None = None
    run_dir: Path | None = None
    error: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    rollout: Rollout | None = None


def default_prompts(model, cfg) -> list:
    """The prompt of a run: the config's (one prompt, or a schedule of ``[frame, prompt]``
    pairs, see ``toolkit.core.schedule``), else the model's own default for the seed."""
    from toolkit.core.schedule import PromptSchedule

    if cfg.prompt is not None:
        schedule = PromptSchedule.of(cfg.prompt)
        return [schedule if len(schedule.segments) > 1 else schedule.segments[0][1]]
    pick = getattr(model, "default_prompt", None)
    return [pick(cfg.seed) if pick else f"seed {cfg.seed}"]


def save_rollout(out: Rollout, cfg, run_dir: Path) -> None:
    """Write config, trace, latents and (when decoded) mp4 + filmstrip under run_dir."""
    import torch

    from toolkit.runs.media import filmstrip, write_mp4

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    out.trace.save(run_dir / "trace.json")
    torch.save(out.latents.cpu(), run_dir / "latents.pt")
    if out.frames is not None:
        video = out.frames[0]
        write_mp4(video, run_dir / "video.mp4")
        step = max(1, len(video) // 16)
        filmstrip([video[::step][:16]], run_dir / "filmstrip.png")


@dataclass(frozen=True)
class Summary:
    """The numbers of one rollout's summary line (times in seconds, bytes in bytes)."""

    blocks: int
    frames: int
    wall_s: float
    first_s: float   # mean seconds per block over the first 10% of blocks
    last_s: float    # ... and over the last 10%
    peak_bytes: int
    end_bytes: dict[str, int]  # bytes per partition after the last block

    @property
    def growth(self) -> float:
        """Block time at the end over block time at the start (1 = flat)."""
        return self.last_s / self.first_s if self.first_s else float("nan")


def summarise(out: Rollout, seconds: float) -> Summary:
    """The summary numbers of a rollout that took ``seconds`` of wall time."""
    blocks = out.trace.blocks
    tenth = max(1, len(blocks) // 10)
    first = sum(sum(b.seconds.values()) for b in blocks[:tenth]) / tenth
    last = sum(sum(b.seconds.values()) for b in blocks[-tenth:]) / tenth
    return Summary(len(blocks), int(out.latents.shape[2]), seconds, first, last,
                   max(b.total_bytes for b in blocks), dict(blocks[-1].bytes))


def print_summaries(title: str, rows: list[tuple[str, Summary]]) -> None:
    """Print rollout summaries as a terminal table, one row per (label, numbers)."""
    cols = ("strategy", "blocks", "frames", "wall s", "ms/block first 10%",
            "ms/block last 10%", "last/first", "peak KV MiB", "partitions at end (MiB)")
    body = [(label, str(s.blocks), str(s.frames), f"{s.wall_s:.1f}", f"{s.first_s * 1e3:.1f}",
             f"{s.last_s * 1e3:.1f}", f"{s.growth:.2f}", f"{s.peak_bytes / 2**20:.2f}",
             ", ".join(f"{k}={v / 2**20:.2f}" for k, v in s.end_bytes.items()))
            for label, s in rows]
    print_table(title, cols, body, optional=("partitions at end (MiB)", "frames", "wall s"))


def world_line(model: Any, prompt: Any, scalars: dict[str, float]) -> str | None:
    """What the run's world says about a finished run's scalars (``World.summary``), if any."""
    from toolkit.plugins import world_of

    world = world_of(model, prompt)
    return world.summary(scalars) if world is not None and world.summary else None


def _print_lines(model: Any, prompt: Any, scalars: dict[str, float], verbose: bool) -> None:
    """A finished run's quality line and its world's line (``verbose`` only)."""
    if not verbose:
        return
    console.print(quality_line(scalars), soft_wrap=True, markup=False)
    line = world_line(model, prompt, scalars)
    if line:
        console.print(line, soft_wrap=True, markup=False)


#: A run's quality line: (metric, label) in order; the first present decides the line's kind.
QUALITY = (("fidelity_start", "prompt fidelity start"), ("fidelity_end", "end"),
           ("fidelity_mean", "mean"), ("start_end_fidelity_drop", "drop"), ("vde", "vde"),
           ("clip_drift_end", "CLIP drift at the end"),
           ("subject_consistency_score", "subject consistency"),
           ("dynamic_degree", "dynamic degree"))


def quality_line(scalars: dict[str, float]) -> str:
    """One line of a run's quality measures that it has (prompt fidelity at the start and end,
    its mean, drop and vde on the world; CLIP and consistency on real videos), or a line saying
    none was computed."""
    parts = [f"{label} {scalars[key]:.2f}" for key, label in QUALITY
             if key in scalars and scalars[key] == scalars[key]]
    return "quality: " + (", ".join(parts) if parts else "no quality measure computed (see "
                          "metrics.json's unavailable)")


def scalars_of(run_dir: Path) -> dict[str, float]:
    """Scalar metrics a finished job wrote (metrics.json), by name."""
    data = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return {k: v["value"] for k, v in data.items() if "value" in v and v["value"] is not None}


def record_failure(cfg: DictConfig, key: str, error: str, parent: str | None = None) -> str:
    """A FAILED MLflow run holding the error, so a grid's record shows the failure."""
    from toolkit.runs.config import run_label, strategy_label
    from toolkit.runs.tracking import experiment_id, open_client, target

    uri, experiment = target(cfg)
    client = open_client(uri)
    tags = {"run_key": key, "strategy": strategy_label(cfg.strategy),
            "variant": str(cfg.get("variant") or run_label(cfg)),
            "error": error[-4000:]}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id(client, experiment, uri), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def finished_twin(key: str, uri: str, experiment: str) -> Any | None:
    """The FINISHED MLflow run of ``key`` (its tags say how it was measured); None when there
    is none, or the store cannot tell."""
    from toolkit.runs.stores import TrackingUnreachable
    from toolkit.runs.tracking import finished_run

    try:
        return finished_run(key, uri, experiment)
    except TrackingUnreachable as err:  # cannot tell: run it, keep the results on disk
        warnings.warn(f"{err}; running the job without checking for a finished twin",
                      stacklevel=3)
        return None


def _measured_as(done: Any | None, cfg: DictConfig) -> bool:
    """Whether a finished run answers ``cfg`` as it is: measured with its measure key."""
    from toolkit.runs.identity import measure_key

    return done is not None and done.data.tags.get("measure_key") == measure_key(cfg)


def stored_scalars(run_id: str, uri: str) -> dict[str, float]:
    """The scalar metrics a stored run logged, by name (a finished twin's, for sweeps)."""
    from toolkit.runs.aggregate import _is_scalar
    from toolkit.runs.tracking import open_client

    metrics = open_client(uri).get_run(run_id).data.metrics
    return {k: float(v) for k, v in metrics.items() if _is_scalar(k)}


def _skip(key: str, uri: str, done: Any) -> JobResult:
    """A skipped job carrying its finished twin's scalars (a sweep's objective reads them)."""
    try:
        scalars = stored_scalars(done.info.run_id, uri)
    except Exception:  # the summary line of a skipped job never needs them
        scalars = {}
    return JobResult("skipped", key, run_id=done.info.run_id, scalars=scalars)


def run_job(cfg: DictConfig, verbose: bool = False, skip_finished: bool = True,
            parent: str | None = None, built: tuple[Any, Any] | None = None,
            callbacks: tuple = (), wait: bool = False) -> JobResult:
    """Build, roll out, save locally, compute metrics and track one config.

    The job first claims its run key in the run store (``toolkit.runs.claims``): a key that another
    live process is computing is not computed twice (``busy``; with ``wait``, the job waits
    for it and answers from the stored run).

    Args:
        cfg: a composed run config.
        verbose: print the rollout summary table.
        skip_finished: return ``skipped`` (with the stored run's scalars) when the run key
            already finished, measured as ``cfg`` says; measured otherwise, it is re-measured
            from its saved rollout (``remeasured``).
        parent: MLflow run id to nest this run under (a sweep's study run).
        built: the (model, strategy) of cfg when the caller already built them.
        callbacks: called with each block's record during the rollout (e.g. pruning).
        wait: when another process holds the key, wait for it instead of returning ``busy``.
    """
    from toolkit.runs.claims import claim, holder, wait_free
    from toolkit.runs.identity import run_key
    from toolkit.runs.tracking import target

    key = run_key(cfg)
    uri, experiment = target(cfg)
    done = finished_twin(key, uri, experiment) if skip_finished else None
    if _measured_as(done, cfg):
        return _skip(key, uri, done)
    held = claim(cfg.run_root, key)
    while held is None:
        who = holder(cfg.run_root, key)
        if not wait:
            return JobResult("busy", key, error=f"run key {key[:12]} is being computed by "
                                                f"{who or 'another process'}")
        wait_free(cfg.run_root, key)
        done = finished_twin(key, uri, experiment) if skip_finished else None
        if _measured_as(done, cfg):
            return _skip(key, uri, done)
        held = claim(cfg.run_root, key)
    try:
        done = finished_twin(key, uri, experiment) if skip_finished else None
        if _measured_as(done, cfg):  # finished by another process between the look and claim
            return _skip(key, uri, done)
        if done is not None and _saved(done):  # measured otherwise: measure it again
            return remeasure(done, cfg, built, verbose)
        return _run_claimed(cfg, key, verbose, parent, built, callbacks, done)
    finally:
        held.release()


def _run_claimed(cfg: DictConfig, key: str, verbose: bool, parent: str | None,
                 built: tuple[Any, Any] | None, callbacks: tuple,
                 done: Any | None = None) -> JobResult:
    """Roll out, save and record a claimed key; ``done``: a finished run of the key measured
    otherwise whose rollout is not on this machine (deleted once the new run is recorded)."""
    from toolkit.core.rollout import RolloutError, rollout
    from toolkit.runs.config import build, build_codec
    from toolkit.runs.stores import mask
    from toolkit.runs.tracking import open_client, record_run, target

    uri = target(cfg)[0]
    run_dir = Path(cfg.run_root) / "rollouts" / f"{key[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        model, strategy = built or build(cfg)
        prompts = default_prompts(model, cfg)
        start = time.perf_counter()
        codec = build_codec(cfg)
        out = rollout(model, strategy, prompts, cfg.video.latent_frames, seed=cfg.seed,
                      progress=cfg.progress, callbacks=callbacks,
                      recache=str(cfg.get("recache") or "none"), codec=codec)
        save_rollout(out, cfg, run_dir)
        if verbose:
            label = out.trace.strategy + (f" + {codec.label()}" if codec else "")
            print_summaries(f"rollout: {label}", [
                (label, summarise(out, time.perf_counter() - start))])
        run_id = record_run(out, cfg, run_dir, model=model, prompt=prompts[0], parent=parent)
        if done is not None and run_id is not None:  # measured otherwise, its rollout not here
            open_client(uri).delete_run(done.info.run_id)
        scalars = scalars_of(run_dir)
        _print_lines(model, prompts[0], scalars, verbose)
        return JobResult("finished", key, run_id, run_dir, scalars=scalars, rollout=out)
    except Exception as err:  # recorded, never lost: the grid or sweep goes on
        if isinstance(err, RolloutError):
            run_dir.mkdir(parents=True, exist_ok=True)
            err.trace.save(run_dir / "trace.partial.json")
        message = mask(f"{type(err).__name__}: {err}")
        if verbose:
            console.print(f"[red]job failed:[/red] {message}")
        try:
            run_id = record_failure(cfg, key, message + "\n" + traceback.format_exc(), parent)
        except Exception:  # the store itself is unreachable: the error stays local
            run_id = None
        if type(err).__name__ == "TrialPruned":  # a sweep's pruner stopped it: re-raise
            raise
        return JobResult("failed", key, run_id, run_dir, error=message)


def _saved(run: Any) -> Path | None:
    """The run directory of a stored run when its latents and trace are on this machine."""
    folder = Path(run.data.tags.get("run_dir") or "/nonexistent")
    return folder if (folder / "latents.pt").is_file() and (folder / "trace.json").is_file() \
        else None


def remeasure(done: Any, cfg: DictConfig, built: tuple[Any, Any] | None = None,
              verbose: bool = False) -> JobResult:
    """Measure a finished run again as ``cfg`` says, from its saved rollout: the latents are
    decoded by the model's VAE (as the rollout decoded them), the trace is read back, the
    metrics are computed and the directory is logged as a new run; the old MLflow run is then
    deleted, so the store keeps one finished run per key. The rollout is not run again."""
    import torch

    from toolkit.core.rollout import Rollout
    from toolkit.core.trace import Trace
    from toolkit.runs.config import build
    from toolkit.runs.identity import run_key
    from toolkit.runs.stores import mask
    from toolkit.runs.tracking import open_client, record_run, target

    key, run_dir = run_key(cfg), _saved(done)
    try:
        model, _ = built or build(cfg)
        latents = torch.load(run_dir / "latents.pt")
        frames = model.vae.decode(latents.to(model.device)) if model.vae is not None else None
        out = Rollout(latents, frames, Trace.load(run_dir / "trace.json"))
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        prompt = default_prompts(model, cfg)[0]
        run_id = record_run(out, cfg, run_dir, model=model, prompt=prompt,
                            parent=done.data.tags.get("mlflow.parentRunId"))
        if run_id is not None:
            open_client(target(cfg)[0]).delete_run(done.info.run_id)
    except Exception as err:  # recorded like a failed job: the grid goes on
        message = mask(f"{type(err).__name__}: {err}")
        if verbose:
            console.print(f"[red]re-measuring {run_dir} failed:[/red] {message}")
        return JobResult("failed", key, done.info.run_id, run_dir, error=message)
    scalars = scalars_of(run_dir)
    _print_lines(model, prompt, scalars, verbose)
    return JobResult("remeasured", key, run_id, run_dir, scalars=scalars, rollout=out)


def describe(result: JobResult) -> dict[str, Any]:
    return {"status": result.status, "run_key": result.run_key[:12], "run_id": result.run_id,
            "error": result.error}


__getattr__ = moved_names(__name__)  # names that moved to a world (toolkit.compat)
