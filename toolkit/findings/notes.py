"""The sentences a findings page prints about its statistics, written from what was computed
(the file's ``statistics`` block and the results), so the page cannot say otherwise."""

from __future__ import annotations

from collections import Counter

from toolkit.findings.inference import ALPHA, EXACT_MAX, POWER, coverage_note
from toolkit.findings.spec import Statistics
from toolkit.findings.stats import NOT_TESTABLE, Result


def _flat(results: dict[str, list[Result]] | list[Result]) -> list[Result]:
    if isinstance(results, dict):
        return [r for rs in results.values() for r in rs]
    return list(results)


def correction_note(statistics: Statistics, results: dict[str, list[Result]] | list[Result]
                    ) -> str:
    """One paragraph for the top of the page: the multiple-test correction and its family."""
    flat = _flat(results)
    if statistics.rules == "margin":
        return _margin_note(flat)
    tested = sum(r.tested for r in flat)
    left = len(flat) - tested
    out = (f"**Multiple tests.** {tested} of the {len(flat)} tests were tested"
           + (f" ({left} not: exact values or not testable)" if left else "") + ". ")
    if statistics.correction == "holm":
        out += (f"Verdicts use Holm's adjusted p over these {tested} (family-wise error rate "
                f"{ALPHA}); the raw p is shown beside it.")
    else:
        out += ("As this file pre-registered, each verdict uses its own raw p (no correction); "
                f"Holm's adjusted p over the {tested} is shown beside it for reference.")
    return out


def _margin_note(flat: list[Result]) -> str:
    """The margin rules' paragraph: the gates, the primaries' family, the secondaries."""
    gates = [r for r in flat if r.role == "gate"]
    prim = [r for r in flat if r.role == "primary"]
    second = [r for r in flat if r.role == "secondary"]
    tested = sum(r.tested for r in prim)
    out = "**Multiple tests.** One primary test per claim decides the claim. "
    if gates:
        out += (f"{len(gates)} control claim(s) are tested first, each at alpha {ALPHA} "
                "(fixed sequence: a gate that does not pass stops every later test); ")
    out += (f"then Holm's correction over the {len(prim)} primaries ({tested} tested; "
            f"family-wise error rate {ALPHA}). ")
    if second:
        out += (f"The other {len(second)} tests are secondary: judged on their raw p, not "
                "adjusted for multiple tests, and they do not decide a claim.")
    return out


def _margin_notes() -> list[str]:
    return [
        "Verdicts (margin rules): holds = p < alpha and the CI's near bound clears the "
        "threshold by the margin; holds, size unclear = p < alpha but the CI crosses the "
        "margin; fails (opposite) = p < alpha the other way; fails (smaller than the margin) = "
        "the far bound of the interval at 1 - 2 alpha (one-sided at the alpha the test faces, "
        "alpha / m for a primary) stays short of the margin; at most / at least (non-superiority) "
        "hold when the CI's upper / lower bound stays inside threshold ± margin and the "
        "one-sided p against that edge is below alpha.",
        "Not testable: only on saturation: some seeds have both arms at the same bound of the "
        "measure and too few differences are left non-zero for any p below alpha (2^(1-n') for "
        "n' non-zero differences), decided from the counts, never from the outcome's sign.",
        f"SDE: the smallest true effect detected with {POWER:.0%} power at the alpha the test "
        "faces (Holm's strictest step, alpha / m, for the m primaries) from its non-zero "
        "differences; ⚠ floor marks a test whose smallest achievable p (2^(1-n')) is not "
        "below that alpha.",
        "Single-arm fractions: 95% Wilson score interval with the seed as the cluster "
        "(effective count p(1-p) / var(mean), t quantiles) and its score test; measured "
        f"coverage: {coverage_note()}; identical seeds read 'no variation in n seeds'.",
    ]


def method_notes(statistics: Statistics, results: dict[str, list[Result]] | list[Result]
                 ) -> list[str]:
    """The footnotes under the verdict table: p, Holm p, CI, SDE, not testable, exact."""
    flat = _flat(results)
    notes = _margin_notes() if statistics.rules == "margin" else []
    if statistics.test == "wilcoxon":
        used = Counter(r.method.split(" (")[0] for r in flat if r.tested)
        notes.append(
            "p: two-sided Wilcoxon signed-rank test over seeds against the threshold (for "
            "'within', the larger of the two one-sided tests against the band's edges), as "
            "scipy 1.17 computes it (method 'auto'): zero differences are dropped; without "
            "zeros or tied values, the exact null distribution (n <= 50); with zeros or ties, "
            "an exact permutation test of the signed ranks for n <= 13 (p cannot fall below "
            "2^(1-n') for n' non-zero differences) and the normal approximation for larger n "
            "(no such floor). Here: " + ", ".join(f"{k} ({n})" for k, n in used.items()) + ".")
    else:
        notes.append(
            "p: sign-flip permutation test of the mean over seeds against the threshold "
            "(two-sided: twice the smaller one-sided p; for 'within', the larger of the two "
            f"one-sided tests against the band's edges): all 2^n sign patterns for n <= "
            f"{EXACT_MAX} (p >= 2^(1-n') for n' non-zero differences: 0.0078 at n' = 8; each "
            f"zero halves the patterns), else {statistics.resamples:,} random "
            f"patterns (seed {statistics.seed}).")
    notes.append("Holm p: Holm's step-down adjustment of p over the page's tested tests.")
    if statistics.interval == "bca":
        notes.append("CI: 95% bootstrap (BCa, 9,999 resamples, seeded) of the mean over seeds; "
                     "at n = 8 on tied, bimodal data it covers about 88-90%, not 95%.")
    else:
        notes.append("CI: 95% Student t interval of the mean over seeds; its coverage on tied, "
                     "bimodal data like fidelity differences is checked by a seeded simulation "
                     "at n = 8 and 16 (tests/test_findings_stats.py).")
    if statistics.rules != "margin":
        notes.append(f"SDE: the smallest true effect a paired two-sided test at alpha = {ALPHA} "
                     f"detects with {POWER:.0%} power given the observed SD (noncentral t): "
                     "effects smaller than it will often end inconclusive; ∞ where no p can "
                     f"fall below {ALPHA} (n <= 5).")
    if statistics.not_testable is not None and statistics.rules != "margin":
        count = sum(r.verdict == NOT_TESTABLE for r in flat)
        notes.append(f"Not testable ({count}): at least {statistics.not_testable:.0%} of the "
                     "baseline's seeds sit at a bound of the measure, and the claimed effect "
                     "would need values past it or the arm sits there as often.")
    if statistics.exact:
        notes.append("Exact: measures set by the arm's config alone (the cache's accounting) are "
                     "the same for every seed; they are reported as their values (the range "
                     "over seeds), judged by the rule without a test, and left out of Holm's "
                     "family.")
    return notes
