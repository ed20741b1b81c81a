"""The findings page's figures: each claim's curves over the rollout (mean over seeds, 95% t
band kept in the measure's range; a per-frame 0/1 measure as its mean in bins of whole blocks,
the raw per-frame means faint; the file's first and last windows marked), and per test every
seed's value, the mean and its 95% CI against the pre-stated threshold. ``measure_range`` is
also what the page's tables clip intervals to."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reports import figures
from reports.data import block_of_curve
from reports.tables import heading, unit_of
from toolkit.core.bins import bin_means
from toolkit.findings import Claim, Result, Spec, parse_measure
from toolkit.runs.aggregate import UNBOUNDED, value_range


class Findings(Protocol):
    """What the figures read of a page (``reports.findings.Findings``)."""

    spec: Spec
    runs: pd.DataFrame
    uri: str
    results: dict[str, list[Result]]

BIN = 10  # latent frames per point of the curve figures


def _binned(steps: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``size``-frame bins with a finite value, at the bins' centres."""
    starts, means = bin_means(steps, values, width=size)
    ok = np.isfinite(means)
    return starts[ok] + size / 2, means[ok]


def measure_range(measure: str, paired: bool = False) -> tuple[float, float]:
    """The values a findings measure (or a paired difference of it) can take.

    A logged curve or scalar has its unit's range, a window of a curve the curve's
    (``fidelity@last``: [0, 1]); a drop (first minus last) and a difference against a baseline
    span [low - high, high - low] each; a derived ratio is >= 0 (``Measure.bounds``);
    ``kv_growth`` is >= 0 and ``kv_linearity`` (an R²) <= 1.
    """
    if measure == "kv_growth":
        low, high = 0.0, np.inf
    elif measure == "kv_linearity":
        low, high = -np.inf, 1.0
    elif "@" in measure:
        low, high = parse_measure(measure).bounds
    else:
        low, high = value_range(measure)
    if paired and measure != "kv_linearity":
        low, high = low - high, high - low
    return low, high


def block_of(f: Findings) -> int | None:
    """Latent frames per block of the runs: as recorded, else read off the KV curve."""
    recorded = set(f.runs["block_frames"].dropna()) if "block_frames" in f.runs else set()
    if len(recorded) == 1:
        return int(recorded.pop())
    if f.runs.empty or recorded:
        return None
    from toolkit.runs.aggregate import curves

    steps = next(iter(curves(f.runs["run_id"][:1], "kv_bytes", f.uri).values()))[0]
    return block_of_curve(steps)


def curve_png(f: Findings, measure: str, arms: list[str]) -> bytes:
    """The figure of one measure over the rollout, one line and 95% band per arm."""
    from toolkit.runs.aggregate import curves

    log = measure.startswith("kv_")
    raw = {arm: [c for c in curves(f.runs.loc[f.runs["arm"] == arm, "run_id"], measure,
                                   f.uri).values() if len(c[0])] for arm in arms}
    block = block_of(f)
    zero_one = not log and all(figures.binary(s) for s in raw.values() if s)
    if log or zero_one:  # per block as logged, or per frame smoothed over one block
        per, how = raw, "mean over seeds" if log else (
            f"mean in bins of whole {block}-frame blocks, mean over seeds, 95% band")
    else:
        per = {a: [_binned(s, v, BIN) for s, v in got] for a, got in raw.items()}
        how = f"mean of {BIN}-frame bins over seeds, 95% band"
    scale, _ = unit_of(measure)
    label = heading(measure, "") + (" (log)" if log else "")
    title = f"{measure} {'held per block' if log else 'over the rollout'}\n{how}"
    bounds = measure_range(measure) if not log else UNBOUNDED
    windows = (("first window", f.spec.window),
               ("last window", f.spec.latent_frames - f.spec.window))
    return figures.curve_figure(title, label, per, scale, None, windows, log, bounds,
                                block if zero_one else None)


def effects_png(f: Findings, claim: Claim) -> bytes:
    """Per test: every seed's value (dots), the mean and 95% CI (bar), the rule's band."""
    res = f.results[claim.id]
    fig = Figure(figsize=(3.3 * len(res), 2.6))
    FigureCanvasAgg(fig)
    for i, r in enumerate(res):
        ax = fig.add_subplot(1, len(res), i + 1)
        t = r.test
        if t.margin:
            ax.axhspan(t.than - t.margin, t.than + t.margin, color="0.9", lw=0,
                       label=f"±{t.margin:g}")
        ax.axhline(t.than, color="k", lw=0.8, ls="--")
        x = np.linspace(-0.15, 0.15, len(r.values))
        ax.scatter(x, r.values, s=12, color="tab:blue", zorder=3)
        if np.isfinite(r.low):
            low, high = np.clip((r.low, r.high), *measure_range(t.measure, bool(t.baseline)))
            ax.errorbar([0.45], [r.mean], yerr=[[r.mean - low], [high - r.mean]], fmt="o",
                        color="tab:red", capsize=4, zorder=3)
        ax.set_xlim(-0.5, 0.8)
        ax.set_xticks([])
        vs = f" − {t.baseline}" if t.baseline else ""
        ax.set_title(f"{t.arm}{vs}\n{t.measure}: {r.verdict}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return figures.png(fig)
