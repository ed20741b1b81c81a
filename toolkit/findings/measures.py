"""Per-run measures of the findings, from logged curves and scalars (syntax: ``spec.py``).

A ``paired`` measure (``CURVE@paired``) is kept per run as its (steps, values) and compared
between two arms by :func:`paired_values`.

Windows of latent frames, for a run of ``frames`` frames and a 1x ``window``: ``first`` =
[0, window), ``last`` = [frames - window, frames), ``whole`` and ``binsK`` = [window, frames).
A curve's value at step s belongs to a window when s lies in it. A derived ratio
(``boundary_ratio``, ``event_jump``, ``quiet_jump``) divides the mean of its numerator over the
blocks that START inside the window after its first frame (a jump into the window's first block
crosses from the frame before the window) by the mean of its denominator over the blocks that
start inside it: only frames inside the window enter, so two runs identical there are equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit.core.bins import bin_edges
from toolkit.core.bins import mean_in as window_mean  # [start, stop): one convention
from toolkit.errors import ConfigError
from toolkit.findings.spec import DERIVED, WHOLE, Measure, Spec, parse_measure

Series = tuple[np.ndarray, np.ndarray]  # (steps, values)


def span(window: str, frames: int, one_x: int) -> tuple[int, int]:
    """[start, stop) latent frames of a window (``binsK``: the span its bins cover)."""
    if window == "first":
        return 0, one_x
    if window == "last":
        return frames - one_x, frames
    if window == "whole" or window.startswith("bins"):
        return one_x, frames
    raise ConfigError(f"window {window!r} has no single span; allowed first, last, whole, binsK")


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


def ratio_in(name: str, series: dict[str, Series], start: int, stop: int) -> float:
    """A derived ratio (:data:`DERIVED`) over the blocks starting in [start, stop)."""
    num, den, filt = DERIVED[name]
    steps, top = series[num]
    pick = (steps > start) & (steps < stop) & np.isfinite(top)
    if filt:
        fsteps, flags = series[filt]
        want = 0.0 if name.startswith("quiet") else 1.0
        pick &= np.isin(steps, fsteps[flags == want])
    below = window_mean(*series[den], start, stop)
    if not pick.any() or not np.isfinite(below) or below <= 0:
        return float("nan")
    return float(top[pick].mean() / below)


def measure_value(measure: Measure | str, series: dict[str, Series], frames: int,
                  one_x: int) -> float:
    """One measure of one run from its logged series (name -> (steps, values))."""
    m = parse_measure(measure) if isinstance(measure, str) else measure
    if any(not len(series.get(c, ((), ()))[0]) for c in m.curves):
        return float("nan")
    if m.kind == "whole":
        return whole_measure(m.name, *series[m.curves[0]])
    if m.kind == "scalar":
        values = series[m.curves[0]][1]
        return float(values[-1])
    if m.window == "drop":
        return (measure_value(f"{m.name}@first", series, frames, one_x)
                - measure_value(f"{m.name}@last", series, frames, one_x))

    def one(a: int, b: int) -> float:
        if m.kind == "derived":
            return ratio_in(m.name, series, a, b)
        return window_mean(*series[m.curves[0]], a, b)

    start, stop = span(m.window, frames, one_x)
    if m.bins:
        per = np.array([one(a, b) for a, b in bin_edges(start, stop, m.bins)])
        return float(per[np.isfinite(per)].mean()) if np.isfinite(per).any() else float("nan")
    return one(start, stop)


def measure_curve(measure: str, steps: np.ndarray, values: np.ndarray, frames: int,
                  window: int) -> float:
    """A single-curve measure of one run's curve (``measure_value`` with one series)."""
    m = parse_measure(measure)
    if len(m.curves) != 1:
        raise ConfigError(f"{measure!r} reads {len(m.curves)} curves; use measure_value")
    return measure_value(m, {m.curves[0]: (steps, values)}, frames, window)


def measures_needed(spec: Spec) -> list[str]:
    """Every measure a test needs, with its 1x / 24x twins, and the arms table's columns."""
    out: list[str] = [c for c in dict.fromkeys(spec.columns)]
    for claim in spec.claims:
        for t in claim.tests:
            for m in (t.measure, t.at("first"), t.at("last")):
                if m and m not in out:
                    out.append(m)
    return out


def measure_runs(spec: Spec, runs: pd.DataFrame, uri: str) -> pd.DataFrame:
    """Per finished run: arm, seed and every needed measure (columns), from logged series.

    ``runs`` has ``run_id``, ``arm`` and ``seed`` columns (one row per run).
    """
    from toolkit.runs.aggregate import curves

    needed = [parse_measure(m) for m in measures_needed(spec)]
    names = sorted({c for m in needed for c in m.curves})
    logged = {name: curves(runs["run_id"], name, uri) for name in names}
    rows = []
    for run in runs.itertuples():
        row = {"arm": run.arm, "seed": int(run.seed), "run_id": run.run_id}
        series = {name: logged[name][run.run_id] for name in names}
        for m in needed:
            row[m.text] = (series[m.curves[0]] if m.kind == "paired"
                           else measure_value(m, series, spec.latent_frames, spec.window))
        rows.append(row)
    return pd.DataFrame(rows)


def _common_sums(arm: pd.Series, base: pd.Series) -> dict[int, tuple[float, float, int]]:
    """Per seed both arms have: the two runs' sums over the steps finite in both, and how many
    such steps there are."""
    out = {}
    for seed in arm.index.intersection(base.index):
        (sa, va), (sb, vb) = arm[seed], base[seed]
        a = dict(zip(np.asarray(sa).tolist(), np.asarray(va, float), strict=True))
        b = dict(zip(np.asarray(sb).tolist(), np.asarray(vb, float), strict=True))
        common = [s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s])]
        out[seed] = (sum(a[s] for s in common), sum(b[s] for s in common), len(common))
    return out


def paired_values(arm: pd.Series, base: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The moment-weighted comparison of two arms' sparse 0 / 1 curves, by seed.

    ``arm`` / ``base``: (steps, values) per seed (index). On each seed only the steps finite in
    BOTH runs count (a return readable in both videos); with ``n_s`` such steps, ``N`` their
    total and ``S`` the seeds having any, seed s gives ``sum(values at those steps) * S / N``
    for each arm. The means over seeds are then the pooled (moment-weighted) recalls and their
    difference the moment-weighted difference; the seed stays the unit of the tests (a
    sign-flip of a seed's value flips its moments together). Seeds with no common step: NaN.
    """
    sums = _common_sums(arm, base)
    total = sum(n for _, _, n in sums.values())
    seeds = sum(n > 0 for _, _, n in sums.values())
    scale = seeds / total if total else float("nan")

    def weighted(k: int) -> pd.Series:
        return pd.Series({s: (v[k] * scale if v[2] else float("nan")) for s, v in sums.items()},
                         dtype=float)

    return weighted(0), weighted(1)


def paired_counts(arm: pd.Series, base: pd.Series) -> pd.Series:
    """Per seed: how many steps both runs have finite (the moments a paired measure reads)."""
    return pd.Series({s: n for s, (_, _, n) in _common_sums(arm, base).items()}, dtype=int)
