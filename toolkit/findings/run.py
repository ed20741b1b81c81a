"""Planning and running the findings' jobs, the options of ``rollbench findings``, and the page
header's lines on how the runs were made (wall time, seeds). Each new run records the code its
verdicts depend on (``toolkit.findings.registration``, which also holds the pre-registration
check of the page).

The page renders from the committed findings file (``git show``): ``prepare`` refuses a file
with uncommitted changes unless ``draft=true`` (the page then says it is a draft). Quick runs
use their own prompts (``quick.first_seed``), pilot runs the pilot's (``pilot=true``), never
the confirmatory ones.

Nothing here renders: the command (``toolkit.cli``) plans and runs through this module, then
hands the planned run keys to ``reports.findings``, which reads the stored runs by their tags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from toolkit.errors import ConfigError
from toolkit.findings.registration import CODE_TAG, code_hashes, committed_spec
from toolkit.findings.spec import SPEC, Spec

EXPERIMENT = "findings"


# --- running -------------------------------------------------------------------------------
@dataclass
class Job:
    arm: str
    seed: int
    cfg: DictConfig
    key: str = ""


def plan(spec: Spec, seeds: int, overrides: list[str] = (), quick: bool = False,
         pilot: bool = False) -> list[Job]:
    """One composed run config per (arm, seed); arms no test uses are left out. ``quick``: the
    file's quick prompts, ``pilot``: its pilot's, each disjoint from the confirmatory ones."""
    from toolkit.runs.config import compose_config
    from toolkit.runs.tracking import run_key

    if pilot and spec.pilot is None:
        raise ConfigError(f"pilot=true: {spec.path.name} has no pilot block (first_seed, seeds, "
                          "sd, effect)")
    prompts = spec.pilot.prompts() if pilot else spec.prompts(seeds, quick)
    jobs = []
    # seed-major: a partial run still has complete pairs
    for seed in prompts:
        for arm in spec.arms_used():
            cfg = compose_config([*spec.arms[arm], *overrides, f"seed={seed}",
                                  f"video.latent_frames={spec.latent_frames}",
                                  f"experiment_name={EXPERIMENT}", f"variant={arm}",
                                  "progress=false"])
            jobs.append(Job(arm, seed, cfg, run_key(cfg)))
    return jobs


def _run_one(cfg_yaml: str, code: dict[str, str] | None = None) -> dict[str, Any]:
    from toolkit.runs.jobs import describe, run_job

    try:
        cfg = OmegaConf.create(cfg_yaml)
        out = describe(run_job(cfg))
        if out["status"] == "finished" and out.get("run_id") and code:
            tag_code(cfg, out["run_id"], code)
        return out
    except Exception as err:  # e.g. the store unreachable: reported, the other jobs go on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def tag_code(cfg: DictConfig, run_id: str, code: dict[str, str]) -> None:
    """Record on a finished run the hashes of the code its verdicts depend on."""
    from toolkit.runs.tracking import open_client, target

    client = open_client(target(cfg)[0])
    for rel, value in code.items():
        client.set_tag(run_id, CODE_TAG + rel, value)


def open_store(cfg: DictConfig) -> None:
    """Create the tracking store and experiment once, before parallel workers write to it."""
    from toolkit.runs.tracking import experiment_id, open_client, target

    uri, experiment = target(cfg)
    experiment_id(open_client(uri), experiment, uri)


def keys_of(jobs: list[Job]) -> dict[tuple[str, int], str]:
    """``(arm, seed) -> run key`` of planned jobs: what the page looks up in the store."""
    return {(j.arm, j.seed): j.key for j in jobs}


def run_jobs(jobs: list[Job], workers: int = 1,
             code: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run the jobs (finished ones are skipped), ``workers`` processes at a time, with progress;
    each new run records ``code`` (``code_hashes``) as ``code.*`` tags.

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
                done(job, _run_one(OmegaConf.to_yaml(job.cfg), code))
            return outcomes
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, OmegaConf.to_yaml(j.cfg), code): j for j in jobs}
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    return outcomes


# --- the command's options and bookkeeping ----------------------------------------------------
OPTIONS = {"seeds": "held-out prompts per arm (default: the file's)",
           "quick": "true: the file's quick seed count",
           "workers": "processes running jobs at once (default 1)",
           "out": "the page to write (default reports/FINDINGS.md)",
           "spec": "the findings file (default ablations/findings.yaml)",
           "render_only": "true: only re-render from the stored runs",
           "draft": "true: allow a findings file with uncommitted changes (a draft page)",
           "pilot": "true: run the file's pilot prompts and print the seeds its gate and "
                    "primary tests need (no page; out= a JSON of it)"}


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
    quick: bool = False
    draft: bool = False
    pilot: bool = False

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
    draft = _truth("draft", opts.get("draft", "false"))
    spec = committed_spec(opts.get("spec", SPEC), draft)
    quick = _truth("quick", opts.get("quick", "false"))
    pilot = _truth("pilot", opts.get("pilot", "false"))
    if pilot and (quick or "seeds" in opts):
        raise ConfigError("pilot=true runs the file's pilot block (its first_seed and seeds); "
                          "drop quick= and seeds=")
    seeds = _whole("seeds", opts["seeds"]) if "seeds" in opts else (
        spec.quick_seeds if quick else spec.pilot.seeds if pilot and spec.pilot
        else spec.seeds)
    if seeds < 2:
        raise ConfigError(f"seeds={seeds}: paired tests need at least 2")
    workers = _whole("workers", opts.get("workers", "1"))
    if workers < 1:
        raise ConfigError(f"workers={workers}: must be >= 1")
    base = compose_config(overrides)  # a typo'd override fails here, before any run
    inv = Invocation(("rollbench findings " + " ".join(args)).strip(), spec, seeds, workers,
                     Path(opts.get("out", "reports/FINDINGS.md")),
                     _truth("render_only", opts.get("render_only", "false")),
                     resolve_uri(base.tracking.uri, base.run_root), Path(base.run_root),
                     plan(spec, seeds, overrides, quick, pilot), quick, draft, pilot)
    if spec.statistics.rules == "margin":
        from toolkit.findings.power import reach_lines
        from toolkit.terminal import console

        for line in reach_lines(spec, seeds):
            console.print(f"[yellow]findings:[/yellow] {line}")
    return inv


def execute(inv: Invocation, revision: str, started: float) -> list[dict[str, Any]]:
    """Run the planned jobs (each recording the code hashes) and record this invocation's wall
    time beside the run root."""
    import time

    outcomes = run_jobs(inv.jobs, inv.workers, code_hashes(inv.spec))
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
    prompts = inv.spec.prompts(inv.seeds, inv.quick)
    line = (f"- Seeds: {inv.seeds} held-out prompts per arm (prompts {prompts[0]}..{prompts[-1]})"
            + (" (the quick variant, on its own prompts)" if inv.quick
               else " (fewer than the file's)" if inv.seeds < inv.spec.seeds else "")
            + f"; {inv.spec.latent_frames} latent frames per run")
    if inv.spec.pilot:
        from toolkit.findings.power import pilot_line

        line += ". " + pilot_line(inv.spec, inv.seeds)
    if inv.draft:
        line += ("\n- ⚠ DRAFT: rendered from a findings file with uncommitted changes "
                 "(draft=true): not pre-registered")
    return line
