"""The report's tables: values at the length marks and whole-run scalars, over seeds.

Headline values at a mark (``m`` times the model's training length, in latent frames) come from
each run's curves up to that latent frame, so one rollout of 24x gives all four marks:

- drift: the ``drift`` curve at the segment holding the mark's last frame;
- prompt fidelity, repetition (``self_similarity``), motion, discontinuity
  (``boundary_change``) and ms per block (``block_seconds``): the mean of the curve up to the
  mark (at a run's full length these equal its ``repetition``, ``discontinuity`` and
  ``seconds_per_block`` scalars, which stand in where the curve is missing);
- KV MiB: the largest ``kv_bytes`` held up to the mark (``peak_kv_bytes`` at full length);
- real videos (``toolkit.metrics.real``): subject and background consistency, the smoothness
  stand-in and the dynamic pairs as the mean of the curve up to the mark; the CLIP score and
  CLIP drift at the segment holding the mark's last frame. Shown only where runs logged them.

A run of exactly the mark's length is preferred for a mark (an ``extrapolation`` grid runs
each length); otherwise the shortest run that reaches it. Means carry 95% CIs over seeds and a
paired test against the baseline (``toolkit.runs.aggregate.summarise``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports.data import Experiment
from toolkit.metrics import series_unit
from toolkit.runs.aggregate import direction, summarise
from toolkit.runs.tracking import MARKS

ARROWS = {"higher": "↑", "lower": "↓"}
DISPLAY = {"bytes": (2.0**-20, "MiB"), "s": (1e3, "ms")}  # unit -> (scale, shown unit)
SCALARS = ("vde", "start_end_distance", "start_end_fidelity_drop", "dynamic_degree",
           "discontinuity", "repetition", "norepeat", "peak_kv_bytes", "seconds_per_block",
           "latency_growth", "subject_consistency_score", "background_consistency_score",
           "clip_drift_end", "flow_smoothness_score", "vbench_dynamic_degree")


@dataclass(frozen=True)
class Column:
    """A headline metric: the curve it reads, how a mark reduces it, its whole-run scalar."""

    curve: str
    title: str
    reduce: str  # "at" (value at the mark), "mean" or "max" (over frames up to the mark)
    scalar: str | None
    description: str


HEADLINE = (
    Column("drift", "drift", "at", None,
           "feature distance of the segment at the mark from the opening segment"),
    Column("fidelity", "prompt fidelity", "mean", None,
           "share of frames whose sprites match the prompt, mean up to the mark"),
    Column("self_similarity", "repetition", "mean", "repetition",
           "long-lag self-similarity, mean up to the mark"),
    Column("motion", "motion", "mean", None, "share of pixels changed, mean up to the mark"),
    Column("boundary_change", "discontinuity", "mean", "discontinuity",
           "frame change across block boundaries / within blocks, mean up to the mark"),
    Column("subject_consistency", "subject consistency", "mean", "subject_consistency_score",
           "VBench subject consistency (DINO, to the first and previous frames), mean up to the "
           "mark"),
    Column("background_consistency", "background consistency", "mean",
           "background_consistency_score",
           "VBench background consistency (CLIP image features), mean up to the mark"),
    Column("clip_score", "CLIP score", "at", None,
           "100 x CLIP cosine of the segment at the mark to the prompt in force"),
    Column("clip_drift", "CLIP drift", "at", "clip_drift_end",
           "fall of the CLIP score at the mark from the prompt's first segment"),
    Column("flow_smoothness", "smoothness (RAFT stand-in)", "mean", "flow_smoothness_score",
           "frames re-created by RAFT-flow interpolation, 1 - MAE, mean up to the mark (a "
           "stand-in for VBench's AMT motion smoothness)"),
    Column("flow_dynamic", "dynamic pairs", "mean", None,
           "share of frame pairs moving by VBench's dynamic-degree threshold, up to the mark"),
    Column("kv_bytes", "KV", "max", "peak_kv_bytes", "largest KV cache held up to the mark"),
    Column("block_seconds", "latency", "mean", "seconds_per_block",
           "wall time per block, mean up to the mark"),
)
CURVES = tuple(c.curve for c in HEADLINE)


@dataclass(frozen=True)
class Mark:
    """A length column: ``multiple`` x the training length, or each run's end (None)."""

    label: str
    multiple: int | None
    frames: int | None


@dataclass
class Table:
    """A rendered table: header, rows of cell texts, and which cells are best in their column."""

    title: str
    header: list[str]
    rows: list[list[str]]
    best: set[tuple[int, int]] = field(default_factory=set)
    note: str = ""


def natural(text: str) -> list:
    """Sort key putting ``trial 2`` before ``trial 10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def order(variants: list[str], baseline: str | None) -> list[str]:
    """Variants in report order: the baseline first, then natural order."""
    rest = sorted({v for v in variants if v != baseline}, key=natural)
    return ([baseline] if baseline in variants else []) + rest


def resolve_baseline(runs: pd.DataFrame, baseline: str | None) -> str | None:
    """The baseline's variant label: an exact label, else the one variant of that strategy."""
    if not baseline or baseline == "none" or runs.empty:
        return None
    labels = set(runs["variant"])
    if baseline in labels:
        return baseline
    of = sorted(set(runs.loc[runs["strategy"] == baseline, "variant"]))
    return of[0] if len(of) == 1 else None


def unit_of(metric: str) -> tuple[float, str]:
    """Display scale and unit of a metric (bytes as MiB, seconds as ms)."""
    try:
        unit = series_unit(metric)
    except Exception:
        return 1.0, ""
    return DISPLAY.get(unit, (1.0, unit))


def heading(metric: str, title: str | None = None) -> str:
    """``title ↓ (unit)`` with the arrow from the metric's direction."""
    _, unit = unit_of(metric)
    arrow = ARROWS.get(direction(metric), "")
    return f"{title or metric} {arrow}".strip() + (f" ({unit})" if unit else "")


def num(x: float) -> str:
    """A number for a table: 3 significant figures, thousands separated, NaN as "—"."""
    if x is None or not np.isfinite(x):
        return "—"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return "0" if a == 0 else f"{x:.3g}"


def cell(row: pd.Series | None, scale: float, expected: int) -> str:
    """``mean [low, high]`` (scaled; no interval under ``MIN_CI`` runs), ``(n=k)`` when some of
    the variant's runs lack the value, ▲/▼ vs the baseline."""
    if row is None or not np.isfinite(row["mean"]):
        return "—"
    mean, low, high = (row[k] * scale for k in ("mean", "ci_low", "ci_high"))
    text = num(mean)
    if np.isfinite(low) and np.isfinite(high) and num(low) != num(high):
        text += f" [{num(low)}, {num(high)}]"
    if row["n"] < expected:  # some runs lack it (a variant with few runs: the legend says)
        text += f" (n={int(row['n'])})"
    if bool(row.get("significant", False)):
        text += " ▲" if bool(row["better"]) else " ▼"
    return text


def marks_of(runs: pd.DataFrame) -> list[Mark]:
    """The length marks some run reaches; ``end`` (each run's length) when none is known."""
    trains = sorted({int(t) for t in runs["train_frames"].dropna()})
    if not trains:
        return [Mark("end", None, None)]
    out = []
    for m in MARKS:
        reach = runs["latent_frames"] >= m * runs["train_frames"]
        if reach.fillna(False).any():
            out.append(Mark(f"{m}x", m, m * trains[0] if len(trains) == 1 else None))
    return out or [Mark("end", None, None)]


def reduce(curve: tuple[np.ndarray, np.ndarray] | None, frames: int, how: str) -> float:
    """A curve's value at a mark: the last point before latent frame ``frames``, mean or max."""
    if curve is None or not len(curve[0]):
        return np.nan
    steps, values = curve
    keep = (steps < frames) & np.isfinite(values)
    if not keep.any():
        return np.nan
    v = values[keep]
    return float(v[-1] if how == "at" else v.mean() if how == "mean" else v.max())


def at_marks(exp: Experiment, marks: list[Mark]) -> pd.DataFrame:
    """One row per (variant, seed, prompt, mark): the headline values from one run."""
    runs = exp.runs
    rows = []
    for mark in marks:
        frames = runs["latent_frames"] if mark.multiple is None \
            else mark.multiple * runs["train_frames"]
        ok = (runs["latent_frames"] >= frames).fillna(False)
        pick = runs[ok].assign(_at=frames[ok], _exact=runs["latent_frames"][ok] == frames[ok])
        pick = pick.sort_values(["_exact", "latent_frames", "run_name"],
                                ascending=[False, True, False])
        pick = pick.drop_duplicates(["variant", "seed", "prompt"])
        for run in pick.to_dict("records"):
            row = {"variant": run["variant"], "seed": run["seed"], "prompt": run["prompt"],
                   "mark": mark.label, "run_id": run["run_id"]}
            for col in HEADLINE:
                value = reduce(exp.curves.get(col.curve, {}).get(run["run_id"]), int(run["_at"]),
                               col.reduce)
                if not np.isfinite(value) and col.scalar and run["_exact"]:
                    value = float(run.get(col.scalar, np.nan))
                row[col.curve] = value
            rows.append(row)
    cols = ["variant", "seed", "prompt", "mark", "run_id", *CURVES]
    return pd.DataFrame(rows, columns=cols)


def _index(summary: pd.DataFrame, keys: list[str]) -> dict[tuple, pd.Series]:
    if summary.empty:
        return {}
    return {tuple(r[k] for k in keys): r for _, r in summary.iterrows()}


#: Words naming a reference column (a chance level, a count of opportunities): never ranked.
REFERENCE = ("chance", "count", "moments", "unreadable", "returns")


def reference(metric: str) -> bool:
    """Whether a metric is a reference (chance level, count) rather than a result to rank."""
    return any(word in metric for word in REFERENCE)


def split(table: Table, keep: int, per: int) -> list[Table]:
    """A wide table as several that fit a page: each keeps the first ``keep`` columns and
    takes up to ``per`` of the others (best cells carried over)."""
    rest = list(range(keep, len(table.header)))
    if len(rest) <= per:
        return [table]
    parts = []
    for n, a in enumerate(range(0, len(rest), per)):
        cols = [*range(keep), *rest[a:a + per]]
        where = {c: j for j, c in enumerate(cols)}
        parts.append(Table(f"{table.title} ({n + 1} of {-(-len(rest) // per)})",
                           [table.header[c] for c in cols],
                           [[row[c] for c in cols] for row in table.rows],
                           {(i, where[c]) for i, c in table.best if c in where}, table.note))
    return parts


def _best(values: list[float], metric: str) -> set[int]:
    finite = [v for v in values if np.isfinite(v)]
    if len(finite) < 2 or direction(metric) not in ARROWS or reference(metric):
        return set()
    target = max(finite) if direction(metric) == "higher" else min(finite)
    return {i for i, v in enumerate(values) if np.isfinite(v) and np.isclose(v, target,
                                                                           rtol=1e-9, atol=0)}


def headline_tables(exp: Experiment, marks: list[Mark], baseline: str | None,
                    test: str) -> tuple[list[Table], pd.DataFrame]:
    """One table per headline metric: variants x marks; and the summary it came from."""
    long = at_marks(exp, marks)
    present = [c for c in HEADLINE if long[c.curve].notna().any()]
    summary = summarise(long, by=["variant", "mark"], metrics=[c.curve for c in present],
                        baseline=baseline, strategy_col="variant", test=test) \
        if present else pd.DataFrame()
    index = _index(summary, ["variant", "mark", "metric"])
    runs = exp.runs.drop_duplicates(["variant", "seed", "prompt"])
    counts = runs.groupby("variant").size().to_dict()  # runs (seeds x prompts) per variant
    variants = order(list(exp.runs["variant"]), baseline)
    tables = []
    for col in present:
        scale, _ = unit_of(col.curve)
        header = ["variant", *[f"{m.label} ({m.frames})" if m.frames else m.label
                               for m in marks]]
        table = Table(heading(col.curve, col.title), header, [], note=col.description)
        for v in variants:
            found = [index.get((v, m.label, col.curve)) for m in marks]
            table.rows.append([v, *[cell(r, scale, counts.get(v, 0)) for r in found]])
        for j, m in enumerate(marks):
            means = [float(index[(v, m.label, col.curve)]["mean"])
                     if (v, m.label, col.curve) in index else np.nan for v in variants]
            table.best |= {(i, j + 1) for i in _best(means, col.curve)}
        tables.append(table)
    return tables, summary


def scalar_table(exp: Experiment, baseline: str | None, test: str,
                 which: tuple[str, ...] = SCALARS, title: str = "Whole-run scalars"
                 ) -> Table | None:
    """Whole-run scalars per variant (and length, where runs differ), over seeds."""
    runs = exp.runs
    metrics = [m for m in which if m in runs and runs[m].notna().any()]
    if not metrics:
        return None
    summary = summarise(runs, by=["variant", "latent_frames"], metrics=metrics,
                        baseline=baseline, strategy_col="variant", test=test)
    index = _index(summary, ["variant", "latent_frames", "metric"])
    lengths = sorted(runs["latent_frames"].dropna().unique())
    counts = runs.groupby(["variant", "latent_frames"]).size().to_dict()
    keys = [(v, f) for f in lengths for v in order(list(runs["variant"]), baseline)
            if (v, f) in counts]
    table = Table(title, ["variant", "latent frames",
                                        *[heading(m) for m in metrics]], [])
    for v, f in keys:
        table.rows.append([v, str(int(f)), *[cell(index.get((v, f, m)), unit_of(m)[0],
                                                  counts[(v, f)]) for m in metrics]])
    for j, m in enumerate(metrics):
        for f in lengths:
            rows = [i for i, k in enumerate(keys) if k[1] == f]
            means = [float(index[(*keys[i], m)]["mean"]) if (*keys[i], m) in index else np.nan
                     for i in rows]
            table.best |= {(rows[i], j + 2) for i in _best(means, m)}
    return table


def runs_table(exp: Experiment, baseline: str | None) -> Table:
    """Per variant: strategy, finished and unfinished runs, seeds, lengths, prompts."""
    all_runs = pd.concat([exp.runs, exp.others], ignore_index=True)
    table = Table("Runs", ["variant", "strategy", "finished", "not finished", "seeds",
                           "latent frames", "prompts"], [])
    for v in order(list(all_runs["variant"]), baseline):
        sub = all_runs[all_runs["variant"] == v]
        done = sub[sub["status"] == "FINISHED"]
        other = sub[sub["status"] != "FINISHED"]["status"].str.lower().value_counts()
        table.rows.append([v, ", ".join(sorted(set(sub["strategy"].astype(str)))),
                           str(len(done)),
                           ", ".join(f"{n} {s}" for s, n in sorted(other.items())) or "0",
                           _span(done["seed"]), _span(done["latent_frames"]),
                           str(done["prompt"].nunique())])
    return table


def _span(values: pd.Series) -> str:
    vals = sorted({int(v) for v in values.dropna()})
    if not vals:
        return "—"
    if len(vals) > 2 and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}–{vals[-1]}"
    return ", ".join(map(str, vals))
