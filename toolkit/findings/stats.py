"""Each check's statistics and verdict, and the page's multiple-test correction (Holm).

``evaluate`` judges one test; ``evaluate_spec`` judges every test of a findings file and adds
Holm's adjusted p (the verdicts use it when the file says ``statistics.correction: holm``).
How p and the CI are computed is the file's ``statistics`` block (``spec.Statistics``); the
first pages' defaults are the Wilcoxon test and BCa intervals, the new ones the sign-flip
permutation test and t intervals (``toolkit.findings.inference``).

The not-testable rule (``untestable_reason``): a test with a baseline is not testable when at
least ``statistics.not_testable`` (e.g. 90%) of the baseline's seeds sit at a bound of the measure
(within 1e-9; bounds from the metric's unit, ``Measure.bounds``) AND either the test expects
the arm to move past that bound (``greater`` at the ceiling, ``less`` at the floor) or the
arm's seeds sit at the same bound as often: the measure then cannot show the claimed effect
(``moving`` is 1.00 on every clip, so two arms at 1.00 say nothing about motion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toolkit.findings import inference as inf
from toolkit.findings.inference import ALPHA
from toolkit.findings.measures import (  # noqa: F401  (the measures' API, re-exported)
    measure_curve,
    measure_runs,
    measures_needed,
    paired_values,
    whole_measure,
    window_mean,
)
from toolkit.findings.spec import Check, Claim, Spec, Statistics, parse_measure

wilcoxon = inf.wilcoxon
NOT_TESTABLE = "not testable"
HOLDS_UNCLEAR = "holds, size unclear"
OPPOSITE = "fails (opposite)"
SMALL = "fails (smaller than the margin)"
#: Verdicts that pass a control gate.
PASSES = ("holds", HOLDS_UNCLEAR)
ROLES = ("gate", "primary", "secondary")


@dataclass
class Result:
    """A test's outcome: per-seed values, mean, 95% CI, p, verdict and reason, and more.

    Attributes:
        p: the test's raw p (NaN when not tested: exact values, too few seeds).
        p_holm: Holm's adjusted p over the page's tested tests (``evaluate_spec``), else NaN.
        sd: standard deviation of the per-seed values.
        sde: smallest detectable effect at 80% power (``inference.detectable_effect``).
        testable: False when the baseline sits at a bound (``untestable_reason``); ``bound``
            says how.
        exact: reported as exact values (low / high = the smallest / largest seed's), not tested.
        method: how p was computed, in words; ``interval``: the CI's method.
    """

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
    p_holm: float = math.nan
    sd: float = math.nan
    sde: float = math.nan
    testable: bool = True
    bound: str = ""
    exact: bool = False
    method: str = ""
    interval: str = ""
    role: str = ""               # gate / primary / secondary (margin rules), "" otherwise
    alpha: float = ALPHA         # the alpha the verdict faces (SDE and reachability use it)
    p_floor: float = math.nan    # the smallest p these values could give (sign-flip test)

    @property
    def tested(self) -> bool:
        """Whether the test ran: a p, not exact values, not 'not testable' (Holm's family)."""
        return np.isfinite(self.p) and not self.exact and self.verdict != NOT_TESTABLE

    @property
    def nonzero(self) -> int:
        """How many per-seed values (differences) are not zero."""
        return int(np.count_nonzero(np.abs(self.values) > 1e-12))

    @property
    def unreachable(self) -> bool:
        """No p these values can give falls below the alpha the verdict uses."""
        return np.isfinite(self.p_floor) and not self.p_floor < self.alpha

    @property
    def no_variation(self) -> bool:
        """Every seed has the same value: a point, not an interval."""
        return len(self.values) >= 3 and float(np.ptp(self.values)) == 0.0

    @property
    def underpowered(self) -> bool:
        """The smallest detectable effect exceeds the margin: effects worth the name (larger
        than the margin) may well end inconclusive."""
        return self.test.margin > 0 and self.sde > self.test.margin


def values_of(test: Check, table: pd.DataFrame, measure: str | None = None
              ) -> tuple[np.ndarray, list[int]]:
    """Per seed: the arm's measure, minus the baseline's of the same seed when there is one."""
    arm, base = pairs_of(test, table, measure)
    d = arm - base if base is not None else arm
    ok = np.isfinite(d.to_numpy(float))
    return d.to_numpy(float)[ok], [int(s) for s in d.index[ok]]


def pairs_of(test: Check, table: pd.DataFrame, measure: str | None = None
             ) -> tuple[pd.Series, pd.Series | None]:
    """The arm's and the baseline's values by seed (seeds both have), or the arm's alone."""
    measure = measure or test.measure
    arm = table[table["arm"] == test.arm].set_index("seed")[measure]
    if not test.baseline:
        return arm, None
    base = table[table["arm"] == test.baseline].set_index("seed")[measure]
    if parse_measure(measure).kind == "paired":
        return paired_values(arm, base)
    both = arm.to_frame("a").join(base.to_frame("b"), how="inner")
    return both["a"], both["b"]


def untestable_reason(test: Check, arm: np.ndarray, base: np.ndarray, bounds: tuple[float, float],
                share: float = 0.9) -> str:
    """Why the test is not testable (see the module docstring), or "" when it is."""
    if test.baseline is None or not len(base):
        return ""
    for bound, side in ((bounds[0], "floor"), (bounds[1], "ceiling")):
        if not np.isfinite(bound):
            continue
        tol = 1e-9 * max(1.0, abs(bound))
        at_base = int(np.sum(np.abs(base - bound) <= tol))
        at_arm = int(np.sum(np.abs(arm - bound) <= tol))
        if at_base < share * len(base):
            continue
        past = (test.expect, side) in (("greater", "ceiling"), ("less", "floor"))
        if past or at_arm >= share * len(arm):
            how = ("the claimed effect would need values past it" if past
                   else f"so does `{test.arm}` in {at_arm} of {len(arm)}")
            return (f"`{test.baseline}` sits at the measure's {side} ({bound:g}) in {at_base} of "
                    f"{len(base)} seeds, and {how} (rule: at least {share:.0%} of seeds at a "
                    "bound)")
    return ""


def verdict(test: Check, mean: float, low: float, high: float, p: float, n: int, *,
            exact: bool = False, band_test: bool = False, p_name: str = "p") -> tuple[str, str]:
    """The pre-stated rule of the findings file applied to one test's statistics.

    ``exact``: [low, high] are exact values (the seeds' range), judged without p.
    ``band_test``: ``within`` holds only if p (the band's two one-sided tests) < alpha too.
    ``p_name``: how the reasons name p (e.g. "Holm p").
    """
    if n < 1 or (not exact and n < 2) or not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive", f"only {n} value(s): no confidence interval"
    ci = "the exact value" + ("s lie" if high > low else " lies") if exact else "the CI lies"
    short = "exact" if exact else "CI"
    x, m = test.than, test.margin
    if test.expect == "within":
        if x - m <= low and high <= x + m:
            if band_test and not exact and not p < ALPHA:
                return "inconclusive", (f"{ci} inside {x:g} ± {m:g} but {p_name} = {p:.2g} >= "
                                        f"{ALPHA}")
            extra = f" and {p_name} = {p:.2g} < {ALPHA}" if band_test and not exact else ""
            return "holds", f"{ci} inside {x:g} ± {m:g}{extra}"
        if high < x - m or low > x + m:
            return "fails", f"{ci} outside {x:g} ± {m:g}"
        return "inconclusive", f"the {short} straddles an edge of {x:g} ± {m:g}"
    sign = 1.0 if test.expect == "greater" else -1.0
    beyond = (low > x) if sign > 0 else (high < x)
    against = (high < x) if sign > 0 else (low > x)
    word, opposite = (">", "<") if sign > 0 else ("<", ">")
    if m > 0 and x - m <= low and high <= x + m:
        return "fails", f"no effect worth the name: {ci} inside {x:g} ± {m:g}"
    if exact:
        if beyond:
            return "holds", f"{ci} {word} {x:g}"
        if against:
            return "fails", f"the opposite effect: {ci} {opposite} {x:g}"
        return "inconclusive", f"the exact values straddle {x:g}"
    if beyond and p < ALPHA:
        return "holds", f"CI {word} {x:g} and {p_name} = {p:.2g} < {ALPHA}"
    if against and p < ALPHA:
        return "fails", f"the opposite effect: CI {opposite} {x:g}, {p_name} = {p:.2g}"
    if beyond:
        return "inconclusive", f"CI {word} {x:g} but {p_name} = {p:.2g} >= {ALPHA}"
    if against:
        return "inconclusive", (f"CI {opposite} {x:g} (the opposite direction) but {p_name} = "
                                f"{p:.2g} >= {ALPHA}")
    return "inconclusive", f"the CI includes {x:g}"


def saturation_reason(test: Check, arm: np.ndarray, base: np.ndarray,
                      bounds: tuple[float, float], alpha: float = ALPHA) -> str:
    """Why a paired test is not testable under the margin rules, or "": some seeds have both
    arms at the same bound, and the non-zero differences left are too few for any p below
    ``alpha``. Counts only: the sign of the differences plays no part."""
    if test.baseline is None or not len(base):
        return ""
    d = arm - base
    nonzero = int(np.count_nonzero(np.abs(d) > 1e-12))
    floor = inf.p_floor(d)
    for bound, side in ((bounds[0], "floor"), (bounds[1], "ceiling")):
        if not np.isfinite(bound):
            continue
        tol = 1e-9 * max(1.0, abs(bound))
        both = int(np.sum((np.abs(arm - bound) <= tol) & (np.abs(base - bound) <= tol)))
        if both and not floor < alpha:
            return (f"`{test.arm}` and `{test.baseline}` both sit at the measure's {side} "
                    f"({bound:g}) in {both} of {len(d)} seeds; {nonzero} difference(s) are "
                    f"non-zero, so no p can fall below {floor:.2g} >= alpha {alpha:.2g} "
                    "(saturation)")
    return ""


def margin_verdict(test: Check, mean: float, low: float, high: float, p: float, n: int, *,
                   alpha: float = ALPHA, p_name: str = "p",
                   short: tuple[float, float] | None = None,
                   short_alpha: float = ALPHA) -> tuple[str, str]:
    """The margin rules (module docstring) applied to one test's CI and p.

    ``short``: the interval that decides "fails (smaller than the margin)", a one-sided test at
    the alpha the test faces (``evaluate_spec``: the CI at 1 - 2 alpha, alpha / m for a
    primary; ``short_alpha``); default the 95% CI."""
    if n < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive", f"only {n} value(s): no confidence interval"
    x, m = test.than, test.margin
    ci = f"the CI [{low:.3g}, {high:.3g}]"
    sig = np.isfinite(p) and p < alpha
    ps = f"{p_name} = {p:.2g} {'<' if sig else '>='} {alpha:.2g}"
    if test.expect == "within":
        if x - m <= low and high <= x + m:
            return ("holds", f"{ci} inside {x:g} ± {m:g} and {ps}") if sig else (
                "inconclusive", f"{ci} inside {x:g} ± {m:g} but {ps}")
        if high < x - m or low > x + m:
            return "fails", f"{ci} outside {x:g} ± {m:g}"
        return "inconclusive", f"{ci} straddles an edge of {x:g} ± {m:g}"
    if test.expect in ("at_most", "at_least"):
        up = test.expect == "at_most"
        edge = x + m if up else x - m
        inside = high < edge if up else low > edge
        word = "<" if up else ">"
        if inside and sig:
            return "holds", f"{ci} {word} {edge:g} ({x:g} {'+' if up else '-'} {m:g}) and {ps}"
        if (low > edge) if up else (high < edge):
            return "fails", f"{ci} lies past {edge:g}: the effect exceeds the margin"
        return "inconclusive", f"{ci} reaches {edge:g}" + (f" or {ps}" if not sig else "")
    sign = 1.0 if test.expect == "greater" else -1.0
    word, opposite = (">", "<") if sign > 0 else ("<", ">")
    near, far = (low, high) if sign > 0 else (high, low)
    edge = x + sign * m
    beyond = sign * (near - x) > 0
    against = sign * (far - x) < 0
    if sig and beyond and sign * (near - edge) > 0:
        return "holds", f"{ci} {word} {edge:g} (the margin) and {ps}"
    if sig and beyond:
        return HOLDS_UNCLEAR, (f"{ci} {word} {x:g} and {ps}, but it crosses the margin "
                               f"{edge:g}: the effect may be smaller than the margin")
    if sig and against:
        return OPPOSITE, f"the opposite effect: {ci} {opposite} {x:g}, {ps}"
    s_far = far if short is None else (short[1] if sign > 0 else short[0])
    if m > 0 and sign * (s_far - edge) < 0:
        how = ci if short is None else (f"the one-sided bound {s_far:.3g} (at alpha "
                                        f"{short_alpha:.2g})")
        return SMALL, f"{how} stays short of the margin {edge:g}: no effect worth the name"
    if beyond or against:
        side = "" if beyond else " (the opposite direction)"
        return "inconclusive", f"{ci} excludes {x:g}{side} but {ps}"
    return "inconclusive", f"{ci} includes {x:g}"


def p_of(test: Check, d: np.ndarray, statistics: Statistics) -> tuple[float, str]:
    """The test's p (two-sided against ``than``; for ``within``, the band's two one-sided
    tests) and how it was computed."""
    if statistics.test == "wilcoxon":
        run, method = inf.wilcoxon, inf.wilcoxon_method(d - test.than)
    else:
        def run(x: np.ndarray, alternative: str) -> float:
            return inf.sign_flip_p(x, alternative, statistics.resamples, statistics.seed)
        method = inf.sign_flip_method(len(d), statistics.resamples, statistics.seed)
    if test.expect == "within":
        return inf.band_p(d, test.than - test.margin, test.than + test.margin, run), method
    if test.expect == "at_most":
        return run(d - (test.than + test.margin), "less"), method + ", one-sided"
    if test.expect == "at_least":
        return run(d - (test.than - test.margin), "greater"), method + ", one-sided"
    return run(d - test.than, "two-sided"), method


def single_fraction(test: Check, statistics: Statistics) -> bool:
    """Under the margin rules, a single arm's fraction (a [0, 1] measure, no baseline) is read
    with the Wilson interval and its score test (``inference.wilson_cluster``)."""
    return (statistics.rules == "margin" and test.baseline is None
            and test.parsed.bounds == (0.0, 1.0))


def evaluate(test: Check, table: pd.DataFrame, statistics: Statistics | None = None,
             alpha: float = ALPHA) -> Result:
    """Values, mean with 95% CI, test and verdict of one test (plus its 1x effect), computed
    as ``statistics`` says (default: the first pages' Wilcoxon test and BCa intervals).

    ``alpha``: the alpha the verdict faces (``evaluate_spec`` sets Holm's for primaries); the
    margin rules judge, and the detectable effect is computed, at it.

    ``testable`` / ``bound`` are filled even when the file has no not-testable rule (at 90%),
    for the page to show; only with the rule do they change the verdict."""
    statistics = statistics or Statistics()
    margin = statistics.rules == "margin"
    d, seeds = values_of(test, table)
    measure = test.parsed
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    res = Result(test, d, math.nan, math.nan, math.nan, math.nan, "", "", seeds=seeds, sd=sd,
                 interval=statistics.interval, alpha=alpha)
    if statistics.exact and measure.exact:
        res.exact, res.method = True, "exact values (set by the arm's config; not tested)"
        if len(d):
            res.mean, res.low, res.high = float(d.mean()), float(d.min()), float(d.max())
        res.verdict, res.reason = verdict(test, res.mean, res.low, res.high, math.nan, len(d),
                                          exact=True)
    else:
        _test(res, statistics)
        _judge(res, statistics)
        _bounds(res, table, statistics)
    if test.at("first") in table:
        res.at_1x = inf.interval(values_of(test, table, test.at("first"))[0],
                                 "wilson" if single_fraction(test, statistics) and margin
                                 else statistics.interval)
    return res


def _test(res: Result, statistics: Statistics) -> None:
    """The CI, p, the p floor and the detectable effect of a tested (not exact) measure."""
    test, d = res.test, res.values
    if single_fraction(test, statistics):
        res.interval = "wilson"
        res.mean, res.low, res.high = inf.wilson_cluster(d)
        if test.expect in ("greater", "less") and 0 < test.than < 1:
            res.p, res.method = inf.score_p(d, test.than), "score test (Wilson, seed clusters)"
        else:
            res.p, res.method = p_of(test, d, statistics)
    else:
        res.mean, res.low, res.high = inf.interval(d, statistics.interval)
        res.p, res.method = p_of(test, d, statistics)
    res.p_floor = inf.p_floor(d - test.than) if statistics.test == "permutation" else math.nan
    if statistics.rules == "margin":
        res.sde = inf.detectable_effect(res.sd, res.nonzero, res.alpha)
    else:
        res.sde = inf.detectable_effect(res.sd, len(d))


def _judge(res: Result, statistics: Statistics, p: float | None = None,
           p_name: str = "p") -> None:
    """Set the verdict from the CI and ``p`` (default: the raw p) by the file's rules."""
    p = res.p if p is None else p
    if statistics.rules == "margin":
        res.verdict, res.reason = margin_verdict(res.test, res.mean, res.low, res.high, p,
                                                 len(res.values), alpha=ALPHA, p_name=p_name,
                                                 short=_short(res), short_alpha=res.alpha)
        if res.no_variation:
            res.reason = f"no variation in {len(res.values)} seeds; " + res.reason
    else:
        res.verdict, res.reason = verdict(res.test, res.mean, res.low, res.high, p,
                                          len(res.values), band_test=statistics.band_test,
                                          p_name=p_name)


def _short(res: Result) -> tuple[float, float] | None:
    """The interval at 1 - 2 alpha (the alpha the test faces): a one-sided test of "smaller
    than the margin" at that alpha; None for BCa intervals (the 95% CI decides)."""
    confidence = 1 - 2 * res.alpha
    if res.interval == "wilson":
        return inf.wilson_cluster(res.values, confidence)[1:]
    if res.interval == "t":
        return inf.t_interval(res.values, confidence)[1:]
    return None


def _bounds(res: Result, table: pd.DataFrame, statistics: Statistics) -> None:
    """The not-testable rule: the first pages' share rule (shown; a verdict only when the
    file states it), or the margin rules' saturation rule."""
    arm, base = pairs_of(res.test, table)
    if base is None:
        return
    a, b = arm.to_numpy(float), base.to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b)
    bounds = res.test.parsed.bounds
    if statistics.rules == "margin":
        res.bound = saturation_reason(res.test, a[ok], b[ok], bounds)
    else:
        share = statistics.not_testable if statistics.not_testable is not None else 0.9
        res.bound = untestable_reason(res.test, a[ok], b[ok], bounds, share)
    res.testable = not res.bound
    if res.bound and (statistics.not_testable is not None or statistics.rules == "margin"):
        res.verdict, res.reason = NOT_TESTABLE, res.bound


def roles(claim: Claim) -> list[str]:
    """Each test's role under the margin rules: the primary of a control claim is its gate."""
    first = claim.primary()
    return [("gate" if claim.control else "primary") if t is first else "secondary"
            for t in claim.tests]


def alphas(spec: Spec) -> dict[str, float]:
    """The alpha each role faces under the margin rules (the primaries: Holm's strictest step,
    alpha / m over the file's m primaries, which the detectable effect and the reachability
    flag use; Holm's later steps are less strict)."""
    exact = spec.statistics.exact
    m = sum(r == "primary" and not (exact and t.parsed.exact)
            for c in spec.claims for t, r in zip(c.tests, roles(c), strict=True))
    return {"gate": ALPHA, "primary": ALPHA / max(m, 1), "secondary": ALPHA}


def evaluate_spec(spec: Spec, table: pd.DataFrame) -> dict[str, list[Result]]:
    """Every test of the file, by claim id, with Holm's adjusted p: over every tested test
    (the first rules; verdicts from it when ``statistics.correction`` is ``holm``), or over the
    primaries behind the control gates (the margin rules)."""
    stats = spec.statistics
    if stats.rules == "margin":
        return _evaluate_margin(spec, table)
    results = {c.id: [evaluate(t, table, stats) for t in c.tests] for c in spec.claims}
    family = [r for rs in results.values() for r in rs if r.tested]
    for r, adjusted in zip(family, inf.holm([r.p for r in family]), strict=True):
        r.p_holm = float(adjusted)
        if stats.correction == "holm":
            r.verdict, r.reason = verdict(r.test, r.mean, r.low, r.high, r.p_holm,
                                          len(r.values), band_test=stats.band_test,
                                          p_name="Holm p")
    return results


def _evaluate_margin(spec: Spec, table: pd.DataFrame) -> dict[str, list[Result]]:
    stats, alpha = spec.statistics, alphas(spec)
    results: dict[str, list[Result]] = {}
    for claim in spec.claims:
        results[claim.id] = []
        for test, role in zip(claim.tests, roles(claim), strict=True):
            r = evaluate(test, table, stats, alpha[role])
            r.role = role
            if role == "secondary" and r.verdict != NOT_TESTABLE and not r.exact:
                r.reason += " (secondary: raw p, not adjusted for multiple tests)"
            results[claim.id].append(r)
    flat = [r for rs in results.values() for r in rs]
    stopped = ""
    for claim in spec.claims:
        gate = next((r for r in results[claim.id] if r.role == "gate"), None)
        if gate is None:
            continue
        if stopped:
            _stop(gate, stopped)
        elif gate.verdict not in PASSES:
            stopped = f"the control gate `{claim.id}` did not pass ({gate.verdict})"
    primaries = [r for r in flat if r.role == "primary"]
    if stopped:
        for r in primaries:
            _stop(r, stopped)
        return results
    family = [r for r in primaries if r.tested]
    for r, adjusted in zip(family, inf.holm([r.p for r in family]), strict=True):
        r.p_holm = float(adjusted)
        _judge(r, stats, r.p_holm, "Holm p")
    return results


def _stop(r: Result, why: str) -> None:
    """A gated test after a gate that did not pass: reported, not confirmed."""
    if r.verdict != NOT_TESTABLE and not r.exact:
        r.verdict, r.reason = "inconclusive", f"not tested: {why}; {r.reason}"


def claim_verdict(results: list[Result]) -> str:
    """The claim's verdict. Margin rules: its primary test's (gate or primary). First rules:
    holds if all its testable tests hold, fails if any fails, else is inconclusive; not
    testable when none of its tests is."""
    lead = [r for r in results if getattr(r, "role", "") in ("gate", "primary")]
    if lead:
        return lead[0].verdict
    words = [r.verdict for r in results if r.verdict != NOT_TESTABLE]
    if not words:
        return NOT_TESTABLE
    if len(set(words)) == 1:
        return words[0]
    if all(w == "holds" for w in words):
        return "holds"
    if any(w.startswith("fails") for w in words):
        return "fails" if not any(w == "holds" for w in words) else "partly holds"
    return "inconclusive"


def claim_summary(results: list[Result]) -> str:
    """The claim's verdict with how many of its tests were testable ("holds, 1 of 2 tests
    testable") when any was not, or always under the margin rules."""
    word = claim_verdict(results)
    testable = sum(r.verdict != NOT_TESTABLE for r in results)
    if testable == len(results) and not any(getattr(r, "role", "") for r in results):
        return word
    return f"{word}, {testable} of {len(results)} test{'s' * (len(results) > 1)} testable"
