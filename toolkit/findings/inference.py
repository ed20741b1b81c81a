"""The statistics of the findings: tests, intervals, the multiple-test correction and power.

- ``sign_flip_p``: the sign-flip permutation test of the mean of paired differences against 0.
  Under the null each difference is as likely positive as negative, so the 2^n sign patterns
  are equally likely; p is the share of them whose mean is at least as extreme as the observed
  one. Up to :data:`EXACT_MAX` values every pattern is enumerated (``scipy.stats.
  permutation_test``, ``permutation_type="samples"``, ``n_resamples = 2^n``: exact); above,
  ``resamples`` random patterns (seeded) and p = (hits + 1) / (resamples + 1). Two-sided p is
  twice the smaller one-sided p (at most 1); for symmetric nulls that is P(|mean| >= |obs|).
  The smallest two-sided p of n values with n' of them non-zero is 2^(1-n') (``p_floor``):
  flipping a zero changes nothing, so each zero halves the number of distinct sign patterns
  (0.0078 at n' = 8, 3.1e-5 at n' = 16; 3 zeros of 8: 0.0625, never below 0.05).
- ``wilcoxon`` (the first findings pages): ``scipy.stats.wilcoxon`` as scipy 1.17 runs it,
  described per sample by ``wilcoxon_method``.
- ``t_interval``: the Student t 95% interval of the mean. ``coverage`` measures an interval
  method's coverage by simulation; the tests check it at n = 8 and 16 on tied, bimodal data
  like fidelity differences (t: 0.94 / 0.95; BCa: 0.90 / 0.93). A limit no method here
  removes: when the arms are identical in about half the seeds (zero differences) and the rest
  is bimodal, t covers 0.89 at n = 8 and 0.93 at n = 16 (BCa 0.90 / 0.94).
- ``holm``: Holm's step-down adjusted p-values.
- ``detectable_effect``: the smallest true mean difference a paired two-sided t-test at
  ``alpha`` detects with ``power``, from the observed SD: ``lambda * sd / sqrt(n)``, lambda the
  noncentrality with ``P(|T'| > t_{1-alpha/2, n-1}) = power`` for T' noncentral t (df n - 1).
  The sign-flip test's power is close to the t-test's; where no sign pattern can reach alpha
  (2^(1-n) >= alpha, n <= 5 at 0.05) nothing is detectable (infinite). Compute it at the alpha
  the verdict uses (Holm's strictest step alpha / m for a family of m) and with n the number of
  non-zero differences.
- ``sd_upper`` / ``seeds_for``: a pilot's SD inflated to its one-sided 80% upper confidence
  limit (chi-square, n - 1 df), and the seeds a paired test needs to detect an effect with it.
- ``wilson_cluster``: a 95% interval for the mean of per-seed fractions that stays inside
  [0, 1]: Wilson's score interval with the effective count n_eff = p(1 - p) / var(mean) (the
  seed is the cluster; var from the seeds' spread) and t quantiles (n - 1 df); ``score_p`` is
  the test it inverts. ``COVERAGE`` holds its and the t interval's coverage on skewed and
  near-bound fractions, checked by the tests and printed on the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
EXACT_MAX = 16  # up to 2^16 = 65,536 sign patterns, enumerated
WILCOXON_EXACT_MAX = 50  # scipy 1.17: method="auto" is exact up to 50 values without ties / zeros
WILCOXON_PERMUTATION_MAX = 13  # ... and with ties or zeros an exact permutation test up to 13


def _finite(d: Sequence[float]) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    return d[np.isfinite(d)]


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis)


def sign_flip_p(d: Sequence[float], alternative: str = "two-sided", resamples: int = 100_000,
                seed: int = 0) -> float:
    """p of the sign-flip permutation test of mean(d) against 0 (NaN values dropped).

    Exact (all 2^n patterns) for n <= EXACT_MAX, else Monte Carlo with ``resamples`` patterns
    drawn with ``seed``. Null means within 1e-9 of the data's scale of the observed one count as
    ties (sums of the same values in another order differ in the last bits). 1.0 when every
    value is 0; NaN for fewer than 2 values.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative={alternative!r}: allowed two-sided, greater, less")
    d = _finite(d)
    n = len(d)
    if n < 2:
        return float("nan")
    if not np.any(d):
        return 1.0
    exact = n <= EXACT_MAX
    res = stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True,
                                 n_resamples=2**n if exact else resamples,
                                 alternative="greater", rng=np.random.default_rng(seed))
    null, obs = np.asarray(res.null_distribution), float(res.statistic)
    tol = 1e-9 * float(np.abs(d).mean())
    extra = 0 if exact else 1
    greater = (np.count_nonzero(null >= obs - tol) + extra) / (len(null) + extra)
    less = (np.count_nonzero(null <= obs + tol) + extra) / (len(null) + extra)
    p = {"greater": greater, "less": less, "two-sided": 2 * min(greater, less)}[alternative]
    return float(min(p, 1.0))


def sign_flip_method(n: int, resamples: int = 100_000, seed: int = 0) -> str:
    """How ``sign_flip_p`` computes p for n values, in words."""
    if n <= EXACT_MAX:
        return f"sign-flip, exact ({2**n:,} patterns)"
    return f"sign-flip, Monte Carlo ({resamples:,} random patterns, seed {seed})"


def band_p(d: Sequence[float], low: float, high: float,
           test: Callable[[np.ndarray, str], float]) -> float:
    """p that the mean lies inside [low, high]: the larger of the one-sided tests against the
    edges (two one-sided tests, TOST)."""
    d = _finite(d)
    return max(test(d - low, "greater"), test(d - high, "less"))


# --- the Wilcoxon signed-rank test as scipy 1.17 runs it -----------------------------------
def wilcoxon(d: Sequence[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p of d against 0 (``scipy.stats.wilcoxon``, method "auto",
    zeros dropped); 1.0 when every d is 0, NaN for fewer than 2 values."""
    d = _finite(d)
    if len(d) < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, alternative=alternative).pvalue)


def wilcoxon_method(d: Sequence[float]) -> str:
    """What scipy 1.17's ``wilcoxon(d)`` (method "auto") computes for these values, in words.

    Without zeros or tied magnitudes, n <= 50: the exact null distribution; with zeros or ties,
    n <= 13: an exact permutation test of the signed-rank statistic (all 2^n sign flips; zeros
    contribute nothing, so p >= 2^(1-n') for n' non-zero values); otherwise the normal
    approximation (tie-corrected variance, no continuity correction), whose p has no such floor.
    """
    d = _finite(d)
    n, nz = len(d), int(np.count_nonzero(d))
    mags = np.abs(d[d != 0])
    ties = len(np.unique(mags)) < len(mags)
    if n > WILCOXON_EXACT_MAX:
        return f"Wilcoxon, normal approximation (n = {n} > {WILCOXON_EXACT_MAX})"
    if not ties and nz == n:
        return f"Wilcoxon, exact (n = {n}, no ties or zeros)"
    why = ", ".join(w for w, on in (("ties", ties), (f"{n - nz} zero(s)", nz < n)) if on)
    if n <= WILCOXON_PERMUTATION_MAX:
        return f"Wilcoxon, exact permutation ({why}; n = {n}, {nz} non-zero)"
    return f"Wilcoxon, normal approximation ({why}; n = {n} > {WILCOXON_PERMUTATION_MAX})"


# --- intervals -------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student t interval of the mean (NaN values dropped; as
    ``toolkit.runs.aggregate.mean_ci``, no interval below ``MIN_CI`` values and a point for
    identical values)."""
    from toolkit.runs.aggregate import MIN_CI

    x = _finite(values)
    if not len(x):
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < MIN_CI:
        return mean, math.nan, math.nan
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0]), float(x[0])
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def interval(values: Sequence[float], method: str = "t") -> tuple[float, float, float]:
    """(mean, low, high) of the 95% interval ``t``, ``wilson`` (``wilson_cluster``) or ``bca``
    (``runs.aggregate.mean_ci``)."""
    if method == "t":
        return t_interval(values)
    if method == "wilson":
        return wilson_cluster(values)
    if method == "bca":
        from toolkit.runs.aggregate import mean_ci

        return mean_ci(values)
    raise ValueError(f"interval method {method!r}: allowed t, wilson, bca")


def coverage(method: Callable[[np.ndarray], tuple[float, float, float]],
             draw: Callable[[np.random.Generator, int], np.ndarray], truth: float, n: int,
             sims: int, seed: int = 0) -> float:
    """Share of ``sims`` samples of n values (``draw(rng, n)``) whose interval holds ``truth``."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(sims):
        _, low, high = method(draw(rng, n))
        hits += bool(low <= truth <= high)
    return hits / sims


# --- many tests, and power -------------------------------------------------------------------
def near_floor(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-seed fractions near the floor: 20 readings a seed, the seed's rate Beta(0.5, 9.5)
    (mean 0.05; most seeds read 0 or 1 of 20)."""
    return rng.binomial(20, rng.beta(0.5, 9.5, n)) / 20


def skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Skewed per-seed fractions: 20 readings a seed, the seed's rate Beta(0.6, 2.4) (mean 0.2)."""
    return rng.binomial(20, rng.beta(0.6, 2.4, n)) / 20


#: Single-arm fractions: generator -> (its true mean, {(interval, n): coverage of the 95%
#: interval}), measured with 4,000 seeded samples (``coverage(..., sims=4000, seed=n)``) and
#: checked by tests/test_findings_rules.py; the page prints them.
COVERAGE: dict[str, tuple[float, dict[tuple[str, int], float]]] = {
    "near_floor": (0.05, {("t", 8): 0.845, ("t", 16): 0.893, ("wilson", 8): 0.942,
                          ("wilson", 16): 0.936}),
    "skewed": (0.2, {("t", 8): 0.914, ("t", 16): 0.927, ("wilson", 8): 0.946,
                     ("wilson", 16): 0.945}),
}
GENERATORS = {"near_floor": near_floor, "skewed": skewed}


def coverage_note() -> str:
    """The measured coverage of single-arm intervals, in words, for the page."""
    parts = []
    for name, (truth, cov) in COVERAGE.items():
        doc = (GENERATORS[name].__doc__ or "").split(":")[0].strip().lower()
        parts.append(f"{doc} (true mean {truth:g}): Wilson "
                     f"{cov[('wilson', 8)]:.2f} / {cov[('wilson', 16)]:.2f}, t "
                     f"{cov[('t', 8)]:.2f} / {cov[('t', 16)]:.2f} at n = 8 / 16")
    return "; ".join(parts)


def p_floor(d: Sequence[float]) -> float:
    """The smallest two-sided sign-flip p the values can give: 2^(1-n'), n' = non-zero values
    (1.0 with none)."""
    d = _finite(d)
    nonzero = int(np.count_nonzero(np.abs(d) > 1e-12 * max(1.0, float(np.abs(d).max(initial=0)))))
    return 1.0 if nonzero == 0 else min(1.0, 2.0 ** (1 - nonzero))


def sd_upper(sd: float, n: int, confidence: float = 0.8) -> float:
    """The one-sided ``confidence`` upper limit of a population SD from a sample SD of n values
    (normal data: (n - 1) s^2 / sigma^2 ~ chi-square with n - 1 df)."""
    if n < 2:
        raise ValueError(f"n={n}: an SD's upper limit needs at least 2 values")
    return float(sd * np.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1)))


def seeds_for(sd: float, effect: float, alpha: float = ALPHA, power: float = POWER,
              most: int = 4096) -> int:
    """The fewest seeds whose detectable effect (``detectable_effect``) is at most ``effect``."""
    if effect <= 0 or sd <= 0:
        raise ValueError(f"sd={sd}, effect={effect}: both must be > 0")
    n = 2
    while detectable_effect(sd, n, alpha, power) > effect:
        n += 1
        if n > most:
            raise ValueError(f"more than {most} seeds for effect {effect} at sd {sd}")
    return n


def wilson_cluster(values: Sequence[float], confidence: float = 0.95
                   ) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed fractions in [0, 1]: Wilson's score interval with the
    effective count p(1 - p) / var(mean) and t quantiles (n - 1 df); NaN bounds below
    ``MIN_CI`` values; (p, p, p) when every seed has the same value (no variation)."""
    from toolkit.runs.aggregate import MIN_CI

    x = _finite(values)
    if not len(x):
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < MIN_CI:
        return mean, math.nan, math.nan
    if np.ptp(x) == 0:
        return mean, mean, mean
    var = float(x.var(ddof=1)) / len(x)
    z = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1))
    n_eff = mean * (1 - mean) / var
    centre = (mean + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(mean * (1 - mean) / n_eff
                                                + z * z / (4 * n_eff ** 2))
    return mean, max(0.0, centre - half), min(1.0, centre + half)


def score_p(values: Sequence[float], than: float) -> float:
    """Two-sided p of mean(values) = ``than`` (0 < than < 1) from the score statistic that
    ``wilson_cluster`` inverts: (p - than) / sqrt(than (1 - than) / n_eff), on t (n - 1 df)."""
    x = _finite(values)
    if len(x) < 2 or not 0 < than < 1:
        return math.nan
    mean = float(x.mean())
    var = float(x.var(ddof=1)) / len(x)
    if var == 0:
        return 1.0 if mean == than else 0.0
    n_eff = mean * (1 - mean) / var
    t = (mean - than) / math.sqrt(than * (1 - than) / n_eff)
    return float(2 * stats.t.sf(abs(t), len(x) - 1))


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference detected with ``power`` by a paired two-sided test at
    ``alpha`` on n values of standard deviation sd (noncentral t; see the module docstring)."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    if 2.0 ** (1 - n) >= alpha:
        return math.inf
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def short(nc: float) -> float:  # the far tail's NaN (scipy, large nc) is 0
        far = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc)))
        return float(stats.nct.sf(crit, df, nc)) + far - power

    nc = optimize.brentq(short, 0.0, crit + 6.0, xtol=1e-10)
    return float(nc * sd / np.sqrt(n))
