"""Per-run measures from logged curves, and each check's statistics and verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from toolkit.aggregate import mean_ci
from toolkit.config import ConfigError
from toolkit.findings.spec import WHOLE, Check, Spec

ALPHA = 0.05


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
