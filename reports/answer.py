"""The report's first table: quality at each length mark against peak KV, one row per variant.

Quality is the first curve of :data:`QUALITY` the runs logged (prompt fidelity on the world,
scene fidelity on the memory world, the CLIP score on real videos). At each mark a cell shows
the value AT the mark (the curve's mean over the last training length before it, so a per-frame
0/1 curve reads as a share) next to the mean up to the mark; means over seeds and prompts. The
last column is the largest KV cache held up to the last mark. A Pareto plot puts the quality at
the last mark against that peak KV.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.data import Experiment
from reports.tables import Mark, Table, num, order
from toolkit.core.bins import mean_in

#: Quality curves in order of preference: (curve, title).
QUALITY = (("fidelity", "prompt fidelity"), ("scene_fidelity", "scene fidelity"),
           ("clip_score", "CLIP score"))


def window_mean(curve: tuple[np.ndarray, np.ndarray] | None, end: int, width: int) -> float:
    """Mean of a curve over latent frames ``[end - width, end)`` (NaN without values)."""
    if curve is None or not len(curve[0]):
        return np.nan
    return mean_in(*curve, end - width, end)


def _per_run(exp: Experiment, metric: str, marks: list[Mark]) -> pd.DataFrame:
    rows = []
    kv = exp.curves.get("kv_bytes", {})
    for run in exp.runs.to_dict("records"):
        train, frames = run.get("train_frames"), run.get("latent_frames")
        curve = exp.curves.get(metric, {}).get(run["run_id"])
        row = {"variant": run["variant"]}
        for mark in marks:
            end = frames if mark.multiple is None or pd.isna(train) else mark.multiple * train
            if pd.isna(end) or pd.isna(frames) or end > frames:
                continue
            width = int(train) if not pd.isna(train) else int(end)
            row[f"at {mark.label}"] = window_mean(curve, int(end), width)
            row[f"to {mark.label}"] = window_mean(curve, int(end), int(end))
            row["kv"] = window_peak(kv.get(run["run_id"]), int(end),
                                    run.get("peak_kv_bytes", np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def window_peak(curve: tuple[np.ndarray, np.ndarray] | None, end: int, fallback: float) -> float:
    """The largest value of a curve before latent frame ``end`` (``fallback`` without one)."""
    if curve is None or not len(curve[0]):
        return float(fallback) if fallback is not None else np.nan
    steps, values = np.asarray(curve[0]), np.asarray(curve[1], float)
    keep = (steps < end) & np.isfinite(values)
    return float(values[keep].max()) if keep.any() else np.nan


def quality_metric(exp: Experiment) -> tuple[str, str] | None:
    """The quality curve the runs logged, with its title; None when they logged none."""
    return next(((m, t) for m, t in QUALITY if any(len(c[0]) for c in
                                                  exp.curves.get(m, {}).values())), None)


def answer(exp: Experiment, marks: list[Mark], baseline: str | None
           ) -> tuple[Table | None, pd.DataFrame]:
    """The table and its numbers (one row per variant: ``at/to <mark>`` means and ``kv``)."""
    found = quality_metric(exp)
    if found is None or exp.runs.empty:
        return None, pd.DataFrame()
    metric, title = found
    per = _per_run(exp, metric, marks)
    means = per.groupby("variant").mean(numeric_only=True)
    counts = per.groupby("variant").size()
    variants = [v for v in order(list(exp.runs["variant"]), baseline) if v in means.index]
    header = ["variant", *[f"{m.label}: at / up to" for m in marks], "peak KV (MiB)", "runs"]
    table = Table(f"Quality against memory: {title} at each length mark, peak KV", header, [],
                  note=f"{title} at the mark (its mean over the last training length before "
                       "the mark) / its mean from the start up to the mark; mean over seeds "
                       "and prompts; bold: the best value at the mark. Peak KV: the largest "
                       "KV cache held up to the last mark.")
    for v in variants:
        row = means.loc[v]
        cells = [f"{num(row.get(f'at {m.label}', np.nan))} / "
                 f"{num(row.get(f'to {m.label}', np.nan))}" for m in marks]
        table.rows.append([v, *cells, num(row.get("kv", np.nan) / 2**20), str(counts[v])])
    for j, m in enumerate(marks):
        values = [means.loc[v].get(f"at {m.label}", np.nan) for v in variants]
        finite = [x for x in values if np.isfinite(x)]
        if len(finite) > 1:
            table.best |= {(i, j + 1) for i, x in enumerate(values)
                           if np.isfinite(x) and np.isclose(x, max(finite))}
    out = means.loc[variants].reset_index()
    out.attrs["title"] = title
    return table, out


def pareto_front(kv: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (less KV, more quality)."""
    idx = [i for i in range(len(kv)) if np.isfinite(kv[i]) and np.isfinite(quality[i])]
    return np.array([i for i in idx if not any(
        kv[j] <= kv[i] and quality[j] >= quality[i] and (kv[j] < kv[i] or quality[j] > quality[i])
        for j in idx)], dtype=int)


def pareto_figure(numbers: pd.DataFrame, mark: Mark) -> bytes | None:
    """Quality at ``mark`` against peak KV per variant, the Pareto front joined (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from reports.figures import colours, png

    col = f"at {mark.label}"
    if numbers.empty or col not in numbers or "kv" not in numbers:
        return None
    kv, quality = numbers["kv"].to_numpy(float) / 2**20, numbers[col].to_numpy(float)
    if not (np.isfinite(kv) & np.isfinite(quality)).any():
        return None
    fig = Figure(figsize=(5.8, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for c, (v, x, y) in zip(colours(len(numbers)), zip(numbers["variant"], kv, quality,
                                                        strict=True), strict=True):
        if np.isfinite(x) and np.isfinite(y):
            ax.scatter([x], [y], color=c, s=30, label=v, zorder=3)
    front = pareto_front(kv, quality)
    if len(front) > 1:
        pts = sorted(zip(kv[front], quality[front], strict=True))
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="0.5", lw=0.9,
                ls="--", label="Pareto front")
    if np.all(kv[np.isfinite(kv)] > 0) and np.nanmax(kv) / np.nanmin(kv) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("peak KV (MiB)")
    ax.set_ylabel(f"{numbers.attrs.get('title', 'quality')} at {mark.label}")
    ax.set_title(f"quality at {mark.label} against memory", fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return png(fig)
