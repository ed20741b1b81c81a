"""Aggregates over seeds and prompts: means, 95% confidence intervals and paired tests.

The results-table API the report uses (it reads MLflow only):

    df = load_runs("sqlite:///runs/mlflow.db", "rollbench")     # one row per run
    table = summarise(df, by=["strategy", "latent_frames"], baseline="full")
    series = curves(df.run_id[:2], "drift", "sqlite:///runs/mlflow.db")

Confidence intervals: ``scipy.stats.bootstrap`` of the mean (BCa, 9,999 resamples, seeded) for
n >= 3 runs, none below 3 (two values give a t interval too wide to read, e.g. -6 to 7 on a
fraction); an interval never leaves the metric's range (:func:`value_range`: a fraction stays
in [0, 1], bytes and seconds >= 0). Paired tests: a run is paired
with the baseline strategy's run that shares every ``by`` column other than the strategy and
every ``pair_on`` column (seed and prompt); the test is the two-sided Wilcoxon signed-rank
test (``scipy.stats.wilcoxon``) by default, or the paired t-test (``ttest_rel``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from toolkit.metrics import METRICS, series_unit
from toolkit.registry import UnknownName

RUN_COLUMNS = ("strategy", "model", "prompt", "run_key", "seed", "latent_frames")
TESTS = ("wilcoxon", "ttest")
#: Fewest values an interval is given for (below it: the mean alone, and the report says so).
MIN_CI = 3
#: Units whose values cannot be negative.
NONNEGATIVE = ("bytes", "tokens", "s", "ratio", "feature distance", "Frechet distance",
               "px/frame", "LPIPS", "px", "count", "relative change", "mean abs change")
UNBOUNDED = (-np.inf, np.inf)


def value_range(metric: str) -> tuple[float, float]:
    """The values a metric can take, from its unit: [0, 1] for fractions, [-1, 1] for cosines,
    [0, inf) for sizes, times and distances, else unbounded (``kv_bytes/sink`` uses
    ``kv_bytes``)."""
    try:
        unit = series_unit(metric)
    except UnknownName:
        return UNBOUNDED
    if unit.startswith("fraction"):
        return 0.0, 1.0
    if unit == "cosine":
        return -1.0, 1.0
    return (0.0, np.inf) if unit in NONNEGATIVE else UNBOUNDED


def mean_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0,
            bounds: tuple[float, float] = UNBOUNDED) -> tuple[float, float, float]:
    """(mean, low, high) of the mean, the interval clipped to ``bounds``; no interval (NaN)
    below :data:`MIN_CI` values. See the module docstring for the method."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    mean = float(x.mean())
    if len(x) < MIN_CI:
        return mean, np.nan, np.nan
    if np.ptp(x) == 0:
        return mean, mean, mean
    low, high = _bootstrap(x, confidence, seed)
    return mean, float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


def _bootstrap(x: np.ndarray, confidence: float, seed: int) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, method="BCa",
                              rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerate: percentile instead
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))
        low, high = res.confidence_interval
    return float(low), float(high)


def paired_test(a: Sequence[float], b: Sequence[float], test: str = "wilcoxon") -> float:
    """Two-sided p-value that paired samples a and b differ (NaN pairs dropped)."""
    if test not in TESTS:
        raise ValueError(f"test={test!r}: allowed {TESTS}")
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2:
        return np.nan
    if np.all(a == b):
        return 1.0
    if test == "ttest":
        return float(stats.ttest_rel(a, b).pvalue)
    return float(stats.wilcoxon(a, b).pvalue)


def direction(metric: str) -> str:
    """``higher`` / ``lower`` from the metric registry (``kv_bytes/sink`` uses ``kv_bytes``)."""
    try:
        return METRICS.get(metric.split("/", 1)[0]).direction
    except UnknownName:
        return "unknown"


def load_runs(tracking_uri: str, experiment: str = "rollbench",
              finished_only: bool = True, dedupe: bool = True) -> pd.DataFrame:
    """One row per run: run_id, status, the RUN_COLUMNS, ``params.*``, ``tags.*``,
    ``info.end_time`` (ms) and scalars.

    Scalar metrics appear under their own names; curves are left out (see :func:`curves`).
    With ``dedupe`` a run key finished twice (two grids ran it at once) counts once
    (:func:`drop_duplicates`); ``df.attrs["duplicates"]`` says how many runs were dropped.
    """
    from toolkit.runs.tracking import open_client

    client = open_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=["run_id", "status", *RUN_COLUMNS])
    rows, token = [], None
    filt = "attributes.status = 'FINISHED'" if finished_only else ""
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=filt, max_results=1000,
                                  page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "run_name": run.info.run_name,
                   "status": run.info.status, "info.end_time": run.info.end_time}
            row.update({f"params.{k}": v for k, v in run.data.params.items()})
            row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
            row.update({k: v for k, v in run.data.metrics.items() if _is_scalar(k)})
            row.update(strategy=run.data.tags.get("strategy"), model=run.data.tags.get("model"),
                       prompt=run.data.tags.get("prompt"), run_key=run.data.tags.get("run_key"),
                       seed=_int(run.data.params.get("seed")),
                       latent_frames=_int(run.data.params.get("video.latent_frames")))
            rows.append(row)
        token = page.token
        if not token:
            break
    df = pd.DataFrame(rows)
    return drop_duplicates(df) if dedupe else df


def drop_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """The runs with one FINISHED run per run key: the last to finish is kept (by
    ``info.end_time``, then run id; the run a lookup of the key finds first); unfinished runs
    and runs without a key are all kept. ``attrs["duplicates"]`` of the result: how many
    finished runs were dropped."""
    if df.empty or "run_key" not in df:
        df.attrs["duplicates"] = 0
        return df
    done = (df["status"] == "FINISHED") & df["run_key"].notna()
    order = df[done].sort_values(["info.end_time", "run_id"] if "info.end_time" in df
                                 else ["run_id"], ascending=False, na_position="last")
    twins = order.index[order.duplicated("run_key", keep="first")]
    out = df.drop(index=twins).reset_index(drop=True)
    out.attrs["duplicates"] = len(twins)
    return out


#: Config keys the runs of one variant may differ in: what a variant's mean is taken over
#: (lengths too: tables and the report keep them apart by their own columns and marks).
POOLED = ("seed", "prompt", "video.latent_frames", "video.seconds")


def split_variants(df: pd.DataFrame, label: str = "variant",
                   pooled: Sequence[str] = POOLED) -> tuple[pd.DataFrame, list[str]]:
    """Never pool runs whose configs differ in more than ``pooled`` under one label.

    Within each label, runs whose recorded ``params.*`` differ in any other key are relabelled
    ``label (key=value ...)`` with the keys that differ. Runs without recorded params (failed
    before logging them) keep their label. Returns the table and one sentence per split label.
    """
    cols = [c for c in df.columns if c.startswith("params.") and c[len("params."):]
            not in pooled]
    if df.empty or not cols or label not in df:
        return df, []
    out, notes = df.copy(), []
    has = df[cols].notna().any(axis=1)
    for name, sub in df[has].groupby(label, sort=True):
        text = sub[cols].astype(object).where(sub[cols].notna(), "(unset)").astype(str)
        differ = [c for c in cols if text[c].nunique() > 1]
        if not differ:
            continue
        for i in sub.index:
            out.at[i, label] = f"{name} (" + " ".join(
                f"{c[len('params.'):]}={text.at[i, c]}" for c in differ) + ")"
        keys = ", ".join(c[len("params."):] for c in differ)
        notes.append(f"`{name}` held runs whose configs differ in {keys} (not only seed and "
                     f"prompt): not pooled, shown as {len(text[differ].drop_duplicates())} "
                     "variants.")
    return out, notes


def _is_scalar(key: str) -> bool:
    found = METRICS.items().get(key.split("/", 1)[0])
    return found is not None and found.kind == "scalar"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def curves(run_ids: Iterable[str], metric: str,
           tracking_uri: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``run_id -> (steps, values)`` of a logged curve, sorted by step (latent frame)."""
    from toolkit.runs.tracking import open_client

    client = open_client(tracking_uri)
    out = {}
    for run_id in run_ids:
        hist = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        out[run_id] = (np.array([m.step for m in hist], dtype=np.int64),
                       np.array([m.value for m in hist], dtype=np.float64))
    return out


def scalar_columns(df: pd.DataFrame) -> list[str]:
    """The scalar-metric columns of a :func:`load_runs` table."""
    return [c for c in df.columns if "." not in c and c not in ("run_id", "run_name", "status",
                                                               *RUN_COLUMNS)]


def summarise(df: pd.DataFrame, by: Sequence[str] = ("strategy", "latent_frames"),
              metrics: Sequence[str] | None = None, baseline: str | None = "full",
              strategy_col: str = "strategy", pair_on: Sequence[str] = ("seed", "prompt"),
              test: str = "wilcoxon", alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Per group and metric: n, mean, 95% CI, and a paired test against the baseline.

    Returns:
        One row per (group, metric): the ``by`` columns, ``metric``, ``direction``, ``n``,
        ``mean``, ``ci_low``, ``ci_high``, ``n_pairs``, ``delta`` (mean paired difference to
        the baseline), ``p_value``, ``significant`` (p < alpha), ``better`` (significant and
        in the metric's good direction), ``test``. Baseline rows have NaN tests.
    """
    by = list(by)
    metrics = list(metrics) if metrics is not None else scalar_columns(df)
    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the runs table; "
                         f"available: {sorted(df.columns)}")
    keys = [c for c in by if c != strategy_col]
    match = [*keys, *[c for c in pair_on if c in df.columns]]
    rows = []
    for group, sub in df.groupby(by, dropna=False, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        label = dict(zip(by, group, strict=True))
        base = None
        if baseline is not None and label.get(strategy_col, baseline) != baseline:
            base = df[df[strategy_col] == baseline]
            for k in keys:
                base = base[base[k] == label[k]]
        for name in metrics:
            mean, low, high = mean_ci(sub[name].to_numpy(float), seed=seed,
                                      bounds=value_range(name))
            row = {**label, "metric": name, "direction": direction(name),
                   "n": int(np.isfinite(sub[name].to_numpy(float)).sum()), "mean": mean,
                   "ci_low": low, "ci_high": high, "n_pairs": 0, "delta": np.nan,
                   "p_value": np.nan, "test": test if base is not None else ""}
            if base is not None and len(base):
                pairs = sub[[*match, name]].merge(base[[*match, name]], on=match,
                                                  suffixes=("", "_base"))
                a, b = pairs[name].to_numpy(float), pairs[f"{name}_base"].to_numpy(float)
                ok = np.isfinite(a) & np.isfinite(b)
                row.update(n_pairs=int(ok.sum()),
                           delta=float(np.mean(a[ok] - b[ok])) if ok.any() else np.nan,
                           p_value=paired_test(a, b, test))
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["significant"] = out["p_value"] < alpha
    sign = out["direction"].map({"higher": 1.0, "lower": -1.0}).fillna(0.0)
    out["better"] = out["significant"] & (sign * out["delta"] > 0)
    return out
