"""``rollbench findings``: the paper's claims re-measured, each with a pre-stated verdict rule.

The experiment is ``ablations/findings.yaml``: arms (run configs), claims, and per claim the
tests (a measure, an arm, an optional paired baseline, the expected direction and a threshold).
This module loads and checks that file, plans and runs every (arm, seed) as a tracked job, turns
stored runs into per-run measures, and applies the verdict rules. ``reports.findings`` renders the
result; both read only the tracking store once the runs exist.

    spec = load_spec()                                   # ablations/findings.yaml
    jobs = plan(spec, seeds=8, overrides=["run_root=runs/findings"])
    run_jobs(jobs, workers=2)
    table = measure_runs(spec, jobs, uri)                # arm, seed, measure, window -> value
    results = [evaluate(test, table) for claim in spec.claims for test in claim.tests]
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from toolkit.aggregate import mean_ci
from toolkit.config import ConfigError

SPEC = Path(__file__).resolve().parent.parent / "ablations" / "findings.yaml"
EXPERIMENT = "findings"
ALPHA = 0.05
EXPECT = ("greater", "less", "within")
WINDOWS = ("first", "last", "drop")
#: Measures computed from a whole curve rather than a window of it.
WHOLE = {"kv_linearity": "kv_bytes", "kv_growth": "kv_bytes"}
VERDICTS = ("holds", "fails", "inconclusive")


# --- the experiment file -----------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One pre-stated comparison: ``arm`` (minus ``baseline``) on ``measure``, and its rule."""

    name: str
    measure: str
    arm: str
    expect: str
    baseline: str | None = None
    than: float = 0.0
    margin: float = 0.0

    @property
    def curve(self) -> str:
        """The logged curve the measure reads."""
        return WHOLE.get(self.measure) or self.measure.split("@", 1)[0]

    def at(self, window: str) -> str | None:
        """The same measure in another window (None for whole-curve and drop measures)."""
        if "@" not in self.measure or self.measure.endswith("@drop"):
            return None
        return f"{self.curve}@{window}"


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    paper: str
    tests: tuple[Check, ...]
    note: str = ""
    figures: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Spec:
    seeds: int
    latent_frames: int
    window: int
    quick_seeds: int
    arms: dict[str, list[str]]
    record: tuple[str, ...]
    claims: tuple[Claim, ...]
    path: Path = SPEC

    def arms_used(self) -> list[str]:
        """The arms some test or figure needs, in the file's order."""
        used = {a for c in self.claims for t in c.tests for a in (t.arm, t.baseline) if a}
        used |= {a for c in self.claims for f in c.figures for a in f.get("arms", [])}
        return [a for a in self.arms if a in used]


def _choice(what: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{what}={value!r} is not allowed.{hint} Allowed: {', '.join(allowed)}")


def check_measure(measure: str, where: str) -> None:
    """A measure is ``CURVE@first|last|drop`` of a logged curve metric, or a WHOLE one."""
    from toolkit.metrics import METRICS

    if measure in WHOLE:
        return
    if "@" not in measure:
        raise ConfigError(f"{where}: measure={measure!r}; use CURVE@{'|'.join(WINDOWS)} "
                          f"(e.g. fidelity@last) or one of {', '.join(WHOLE)}")
    curve, window = measure.split("@", 1)
    _choice(f"{where}: window of {measure!r}", window, WINDOWS)
    curves = [n for n, m in METRICS.items().items() if m.kind.startswith("curve")]
    _choice(f"{where}: curve of {measure!r}", curve.split("/", 1)[0], curves)


def load_spec(path: str | Path = SPEC) -> Spec:
    """Read and check the findings file: every name it uses exists, every rule is complete."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"findings file {path} does not exist")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    keys = ("seeds", "latent_frames", "window", "quick", "record", "arms", "claims")
    unknown = set(raw) - set(keys)
    if unknown:
        raise ConfigError(f"{path.name}: unknown keys {sorted(unknown)}; allowed: "
                          f"{', '.join(keys)}")
    arms = {str(k): [str(o) for o in v] for k, v in (raw.get("arms") or {}).items()}
    claims = []
    for c in raw.get("claims") or []:
        tests = []
        for t in c.get("tests") or []:
            where = f"claim {c.get('id')!r}, test {t.get('name')!r}"
            extra = set(t) - {f.name for f in Check.__dataclass_fields__.values()}
            if extra:
                raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
            test = Check(**{k: (float(v) if k in ("than", "margin") else v) for k, v in t.items()})
            _choice(f"{where}: expect", test.expect, EXPECT)
            for role in ("arm", "baseline"):
                if getattr(test, role) is not None:
                    _choice(f"{where}: {role}", getattr(test, role), list(arms))
            check_measure(test.measure, where)
            if test.margin < 0 or (test.expect == "within" and test.margin <= 0):
                raise ConfigError(f"{where}: margin={test.margin} must be >= 0 (> 0 for within)")
            tests.append(test)
        if not tests:
            raise ConfigError(f"claim {c.get('id')!r} has no tests")
        figures = tuple(c.get("figures") or ())
        for f in figures:
            for a in f.get("arms", []):
                _choice(f"claim {c['id']!r}: figure arm", a, list(arms))
        claims.append(Claim(id=c["id"], claim=c["claim"], paper=c.get("paper", ""),
                            note=c.get("note", ""), tests=tuple(tests), figures=figures))
    quick = raw.get("quick") or {}
    spec = Spec(seeds=int(raw.get("seeds", 8)), latent_frames=int(raw["latent_frames"]),
                window=int(raw["window"]), quick_seeds=int(quick.get("seeds", 3)), arms=arms,
                record=tuple(str(r) for r in raw.get("record") or ()),
                claims=tuple(claims), path=path)
    if spec.latent_frames < 2 * spec.window:
        raise ConfigError(f"latent_frames={spec.latent_frames} must be at least twice the "
                          f"window ({spec.window}) so the 1x and 24x windows do not overlap")
    return spec


# --- running -------------------------------------------------------------------------------
@dataclass
class Job:
    arm: str
    seed: int
    cfg: DictConfig
    key: str = ""


def plan(spec: Spec, seeds: int, overrides: list[str] = ()) -> list[Job]:
    """One composed run config per (arm, seed); arms no test uses are left out."""
    from toolkit.config import compose_config
    from toolkit.tracking import run_key

    jobs = []
    for seed in range(seeds):  # seed-major: a partial run still has complete pairs
        for arm in spec.arms_used():
            cfg = compose_config([*spec.arms[arm], *overrides, f"seed={seed}",
                                  f"video.latent_frames={spec.latent_frames}",
                                  f"experiment_name={EXPERIMENT}", f"variant={arm}",
                                  "progress=false"])
            jobs.append(Job(arm, seed, cfg, run_key(cfg)))
    return jobs


def _run_one(cfg_yaml: str) -> dict[str, Any]:
    from toolkit.jobs import describe, run_job

    try:
        return describe(run_job(OmegaConf.create(cfg_yaml)))
    except Exception as err:  # e.g. the store unreachable: reported, the other jobs go on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def open_store(cfg: DictConfig) -> None:
    """Create the tracking store and experiment once, before parallel workers write to it."""
    from toolkit.jobs import _where
    from toolkit.tracking import _client, _experiment

    uri, experiment = _where(cfg)
    _experiment(_client(uri), experiment, uri)


def run_jobs(jobs: list[Job], workers: int = 1) -> list[dict[str, Any]]:
    """Run the jobs (finished ones are skipped), ``workers`` processes at a time, with progress.

    A failing job is recorded as a FAILED run and reported; the others go on.
    """
    from rich.progress import Progress

    from toolkit.jobs import console

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


# --- measures --------------------------------------------------------------------------------
def window_mean(steps: np.ndarray, values: np.ndarray, start: int, stop: int) -> float:
    """Mean of a curve's finite values at steps in [start, stop) (NaN if none)."""
    pick = (steps >= start) & (steps < stop) & np.isfinite(values)
    return float(values[pick].mean()) if pick.any() else float("nan")


def whole_measure(name: str, steps: np.ndarray, values: np.ndarray) -> float:
    """kv_linearity (R^2 of a least-squares line) or kv_growth (last / half-way value)."""
    ok = np.isfinite(values)
    steps, values = steps[ok].astype(float), values[ok]
    if len(values) < 3:
        return float("nan")
    if name == "kv_linearity":
        total = float(((values - values.mean()) ** 2).sum())
        if total == 0:
            return 0.0  # a flat line: no growth at all, linear or otherwise
        fit = np.polyval(np.polyfit(steps, values, 1), steps)
        return 1.0 - float(((values - fit) ** 2).sum()) / total
    if name == "kv_growth":
        half = values[int(np.searchsorted(steps, steps[-1] / 2))]
        return float(values[-1] / half) if half else float("nan")
    raise ConfigError(f"unknown whole-curve measure {name!r}; allowed: {', '.join(WHOLE)}")


def measure_curve(measure: str, steps: np.ndarray, values: np.ndarray, frames: int,
                  window: int) -> float:
    """One measure of one run's curve (see ablations/findings.yaml for the definitions)."""
    if measure in WHOLE:
        return whole_measure(measure, steps, values)
    where = measure.split("@", 1)[1]
    first = window_mean(steps, values, 0, window)
    last = window_mean(steps, values, frames - window, frames)
    return {"first": first, "last": last, "drop": first - last}[where]


def measures_needed(spec: Spec) -> list[str]:
    """Every measure a test needs, with its 1x / 24x twins."""
    out: list[str] = []
    for claim in spec.claims:
        for t in claim.tests:
            for m in (t.measure, t.at("first"), t.at("last")):
                if m and m not in out:
                    out.append(m)
    return out


def measure_runs(spec: Spec, runs: pd.DataFrame, uri: str) -> pd.DataFrame:
    """Per finished run: arm, seed and every needed measure (columns), from logged curves.

    ``runs`` has ``run_id``, ``arm`` and ``seed`` columns (one row per run).
    """
    from toolkit.aggregate import curves

    needed = measures_needed(spec)
    names = sorted({WHOLE.get(m) or m.split("@", 1)[0] for m in needed})
    series = {name: curves(runs["run_id"], name, uri) for name in names}
    rows = []
    for run in runs.itertuples():
        row = {"arm": run.arm, "seed": int(run.seed), "run_id": run.run_id}
        for m in needed:
            steps, values = series[WHOLE.get(m) or m.split("@", 1)[0]][run.run_id]
            row[m] = measure_curve(m, steps, values, spec.latent_frames, spec.window) \
                if len(steps) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# --- statistics and verdicts -----------------------------------------------------------------
@dataclass
class Result:
    """A test's outcome: the per-seed values, mean, 95% CI, p-value, verdict and its reason."""

    test: Check
    values: np.ndarray
    mean: float
    low: float
    high: float
    p: float
    verdict: str
    reason: str
    at_1x: tuple[float, float, float] | None = None  # (mean, low, high) in the 1x window
    seeds: list[int] = field(default_factory=list)


def values_of(test: Check, table: pd.DataFrame, measure: str | None = None
              ) -> tuple[np.ndarray, list[int]]:
    """Per seed: the arm's measure, minus the baseline's of the same seed when there is one."""
    measure = measure or test.measure
    arm = table[table["arm"] == test.arm].set_index("seed")[measure]
    if test.baseline:
        base = table[table["arm"] == test.baseline].set_index("seed")[measure]
        both = arm.to_frame("a").join(base.to_frame("b"), how="inner")
        diff = (both["a"] - both["b"]).dropna()
        return diff.to_numpy(float), [int(s) for s in diff.index]
    arm = arm.dropna()
    return arm.to_numpy(float), [int(s) for s in arm.index]


def wilcoxon(d: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p of d against 0 (exact for small n); 1.0 when every d is 0."""
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative=alternative).pvalue)


def verdict(test: Check, mean: float, low: float, high: float, p: float,
            n: int) -> tuple[str, str]:
    """The pre-stated rule of ablations/findings.yaml applied to one test's statistics."""
    if n < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive", f"only {n} value(s): no confidence interval"
    x, m = test.than, test.margin
    if test.expect == "within":
        if x - m <= low and high <= x + m:
            return "holds", f"the CI lies inside {x:g} ± {m:g}"
        if high < x - m or low > x + m:
            return "fails", f"the CI lies outside {x:g} ± {m:g}"
        return "inconclusive", f"the CI straddles an edge of {x:g} ± {m:g}"
    sign = 1.0 if test.expect == "greater" else -1.0
    beyond = (low > x) if sign > 0 else (high < x)
    against = (high < x) if sign > 0 else (low > x)
    word = ">" if sign > 0 else "<"
    if m > 0 and x - m <= low and high <= x + m:
        return "fails", f"no effect worth the name: the CI lies inside {x:g} ± {m:g}"
    if beyond and p < ALPHA:
        return "holds", f"CI {word} {x:g} and p = {p:.2g} < {ALPHA}"
    if against and p < ALPHA:
        return "fails", f"the opposite effect: CI {'<' if sign > 0 else '>'} {x:g}, p = {p:.2g}"
    if beyond:
        return "inconclusive", f"CI {word} {x:g} but p = {p:.2g} >= {ALPHA}"
    if against:
        return "inconclusive", (f"CI {'<' if sign > 0 else '>'} {x:g} (the opposite direction) "
                                f"but p = {p:.2g} >= {ALPHA}")
    return "inconclusive", f"the CI includes {x:g}"


def evaluate(test: Check, table: pd.DataFrame) -> Result:
    """Values, mean with 95% CI, paired test and verdict of one test (plus its 1x effect)."""
    d, seeds = values_of(test, table)
    mean, low, high = mean_ci(d)
    if test.expect == "within":
        lo = wilcoxon(d - (test.than - test.margin), "greater")
        hi = wilcoxon(d - (test.than + test.margin), "less")
        p = max(lo, hi)
    else:
        p = wilcoxon(d - test.than)
    word, reason = verdict(test, mean, low, high, p, len(d))
    at_1x = None
    if test.at("first"):
        at_1x = mean_ci(values_of(test, table, test.at("first"))[0])
    return Result(test, d, mean, low, high, p, word, reason, at_1x, seeds)


def claim_verdict(results: list[Result]) -> str:
    """A claim holds if all its tests hold, fails if any fails, else is inconclusive."""
    words = [r.verdict for r in results]
    if all(w == "holds" for w in words):
        return "holds"
    if any(w == "fails" for w in words):
        return "fails" if not any(w == "holds" for w in words) else "partly holds"
    return "inconclusive"


# --- the command -----------------------------------------------------------------------------
OPTIONS = {"seeds": "held-out prompts per arm (default: the file's)",
           "quick": "true: the file's quick seed count",
           "workers": "processes running jobs at once (default 1)",
           "out": "the page to write (default reports/FINDINGS.md)",
           "spec": "the findings file (default ablations/findings.yaml)",
           "render_only": "true: only re-render from the stored runs"}


def _wall(wall: float, render_only: bool, last: dict[str, Any] | None) -> list[str]:
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


def _truth(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value!r}: allowed true or false")
    return value.lower() == "true"


def cmd_findings(args: list[str]) -> int:
    """``rollbench findings [seeds=N|quick=true] [workers=N] [out=PATH] [render_only=true]
    [Hydra overrides for every run, e.g. run_root=runs]``."""
    import time

    from reports.findings import analyse, provenance, write
    from toolkit.config import compose_config
    from toolkit.jobs import console
    from toolkit.tracking import git_state, resolve_uri

    start = time.perf_counter()
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
    seeds = int(opts["seeds"]) if "seeds" in opts else (spec.quick_seeds if quick
                                                          else spec.seeds)
    if seeds < 2:
        raise ConfigError(f"seeds={seeds}: paired tests need at least 2")
    workers = int(opts.get("workers", 1))
    if workers < 1:
        raise ConfigError(f"workers={workers}: must be >= 1")
    base = compose_config(overrides)  # a typo'd override fails here, before any run
    uri = resolve_uri(base.tracking.uri, base.run_root)
    jobs = plan(spec, seeds, overrides)
    git = git_state()
    head = git["git_revision"][:12] + (" (uncommitted changes)" if git["git_dirty"] == "true"
                                       else "")
    command = ("rollbench findings " + " ".join(args)).strip()
    timing = Path(base.run_root) / "findings-run.json"
    render_only = _truth("render_only", opts.get("render_only", "false"))
    if not render_only:
        console.print(f"findings: {len(jobs)} runs ({len(spec.arms_used())} arms x {seeds} "
                      f"seeds, {spec.latent_frames} latent frames), {workers} worker(s); "
                      f"tracking {uri}")
        outcomes = run_jobs(jobs, workers)
        executed = sum(o["status"] == "finished" for o in outcomes)
        timing.parent.mkdir(parents=True, exist_ok=True)
        timing.write_text(json.dumps({
            "command": command, "revision": head, "workers": workers, "executed": executed,
            "reused": sum(o["status"] == "skipped" for o in outcomes),
            "wall_s": round(time.perf_counter() - start, 1)}, indent=1))
    findings = analyse(spec, jobs, uri)
    wall = time.perf_counter() - start
    header = [f"- Command: `{command}`", f"- Git revision: `{head}`", *_wall(
        wall, render_only, json.loads(timing.read_text()) if timing.exists() else None),
              *provenance(findings, head),
              f"- Seeds: {seeds} held-out prompts per arm"
              + (" (the quick variant)" if seeds < spec.seeds else "")
              + f"; {spec.latent_frames} latent frames per run"]
    out = write(findings, Path(opts.get("out", "reports/FINDINGS.md")), header)
    console.print(f"findings: {out} ({wall / 60:.1f} min)")
    for claim in spec.claims:
        console.print(f"  {claim.id}: {claim_verdict(findings.results[claim.id])}")
    return 0 if not findings.missing else 1
