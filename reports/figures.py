"""The report's figures as PNG bytes (matplotlib on the non-interactive Agg backend).

Curves: one line per variant, the mean over its seeds, with a band of the Student t 95%
interval of the mean at every latent frame where at least 3 runs have a value, clipped to the
measure's range (a fraction's band stays in [0, 1]); a dashed line at the training length and
dotted ones at the other length marks. A per-frame 0/1 curve (e.g. whether a frame matches its
prompt) is drawn as its mean in bins of whole blocks (about 24 over the run), with the raw
per-frame means as faint points. Sweeps: Optuna's own
matplotlib plots of the Pareto front (or the optimisation history of a single objective) and
of the parameter importances.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from toolkit.core.bins import bin_means
from toolkit.runs.aggregate import MIN_CI, UNBOUNDED

Curve = tuple[np.ndarray, np.ndarray]


def png(fig: Any) -> bytes:
    """A figure's PNG bytes (no software/date metadata)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def band(series: Sequence[Curve], bounds: tuple[float, float] = UNBOUNDED
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, low, high) over runs at every step any run has: the t interval of the mean
    where at least ``MIN_CI`` runs have a value (NaN elsewhere), clipped to ``bounds``."""
    frames = [pd.DataFrame({"step": s, "value": v}) for s, v in series if len(s)]
    if not frames:
        empty = np.array([])
        return empty, empty, empty, empty
    df = pd.concat(frames)
    df = df[np.isfinite(df["value"])]
    g = df.groupby("step")["value"].agg(["mean", "std", "count"])
    n = g["count"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * g["std"].to_numpy() / np.sqrt(n)
    half = np.where(n >= MIN_CI, half, np.nan)
    mean = g["mean"].to_numpy()
    low, high = np.clip(mean - half, *bounds), np.clip(mean + half, *bounds)
    return g.index.to_numpy(), mean, np.where(np.isfinite(half), low, np.nan), \
        np.where(np.isfinite(half), high, np.nan)


def binary(series: Sequence[Curve]) -> bool:
    """Whether every finite value of the curves is 0 or 1 (a per-frame yes/no)."""
    values = np.concatenate([np.asarray(v, float) for _, v in series]) if series else []
    values = np.asarray(values)[np.isfinite(values)]
    return bool(len(values)) and bool(np.isin(values, (0.0, 1.0)).all())


def rolling(series: Sequence[Curve], window: int) -> list[Curve]:
    """Each curve's trailing mean over ``window`` consecutive points (its first points: over
    what there is)."""
    return [(s, pd.Series(np.asarray(v, float)).rolling(window, min_periods=1).mean()
             .to_numpy()) for s, v in series]


def bin_width(series: Sequence[Curve], block: int, count: int = 24) -> int:
    """Latent frames per bin: whole blocks, about ``count`` bins over the longest curve."""
    span = max((int(np.max(s)) + 1 for s, _ in series if len(s)), default=block)
    return block * max(1, round(span / (block * count)))


def bins(series: Sequence[Curve], width: int) -> list[Curve]:
    """Each curve's mean in bins of ``width`` latent frames (``toolkit.core.bins``), placed at
    each bin's centre."""
    out = []
    for s, v in series:
        starts, means = bin_means(s, v, width=width)
        out.append((starts + (width - 1) / 2, means))
    return out


def colours(n: int) -> list[Any]:
    """n distinct, stable colours (tab10, tab20 beyond ten)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curve_figure(title: str, ylabel: str, per_variant: dict[str, Sequence[Curve]],
                 scale: float = 1.0, train_frames: int | None = None,
                 marks: Sequence[tuple[str, int]] = (), log: bool = False,
                 bounds: tuple[float, float] = UNBOUNDED, block: int | None = None,
                 switches: Sequence[int] = ()) -> bytes:
    """One metric over the rollout as PNG bytes (see :func:`curve_axes` for the arguments)."""
    return png(curve_axes(title, ylabel, per_variant, scale, train_frames, marks, log, bounds,
                          block, switches))


def curve_axes(title: str, ylabel: str, per_variant: dict[str, Sequence[Curve]],
               scale: float = 1.0, train_frames: int | None = None,
               marks: Sequence[tuple[str, int]] = (), log: bool = False,
               bounds: tuple[float, float] = UNBOUNDED, block: int | None = None,
               switches: Sequence[int] = ()) -> Figure:
    """One metric over the rollout: a line and CI band per variant.

    Args:
        title: the figure's title.
        ylabel: the y axis label (with its unit).
        per_variant: ``variant -> [(steps, values) of each run]`` in legend order.
        scale: multiplies the values (bytes to MiB, seconds to ms).
        train_frames: latent frames of the training length (a dashed line), if known.
        marks: ``(label, latent frame)`` of the other length marks (dotted lines).
        log: a log y axis (used only when every value is positive).
        bounds: the measure's range (unscaled): bands never leave it.
        block: latent frames per block: a 0/1 curve is drawn as its mean in bins of whole
            blocks (:func:`bin_width`), the raw per-frame means as faint points (None or 1: as
            it is).
        switches: latent frames where the prompt switched in every plotted run (faint lines).
    """
    fig = Figure(figsize=(5.8, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positive = True
    for colour, (variant, series) in zip(colours(len(per_variant)), per_variant.items(),
                                         strict=True):
        if block and block > 1 and binary(series):
            raw_x, raw, _, _ = band(series)
            ax.scatter(raw_x, raw * scale, s=3, color=colour, alpha=0.25, lw=0)
            series = bins(series, bin_width(series, block))
        x, mean, low, high = band(series, bounds)
        if not len(x):
            continue
        positive &= bool(np.all(mean > 0))
        ax.plot(x, mean * scale, color=colour, lw=1.3, label=variant)
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.any():
            ax.fill_between(x, np.where(ok, low, np.nan) * scale,
                            np.where(ok, high, np.nan) * scale, color=colour, alpha=0.2, lw=0)
    for frame in switches:
        ax.axvline(frame, color="tab:purple", lw=0.6, alpha=0.35)
    if switches:
        ax.text(0.0, -0.16, f"purple lines: prompt switches ({len(switches)})", fontsize=7,
                color="tab:purple", transform=ax.transAxes)
    for label, frame in marks:
        ax.axvline(frame, color="0.55", ls=":", lw=0.8)
        ax.text(frame, 1.0, f" {label}", transform=ax.get_xaxis_transform(), va="bottom",
                fontsize=7, color="0.4")
    if train_frames:
        ax.axvline(train_frames, color="k", ls="--", lw=1.0)
        ax.text(train_frames, 0.98, " training length", transform=ax.get_xaxis_transform(),
                va="top", fontsize=7)
    if log and positive and ax.lines:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("latent frame")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=max(1, len(per_variant) // 8),
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _axes_png(ax: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(7.2, 4.0)
    fig.tight_layout()
    data = png(fig)
    plt.close(fig)
    return data


def front_figure(study: Any, objectives: list[str]) -> tuple[bytes | None, str]:
    """Optuna's Pareto front (two or three objectives) or optimisation history (one)."""
    import optuna.visualization.matplotlib as ov

    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        return None, "no completed trials: nothing to plot"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = len(study.directions)
        if n in (2, 3):
            return _axes_png(ov.plot_pareto_front(study, target_names=objectives)), \
                f"Pareto front of {' vs '.join(objectives)} over {len(done)} completed trials"
        if n == 1:
            return _axes_png(ov.plot_optimization_history(study, target_name=objectives[0])), \
                f"single objective ({objectives[0]}): no Pareto front; the optimisation history"
    return None, f"{n} objectives: no Pareto plot"


def importance_figure(study: Any, objectives: list[str]) -> tuple[bytes | None, str]:
    """Optuna's parameter importances (fANOVA, seeded), or why there are none."""
    import optuna.visualization.matplotlib as ov
    from optuna.importance import FanovaImportanceEvaluator

    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    varied = {k for k in {k for t in done for k in t.params}
              if len({repr(t.params.get(k)) for t in done}) > 1}
    if len(done) < 2 or not varied:
        return None, (f"parameter importances need at least 2 completed trials with varying "
                      f"parameters; this study has {len(done)} completed trial(s)"
                      + ("" if varied or len(done) < 2 else " and no parameter varies"))
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = ov.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                           target=target, target_name=objectives[0])
    except Exception as err:  # Optuna's own refusal, said plainly
        return None, f"parameter importances unavailable: {type(err).__name__}: {err}"
    return _axes_png(ax), f"importance of each parameter for {objectives[0]} (fANOVA)"


def upscale(path: str | Path, factor: int = 2) -> bytes:
    """A PNG enlarged by nearest neighbour (pixels stay sharp), as PNG bytes."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        big = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    return buf.getvalue()
