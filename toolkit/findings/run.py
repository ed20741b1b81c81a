"""Planning and running the findings' jobs, the options of ``rollbench findings``, and the page
header's lines on how the runs were made (wall time, seeds, the pre-registration check: the
findings file's last commit against the commits the runs were made at, its commit history, and
the code that decides the verdicts: ``code_hashes``, recorded on every run as ``code.*`` tags
and compared by the page).

The page renders from the committed findings file (``git show``): ``prepare`` refuses a file
with uncommitted changes unless ``draft=true`` (the page then says it is a draft). Quick runs
use their own prompts (``quick.first_seed``), never the confirmatory ones.

Nothing here renders: the command (``toolkit.cli``) plans and runs through this module, then
hands the planned run keys to ``reports.findings``, which reads the stored runs by their tags.
"""

from __future__ import annotations

import hashlib
import inspect
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
ROOT = Path(__file__).resolve().parents[2]
#: The findings code that turns stored curves into verdicts (hashed on every run).
VERDICT_CODE = ("toolkit/findings/spec.py", "toolkit/findings/measures.py",
                "toolkit/findings/inference.py", "toolkit/findings/stats.py")
CODE_TAG = "code."


# --- the code a page's verdicts depend on ----------------------------------------------------
def metric_modules(spec: Spec) -> list[str]:
    """The source files (relative to the repository) of the metrics the file's measures read."""
    from toolkit.metrics import METRICS

    names = {c.split("/", 1)[0] for cl in spec.claims for t in cl.tests
             for c in t.parsed.curves}
    files = set()
    for name in names:
        source = inspect.getsourcefile(METRICS.get(name).fn)
        if source:
            path = Path(source).resolve()
            files.add(path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT)
                      else path.name)
    return sorted(files)


def digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()[:16]


def code_hashes(spec: Spec, root: Path = ROOT) -> dict[str, str]:
    """sha256 (16 hex digits) of the verdict code and of the metric modules the file's measures
    read, by path relative to the repository, as they are now on disk."""
    return {rel: digest((root / rel).read_bytes()) for rel in
            [*VERDICT_CODE, *metric_modules(spec)] if (root / rel).exists()}


def committed_hashes(commit: str, files: Sequence[str], root: Path = ROOT) -> dict[str, str]:
    """The same hashes of ``files`` as committed in ``commit`` (``git show``); a file the
    commit lacks is left out."""
    out = {}
    for rel in files:
        try:
            got = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=root,
                                 capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if got.returncode == 0:
            out[rel] = digest(got.stdout)
    return out


def code_check(recorded: Sequence[dict[str, str]], current: dict[str, str],
               at_spec: dict[str, str] | None = None) -> list[str]:
    """The page's line on the code: every run's recorded hashes against the code rendering the
    page (and against the code committed with the findings file, when given).

    Args:
        recorded: per run, its ``code.*`` tags (path -> hash); empty for runs that made none.
        current: ``code_hashes`` now.
        at_spec: the same files as committed with the findings file's last change.
    """
    warn = []
    missing = sum(not r for r in recorded)
    if missing:
        warn.append(f"{missing} of {len(recorded)} runs recorded no code hashes (made before "
                    "they were recorded): the code that made them cannot be checked")
    for rel, now in current.items():
        seen = sorted({r[rel] for r in recorded if r and rel in r})
        if len(seen) > 1:
            warn.append(f"`{rel}` differs between runs ({', '.join(seen)})")
        elif seen and seen[0] != now:
            warn.append(f"`{rel}` changed after the runs (runs: {seen[0]}, now: {now})")
        if at_spec is not None and rel in at_spec and seen and at_spec[rel] not in seen:
            warn.append(f"`{rel}` changed between the findings file's commit and the runs "
                        f"(committed with the file: {at_spec[rel]}, runs: {seen[0]})")
    files = ", ".join(f"`{Path(r).name}` {h}" for r, h in current.items())
    if warn:
        return ["- Code: ⚠ " + "; ⚠ ".join(warn) + f". Now: {files}."]
    return [f"- Code: the verdict code and the metric modules the measures read are those the "
            f"runs recorded ({files})."]


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


def committed_spec(path: str | Path, draft: bool = False) -> Spec:
    """The findings file as committed (``git show`` of its last commit), so the page renders
    the pre-registered rules; with uncommitted changes (or no commit) a ConfigError, unless
    ``draft`` (then the working copy)."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"findings file {path} does not exist")
    got = file_commit(path)
    status = _git(path.parent, "status", "--porcelain", "--", path.name)
    edited = got is None or bool(status and status.returncode == 0 and status.stdout.strip())
    if edited and not draft:
        raise ConfigError(f"findings file {path.name} has uncommitted changes (or is in no "
                          "commit): a findings page renders the committed rules; commit it, "
                          "or pass draft=true for a page marked as a draft")
    if edited:
        return load_spec(path)
    top = _git(path.parent, "rev-parse", "--show-toplevel")
    rel = path.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    text = _git(path.parent, "show", f"{got[0]}:{rel}")
    if text is None or text.returncode:
        raise ConfigError(f"cannot read {rel} as committed in {got[0][:12]} (git show failed)")
    return load_spec(path, text.stdout)


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
    return [line, check, *history(path)]


def history(path: str | Path, most: int = 20) -> list[str]:
    """The findings file's commits, newest first (``git log --follow``), as page lines."""
    path = Path(path).resolve()
    out = _git(path.parent, "log", "--follow", f"-{most}", "--format=%h %cs %s", "--",
               path.name)
    if out is None or out.returncode or not out.stdout.strip():
        return []
    return ["- Findings file history (newest first):",
            *[f"  - `{ln.split(' ', 2)[0]}` {ln.split(' ', 2)[1]}: "
              f"{ln.split(' ', 2)[2] if ln.count(' ') > 1 else ''}"
              for ln in out.stdout.strip().splitlines()]]
