"""Planning and running the findings' jobs, the options of ``rollbench findings``, and the page
header's lines on how the runs were made (wall time, seeds, the pre-registration check: the
findings file's last commit against the commits the runs were made at).

Nothing here renders: the command (``toolkit.cli``) plans and runs through this module, then
hands the planned run keys to ``reports.findings``, which reads the stored runs by their tags.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from toolkit.errors import ConfigError
from toolkit.findings.spec import SPEC, Spec, load_spec

EXPERIMENT = "findings"


# --- running -------------------------------------------------------------------------------
@dataclass
class Job:
    arm: str
    seed: int
    cfg: DictConfig
    key: str = ""


def plan(spec: Spec, seeds: int, overrides: list[str] = ()) -> list[Job]:
    """One composed run config per (arm, seed); arms no test uses are left out."""
    from toolkit.runs.config import compose_config
    from toolkit.runs.tracking import run_key

    jobs = []
    # seed-major: a partial run still has complete pairs
    for seed in spec.prompts(seeds):
        for arm in spec.arms_used():
            cfg = compose_config([*spec.arms[arm], *overrides, f"seed={seed}",
                                  f"video.latent_frames={spec.latent_frames}",
                                  f"experiment_name={EXPERIMENT}", f"variant={arm}",
                                  "progress=false"])
            jobs.append(Job(arm, seed, cfg, run_key(cfg)))
    return jobs


def _run_one(cfg_yaml: str) -> dict[str, Any]:
    from toolkit.runs.jobs import describe, run_job

    try:
        return describe(run_job(OmegaConf.create(cfg_yaml)))
    except Exception as err:  # e.g. the store unreachable: reported, the other jobs go on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def open_store(cfg: DictConfig) -> None:
    """Create the tracking store and experiment once, before parallel workers write to it."""
    from toolkit.runs.tracking import experiment_id, open_client, target

    uri, experiment = target(cfg)
    experiment_id(open_client(uri), experiment, uri)


def keys_of(jobs: list[Job]) -> dict[tuple[str, int], str]:
    """``(arm, seed) -> run key`` of planned jobs: what the page looks up in the store."""
    return {(j.arm, j.seed): j.key for j in jobs}


def run_jobs(jobs: list[Job], workers: int = 1) -> list[dict[str, Any]]:
    """Run the jobs (finished ones are skipped), ``workers`` processes at a time, with progress.

    A failing job is recorded as a FAILED run and reported; the others go on.
    """
    from rich.progress import Progress

    from toolkit.terminal import console

    outcomes: list[dict[str, Any]] = []
    if jobs:
        open_store(jobs[0].cfg)
    with Progress(console=console, transient=False) as bar:
        task = bar.add_task("findings runs", total=len(jobs))

        def done(job: Job, out: dict[str, Any]) -> None:
            outcomes.append({"arm": job.arm, "seed": job.seed, **out})
            if out["status"] == "failed":
                console.print(f"[red]failed[/red] {job.arm} seed={job.seed}: {out['error']}")
            bar.advance(task)

        if workers <= 1:
            for job in jobs:
                done(job, _run_one(OmegaConf.to_yaml(job.cfg)))
            return outcomes
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, OmegaConf.to_yaml(j.cfg)): j for j in jobs}
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    return outcomes


# --- the command's options and bookkeeping ----------------------------------------------------
OPTIONS = {"seeds": "held-out prompts per arm (default: the file's)",
           "quick": "true: the file's quick seed count",
           "workers": "processes running jobs at once (default 1)",
           "out": "the page to write (default reports/FINDINGS.md)",
           "spec": "the findings file (default ablations/findings.yaml)",
           "render_only": "true: only re-render from the stored runs"}


@dataclass
class Invocation:
    """One ``rollbench findings`` command line, parsed and planned."""

    command: str
    spec: Spec
    seeds: int
    workers: int
    out: Path
    render_only: bool
    uri: str
    run_root: Path
    jobs: list[Job] = field(default_factory=list)

    @property
    def timing(self) -> Path:
        return timing_file(self.run_root, self.spec)


def _truth(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value!r}: allowed true or false")
    return value.lower() == "true"


def _whole(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: must be a whole number") from None


def prepare(args: list[str]) -> Invocation:
    """Parse ``rollbench findings [seeds=N|quick=true] [workers=N] [out=PATH] [spec=PATH]
    [render_only=true] [Hydra overrides for every run]`` and plan its jobs."""
    from toolkit.runs.config import compose_config
    from toolkit.runs.tracking import resolve_uri

    opts: dict[str, str] = {}
    overrides = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if key in OPTIONS and "=" in arg:
            opts[key] = arg.split("=", 1)[1]
        elif key in OPTIONS:
            raise ConfigError(f"{arg!r}: write {key}=VALUE ({OPTIONS[key]})")
        else:
            overrides.append(arg)
    spec = load_spec(opts.get("spec", SPEC))
    quick = _truth("quick", opts.get("quick", "false"))
    seeds = _whole("seeds", opts["seeds"]) if "seeds" in opts else (
        spec.quick_seeds if quick else spec.seeds)
    if seeds < 2:
        raise ConfigError(f"seeds={seeds}: paired tests need at least 2")
    workers = _whole("workers", opts.get("workers", "1"))
    if workers < 1:
        raise ConfigError(f"workers={workers}: must be >= 1")
    base = compose_config(overrides)  # a typo'd override fails here, before any run
    return Invocation(("rollbench findings " + " ".join(args)).strip(), spec, seeds, workers,
                      Path(opts.get("out", "reports/FINDINGS.md")),
                      _truth("render_only", opts.get("render_only", "false")),
                      resolve_uri(base.tracking.uri, base.run_root), Path(base.run_root),
                      plan(spec, seeds, overrides))


def execute(inv: Invocation, revision: str, started: float) -> list[dict[str, Any]]:
    """Run the planned jobs and record this invocation's wall time beside the run root."""
    import time

    outcomes = run_jobs(inv.jobs, inv.workers)
    inv.timing.parent.mkdir(parents=True, exist_ok=True)
    inv.timing.write_text(json.dumps({
        "command": inv.command, "revision": revision, "workers": inv.workers,
        "executed": sum(o["status"] == "finished" for o in outcomes),
        "reused": sum(o["status"] == "skipped" for o in outcomes),
        "wall_s": round(time.perf_counter() - started, 1)}, indent=1))
    return outcomes


def wall_line(wall: float, render_only: bool, last: dict[str, Any] | None) -> list[str]:
    """The wall-time line: this invocation's, and for a re-render the one that ran the jobs."""
    if last is None:
        return [f"- Wall time: {wall / 60:.1f} min (rendering only; no record of the runs' "
                "own invocation)"]
    ran = (f"{last['wall_s'] / 60:.1f} min on this machine for `{last['command']}` at "
           f"`{last['revision']}` ({last['executed']} runs executed, {last['reused']} reused "
           f"from the store, {last['workers']} worker(s))")
    if render_only:
        return [f"- Wall time: {ran}; this page re-rendered from the store in {wall:.0f} s"]
    return [f"- Wall time: {ran}"]


def timing_file(run_root: str | Path, spec: Spec) -> Path:
    """Where a run of ``spec`` records its wall time: one file per findings file, so that two
    findings files sharing a run root never show each other's time."""
    return Path(run_root) / f"{spec.path.stem}-run.json"


def seeds_line(inv: Invocation) -> str:
    """The page's line on the prompts and length of the runs."""
    prompts = inv.spec.prompts(inv.seeds)
    return (f"- Seeds: {inv.seeds} held-out prompts per arm (prompts {prompts[0]}..{prompts[-1]})"
            + (" (the quick variant)" if inv.seeds < inv.spec.seeds else "")
            + f"; {inv.spec.latent_frames} latent frames per run")


# --- pre-registration: the findings file's commit against the runs' ---------------------------
def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def _ok(cwd: Path, *args: str) -> bool:
    out = _git(cwd, *args)
    return out is not None and out.returncode == 0


def file_commit(path: str | Path) -> tuple[str, str] | None:
    """(hash, date) of the last commit that changed ``path`` (``git log -1 -- path``); None when
    no commit holds it (not committed, or not in a git repository)."""
    path = Path(path).resolve()
    out = _git(path.parent, "log", "-1", "--format=%H %cs", "--", path.name)
    if out is None or out.returncode or not out.stdout.strip():
        return None
    commit, date = out.stdout.split()
    return commit, date


def registration(path: str | Path, commits: Sequence[str], dirty: bool = False) -> list[str]:
    """The page's lines on the findings file's commit and the pre-registration check.

    The file counts as written before the runs when its last change is in the history of every
    commit the runs were made at (``git merge-base --is-ancestor``) and it has no uncommitted
    changes; anything else is said plainly: the file changed after the runs, uncommitted file
    or runs, runs made at different commits, a run commit this repository lacks.

    Args:
        path: the findings file.
        commits: the commits (hash or prefix) the runs were made at, one per run.
        dirty: some runs were made with uncommitted changes.
    """
    path = Path(path).resolve()
    got = file_commit(path)
    status = _git(path.parent, "status", "--porcelain", "--", path.name)
    edited = bool(status and status.returncode == 0 and status.stdout.strip())
    runs = sorted(set(commits))
    warn = []
    if got is None:
        line = f"- Findings file: `{path.name}`, not in any commit"
        warn.append("the findings file is not committed, so nothing shows it was written "
                    "before the runs")
    else:
        line = f"- Findings file: `{path.name}`, last changed in commit `{got[0][:12]}` ({got[1]})"
        if edited:
            warn.append("the findings file has uncommitted changes: the rules on this page are "
                        "not the committed ones")
        for run in runs:
            if run == "unknown" or not _ok(path.parent, "cat-file", "-e", f"{run}^{{commit}}"):
                warn.append(f"the runs' commit `{run}` is not in this repository: cannot check")
                continue
            if not _ok(path.parent, "merge-base", "--is-ancestor", got[0], run):
                warn.append(f"the findings file changed after the runs were made: its last "
                            f"change `{got[0][:12]}` is not in the history of the runs' commit "
                            f"`{run}`")
    if not runs:
        warn.append("no runs to check against")
    if len(runs) > 1:
        warn.append(f"the runs were made at {len(runs)} different commits ("
                    + ", ".join(f"`{r}`" for r in runs) + ")")
    if dirty:
        warn.append("some runs were made with uncommitted changes, which no commit records")
    if warn:
        check = "- Pre-registration: ⚠ " + "; ⚠ ".join(warn) + "."
    else:
        check = (f"- Pre-registration: the file's last change `{got[0][:12]}` is in the history "
                 f"of the runs' commit `{runs[0]}`: it was committed before the runs and has "
                 "not changed since.")
    return [line, check]
