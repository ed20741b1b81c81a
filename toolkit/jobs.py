"""One job = one tracked rollout: the unit ``run``, ``grid`` and ``sweep`` all execute.

A job's identity is its run key (a hash of the resolved config). A job whose key already has a
FINISHED run in the tracking store is skipped; a job that fails is recorded as a FAILED run
(with the error) and reported, never raised to the caller, so a grid goes on.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from toolkit.rollout import Rollout, RolloutError, rollout

console = Console()


@dataclass
class JobResult:
    """What became of a job: ``finished``, ``skipped`` (already done) or ``failed``."""

    status: str
    run_key: str
    run_id: str | None = None
    run_dir: Path | None = None
    error: str | None = None
    scalars: dict[str, float] = field(default_factory=dict)
    rollout: Rollout | None = None


def default_prompts(model, cfg) -> list:
    """The prompt of a run: the config's (one prompt, or a schedule of ``[frame, prompt]``
    pairs, see ``toolkit.schedule``), else the model's own default for the seed."""
    from toolkit.schedule import PromptSchedule

    if cfg.prompt is not None:
        schedule = PromptSchedule.of(cfg.prompt)
        return [schedule if len(schedule.segments) > 1 else schedule.segments[0][1]]
    pick = getattr(model, "default_prompt", None)
    return [pick(cfg.seed) if pick else f"seed {cfg.seed}"]


def save_rollout(out: Rollout, cfg, run_dir: Path) -> None:
    """Write config, trace, latents and (when decoded) mp4 + filmstrip under run_dir."""
    from toolkit.media import filmstrip, write_mp4

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    out.trace.save(run_dir / "trace.json")
    torch.save(out.latents.cpu(), run_dir / "latents.pt")
    if out.frames is not None:
        video = out.frames[0]
        write_mp4(video, run_dir / "video.mp4")
        step = max(1, len(video) // 16)
        filmstrip([video[::step][:16]], run_dir / "filmstrip.png")


def summary(out: Rollout, seconds: float) -> Table:
    blocks = out.trace.blocks
    tenth = max(1, len(blocks) // 10)
    first = sum(sum(b.seconds.values()) for b in blocks[:tenth]) / tenth
    last = sum(sum(b.seconds.values()) for b in blocks[-tenth:]) / tenth
    peak = max(b.total_bytes for b in blocks)
    table = Table(title=f"rollout: {out.trace.strategy}")
    for col in ("blocks", "frames", "wall s", "ms/block first 10%", "ms/block last 10%",
                "last/first", "peak KV MiB", "partitions at end"):
        table.add_column(col)
    parts = ", ".join(f"{k}={v / 2**20:.2f}" for k, v in blocks[-1].bytes.items())
    table.add_row(str(len(blocks)), str(out.latents.shape[2]), f"{seconds:.1f}",
                  f"{first * 1e3:.1f}", f"{last * 1e3:.1f}", f"{last / first:.2f}",
                  f"{peak / 2**20:.2f}", parts)
    return table


def _where(cfg: DictConfig) -> tuple[str, str]:
    from toolkit.tracking import DEFAULT_EXPERIMENT, resolve_uri

    track = cfg.get("tracking") or {}
    return (resolve_uri(track.get("uri"), cfg.run_root),
            track.get("experiment") or DEFAULT_EXPERIMENT)


def scalars_of(run_dir: Path) -> dict[str, float]:
    """Scalar metrics a finished job wrote (metrics.json), by name."""
    data = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return {k: v["value"] for k, v in data.items() if "value" in v and v["value"] is not None}


def record_failure(cfg: DictConfig, key: str, error: str, parent: str | None = None) -> str:
    """A FAILED MLflow run holding the error, so a grid's record shows the failure."""
    from toolkit.config import strategy_label
    from toolkit.tracking import _client, _experiment

    uri, experiment = _where(cfg)
    client = _client(uri)
    tags = {"run_key": key, "strategy": strategy_label(cfg.strategy),
            "variant": str(cfg.get("variant") or strategy_label(cfg.strategy)),
            "error": error[-4000:]}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(_experiment(client, experiment, uri), tags=tags)
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def run_job(cfg: DictConfig, verbose: bool = False, skip_finished: bool = True,
            parent: str | None = None, built: tuple[Any, Any] | None = None,
            callbacks: tuple = ()) -> JobResult:
    """Build, roll out, save locally, compute metrics and track one config.

    Args:
        cfg: a composed run config.
        verbose: print the rollout summary table.
        skip_finished: return ``skipped`` when the run key already finished.
        parent: MLflow run id to nest this run under (a sweep's study run).
        built: the (model, strategy) of cfg when the caller already built them.
        callbacks: called with each block's record during the rollout (e.g. pruning).
    """
    from toolkit.config import build
    from toolkit.tracking import find_finished, record_run, run_key

    key = run_key(cfg)
    uri, experiment = _where(cfg)
    if skip_finished:
        done = find_finished(key, uri, experiment)
        if done:
            return JobResult("skipped", key, run_id=done)
    run_dir = Path(cfg.run_root) / "rollouts" / f"{key[:12]}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        model, strategy = built or build(cfg)
        prompts = default_prompts(model, cfg)
        start = time.perf_counter()
        out = rollout(model, strategy, prompts, cfg.video.latent_frames, seed=cfg.seed,
                      progress=cfg.progress, callbacks=callbacks)
        save_rollout(out, cfg, run_dir)
        if verbose:
            console.print(summary(out, time.perf_counter() - start))
        run_id = record_run(out, cfg, run_dir, model=model, prompt=prompts[0], parent=parent)
        return JobResult("finished", key, run_id, run_dir, scalars=scalars_of(run_dir),
                         rollout=out)
    except Exception as err:  # recorded, never lost: the grid or sweep goes on
        if isinstance(err, RolloutError):
            run_dir.mkdir(parents=True, exist_ok=True)
            err.trace.save(run_dir / "trace.partial.json")
        message = f"{type(err).__name__}: {err}"
        if verbose:
            console.print(f"[red]job failed:[/red] {message}")
        try:
            run_id = record_failure(cfg, key, message + "\n" + traceback.format_exc(), parent)
        except Exception:  # the store itself is unreachable: the error stays local
            run_id = None
        if type(err).__name__ == "TrialPruned":  # a sweep's pruner stopped it: re-raise
            raise
        return JobResult("failed", key, run_id, run_dir, error=message)


def describe(result: JobResult) -> dict[str, Any]:
    return {"status": result.status, "run_key": result.run_key[:12], "run_id": result.run_id,
            "error": result.error}
